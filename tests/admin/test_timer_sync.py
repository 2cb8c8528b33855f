"""The root timer sync's own entry (``python -m nanoclaw.admin.timer_sync``, what
nanoclaw-timers.service runs): it makes the units from the specs as ``nanoclaw timers sync``
does, with neither the CLI nor the database loaded into the process that runs as root."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SYNC_ALONE = """
import runpy, sys
try:
    runpy.run_module("nanoclaw.admin.timer_sync", run_name="__main__")
except SystemExit as exc:
    print(exc.code, sorted(m for m in ("peewee", "argparse", "nanoclaw.admin.cli", "nanoclaw.core.models",
                                        "nanoclaw.daemons", "croniter") if m in sys.modules))
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="the sync runs as root only")
def test_the_root_sync_runs_alone_and_writes_the_units(tmp_path):
    units, calls = tmp_path / "units", tmp_path / "calls"
    units.mkdir()
    (tmp_path / "bin").mkdir()
    # systemctl, where this test can see what it was asked (the real one is the system tests')
    fake = tmp_path / "bin" / "systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    fake.chmod(0o755)
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.toml").write_text(f'systemd_unit_dir = "{units}"\n')
    specs = tmp_path / "state" / "timers"
    specs.mkdir(parents=True)
    (specs / "nanoclaw-task-5.json").write_text(json.dumps({"id": 5, "kind": "interval", "interval": 60}))
    (specs / "nanoclaw-task-6.json").write_text(json.dumps({"id": 6, "kind": "cron",
                                                            "oncalendar": ["daily\nExecStart=/bin/sh"]}))
    env = {**os.environ, "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "NANOCLAW_LOG_LEVEL": "INFO",
           "NANOCLAW_STATE_DIR": str(tmp_path / "state"), "NANOCLAW_RUNTIME_DIR": str(tmp_path / "run"),
           "NANOCLAW_CONFIG_DIR": str(tmp_path / "etc"), "NANOCLAW_CONFIG": str(tmp_path / "etc" / "config.toml")}
    env.pop("JOURNAL_STREAM", None)
    env.pop("NANOCLAW_JOURNAL_SOCKET", None)
    out = subprocess.run([sys.executable, "-c", SYNC_ALONE], env=env, capture_output=True, text=True)
    assert out.stdout.split() == ["0", "[]"], out.stdout + out.stderr
    assert sorted(p.name for p in units.iterdir()) == ["nanoclaw-task-5.timer"]
    assert "OnUnitActiveSec=60s" in (units / "nanoclaw-task-5.timer").read_text()
    assert calls.read_text().splitlines() == ["daemon-reload", "enable nanoclaw-task-5.timer",
                                              "restart nanoclaw-task-5.timer"]
    assert "refused timer spec nanoclaw-task-6.json" in out.stderr and "timers: created nanoclaw-task-5.timer" in out.stderr
    # the same through the nanoclaw command, by hand: nothing changed, nothing to do
    again = subprocess.run([sys.executable, "-m", "nanoclaw", "timers", "sync"], env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0 and "timers: created" not in again.stderr, again.stderr
    assert calls.read_text().count("daemon-reload") == 1
