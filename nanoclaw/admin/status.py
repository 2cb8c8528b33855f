"""``nanoclaw status``: one screen on units, connection, groups, agents, queue and tasks."""

from __future__ import annotations

import os
import subprocess

from nanoclaw import registry
from nanoclaw.core import faults
from nanoclaw.core.config import Config
from nanoclaw.core.models import open_db
from nanoclaw.core.protocol import request
from nanoclaw.core.status_summary import summary

UNITS = [unit.removesuffix(".service") for unit in registry.running()]  # what runs all the time


def systemd_is_pid1() -> bool:
    return os.path.isdir("/run/systemd/system")


def units_installed() -> bool:
    """Whether the daemons run as systemd units here: systemd is PID 1 and knows them
    (install.sh installed them); else they run under ``nanoclaw run-all``."""
    if not systemd_is_pid1():
        return False
    r = subprocess.run(["systemctl", "show", "-p", "LoadState", "--value", "nanoclaw-queue.service"],
                       capture_output=True, text=True)
    return r.stdout.strip() == "loaded"


def unit_state(unit: str) -> str:
    """``systemctl is-active`` of a unit: active, inactive, failed, activating, …"""
    return subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()


def ask_status(cfg: Config, name: str, timeout: float = 3) -> tuple[dict | None, str]:
    """A daemon's answer to ``status``, or None and why it did not answer."""
    try:
        return request(cfg.socket(name), {"op": "status"}, timeout=timeout), ""
    except (OSError, ValueError) as exc:
        return None, str(exc)


def show(cfg: Config) -> int:
    if systemd_is_pid1():
        states = [f"{unit.removeprefix('nanoclaw-')} {unit_state(unit)}" for unit in UNITS]
        print("units:    " + ", ".join(states))
    down, waiting = [], []
    paused = None
    for name in registry.NAMES:
        reply, _ = ask_status(cfg, name, timeout=2)
        if reply is None:
            down.append(name)
            continue
        if name == "runner" and isinstance(reply.get("paused"), list):
            paused = reply
        if name == "channel":
            print(f"channel:  {reply.get('status', '')}")
        if faults.MARK in reply.get("status", ""):  # what the disk holds up in it, in its own words
            waiting.append(f"{name}: {reply['status'].split(faults.MARK + ': ', 1)[-1]}")
        if name == "scheduler" and reply.get("status", "").startswith(("NO CRONTAB PROGRAM", "TIMERS FAILING")):
            print(f"timers:   {reply['status']}")  # tasks are kept but none can fire: say so up front
    if down:
        print("not answering: " + ", ".join(down))
    low = faults.low_space(cfg.state_dir) if cfg.state_dir.exists() else None
    if low is not None:
        print(f"disk:     {low}: no agent starts, messages wait (free space there)")
    for line in waiting:
        print(f"disk:     {line}")
    if not cfg.db_path.exists():
        print("no database yet: nanoclaw groups add main --main")
        return 1
    open_db(cfg.db_path)
    for line in summary(cfg):
        print(line)
        if line.startswith("agents:") and paused is not None and paused["paused"]:
            print(paused_line(paused))  # the runner's, after the database's running agents
    return 0 if not down else 1


def paused_line(runner: dict) -> str:
    """The runner's paused containers (idle agents frozen, each answering its next message at
    once) and their memory against the budget."""
    each = runner["paused"]
    return (f"paused:   {len(each)} (" + ", ".join(
        f"{p.get('group')}{'/' + str(p['agent']) if p.get('agent') else ''} {p.get('mib')} MiB" for p in each)
        + f"; {sum(int(p.get('mib') or 0) for p in each)} of {runner.get('paused_budget_mib')} MiB, "
          "[container] paused_memory_mib)")
