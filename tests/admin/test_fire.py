"""A timer's fire (admin/fire.py, what nanoclaw-task@.service runs)."""

from __future__ import annotations


FIRE_ALONE = """
import runpy, sys
sys.argv = ["fire", sys.argv[1]]
try:
    runpy.run_module("nanoclaw.admin.fire", run_name="__main__")
except SystemExit as exc:
    print(exc.code, sorted(m for m in ("peewee", "argparse", "nanoclaw.admin.cli", "nanoclaw.core.models")
                           if m in sys.modules))
"""


def test_a_timers_fire_loads_neither_the_cli_nor_the_database(tmp_path):
    """What nanoclaw-task@.service runs puts the task in the queue's spool with only the
    configuration loaded (a timer's lateness is this process's start), and refuses a bad id."""
    import os
    import subprocess
    import sys
    from nanoclaw.core.protocol import Spool
    env = {**os.environ, "NANOCLAW_STATE_DIR": str(tmp_path / "state"), "NANOCLAW_RUNTIME_DIR": str(tmp_path / "run"),
           "NANOCLAW_CONFIG_DIR": str(tmp_path / "etc"), "NANOCLAW_CONFIG": str(tmp_path / "etc" / "config.toml")}
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text('timezone = "UTC"\n[egress.groups.main]\nallow_domains = ["example.org"]\n')
    out = subprocess.run([sys.executable, "-c", FIRE_ALONE, "7"], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["0", "[]"], out.stdout + out.stderr
    [fired] = list((tmp_path / "state" / "spool" / "queue" / "new").iterdir())
    assert Spool(tmp_path / "state" / "spool" / "queue").read(fired).body["task"] == 7
    bad = subprocess.run([sys.executable, "-m", "nanoclaw.admin.fire", "seven"], env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "TASK_ID" in bad.stderr
