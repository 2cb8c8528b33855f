"""Which nanoclaw this is: its version and the commit it was installed from.

A git checkout the package runs from (a development venv, ``pip install -e``) is asked
directly; an installed venv has no ``.git``, so ``install.sh`` writes the commit of the
checkout it installed from to ``<prefix>/share/nanoclaw-commit``, and it is read there.
"""

from __future__ import annotations

import os
import subprocess
import sys
from functools import cache
from pathlib import Path

from nanoclaw import __version__

COMMIT_FILE = "nanoclaw-commit"  # under <venv>/share, written by install.sh


def _from_git(checkout: Path) -> str:
    git = ["git", "-c", f"safe.directory={checkout}", "-C", str(checkout)]
    env = {**os.environ, "GIT_OPTIONAL_LOCKS": "0"}  # a status that writes nothing to the checkout
    try:
        head = subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True,
                              timeout=5, env=env)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run([*git, "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                               text=True, timeout=10, env=env).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return head.stdout.strip() + ("-dirty" if dirty else "")


@cache
def commit() -> str:
    """The commit this code is (``-dirty``: with changes not committed), or "unknown"."""
    checkout = Path(__file__).resolve().parents[2]
    if (checkout / ".git").exists():
        found = _from_git(checkout)
        if found:
            return found
    try:
        return (Path(sys.prefix) / "share" / COMMIT_FILE).read_text().split()[0]
    except (OSError, IndexError):
        return "unknown"


def describe() -> str:
    """``0.1.0 (commit 1a2b3c4d5e6f)``, for messages that name this code."""
    return f"{__version__} (commit {commit()})"
