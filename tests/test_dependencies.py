"""Every third-party module nanoclaw imports is a dependency pyproject.toml declares."""

from __future__ import annotations

import re
from pathlib import Path


def test_every_third_party_import_is_a_declared_dependency():
    """The defect: the runner imported requests and the CLI segno without declaring them."""
    import ast
    import importlib.metadata as md
    import sys
    import tomllib
    root = Path(__file__).resolve().parent.parent
    declared = {re.split(r"[<>=!~ \[]", d, maxsplit=1)[0].lower().replace("_", "-")
                for d in tomllib.loads((root / "pyproject.toml").read_text())["project"]["dependencies"]}
    dists = md.packages_distributions()
    missing = set()
    for path in (root / "nanoclaw").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in sys.stdlib_module_names or top == "nanoclaw" or list((root / "nanoclaw").rglob(f"{top}.py")):
                    continue  # ours (protocol.py imports safefs as a top-level module inside an image)
                owners = {d.lower().replace("_", "-") for d in dists.get(top, [top])}
                if not owners & declared:
                    missing.add(f"{path.relative_to(root)}: {top} ({', '.join(sorted(owners))})")
    assert not missing, sorted(missing)
