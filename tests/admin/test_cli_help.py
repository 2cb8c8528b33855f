"""Every command's --help: it runs, and it is plain text (no reStructuredText markup)."""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

from nanoclaw.admin.cli import build_parser, main


def command_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()):
    """Every command line the parser knows, from `nanoclaw` to the deepest subcommand."""
    yield path
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from command_paths(sub, path + (name,))


def help_of(path: tuple[str, ...]) -> tuple[object, str]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        try:
            main([*path, "--help"])
        except SystemExit as exc:
            return exc.code, out.getvalue()
    return "no exit", out.getvalue()


def test_every_commands_help_runs_and_is_plain_text():
    paths = list(command_paths(build_parser()))
    # the walk reaches the nested subcommands, so a command missing from it shows here
    for expected in [(), ("queue",), ("groups", "mount", "add"), ("pending", "forget"), ("budget", "raise"),
                     ("tasks", "fire"), ("image", "build"), ("backup",), ("credential",)]:
        assert expected in paths
    marked = []
    for path in paths:
        code, text = help_of(path)
        assert code == 0, (path, code)
        assert text.startswith(f"usage: {' '.join(('nanoclaw', *path))}"), (path, text[:200])
        if "``" in text:
            marked.append((" ".join(path), [line for line in text.splitlines() if "``" in line]))
    assert marked == []


def test_the_entry_points_print_the_same_plain_help():
    """`python -m nanoclaw` and the `nanoclaw` console script both reach main()."""
    env = {**os.environ, "COLUMNS": "100"}
    by_module = subprocess.run([sys.executable, "-m", "nanoclaw", "--help"], env=env, capture_output=True,
                               text=True, timeout=60)
    assert by_module.returncode == 0, by_module.stderr
    assert "``" not in by_module.stdout and "groups" in by_module.stdout and "run-all" in by_module.stdout
    script = Path(sys.executable).with_name("nanoclaw")
    script = str(script) if script.exists() else shutil.which("nanoclaw")
    assert script, "the nanoclaw console script is not installed beside this Python"
    by_script = subprocess.run([script, "--help"], env=env, capture_output=True, text=True, timeout=60)
    assert by_script.returncode == 0, by_script.stderr
    assert by_script.stdout == by_module.stdout
