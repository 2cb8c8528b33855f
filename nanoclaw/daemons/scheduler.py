"""The scheduler daemon: keeps the timers equal to the tasks in the database.

It owns no schedule of its own. Each pass (at start, on a nudge from the CLI
or the ipc daemon, and every 30 s) it asks the configured backend to make the
timers match the active tasks — creating missing ones, rewriting changed ones,
removing orphans — and refreshes each group's ``tasks.json`` for its agent.
Under systemd it writes timer specs that the root one-shot ``nanoclaw timers
sync`` turns into units (see timers.py); it runs as the service user itself.
When a timer fires, ``nanoclaw tasks fire ID`` hands the task to the queue.
"""

from __future__ import annotations

import os
from pathlib import Path

from . import tasks as tasks_mod
from .config import Config
from .daemon import Daemon
from .models import Task
from .timers import CrontabTimers, TimerSpecs, fire_command


def backend_for(cfg: Config):
    """The timer backend: systemd when it is PID 1 (or configured), else crontab."""
    kind = cfg.scheduler
    if kind == "auto":
        kind = "systemd" if os.path.isdir("/run/systemd/system") else "crontab"
    if kind == "systemd":
        return TimerSpecs(cfg.timer_spec_dir)
    if kind == "crontab":
        return CrontabTimers(fire_command(), tabfile=Path(cfg.crontab_file) if cfg.crontab_file else None,
                             host_tz=cfg.tz)
    raise SystemExit(f"unknown scheduler backend {cfg.scheduler!r} (auto, systemd or crontab)")


class SchedulerDaemon(Daemon):
    name = "scheduler"

    def setup(self) -> None:
        self.backend = backend_for(self.cfg)
        self.log.info("timer backend: %s", self.backend.name)
        self.active = 0

    def work(self) -> float | None:
        active = list(Task.select().where(Task.status == "active").order_by(Task.id))
        for change in self.backend.reconcile(active):
            self.log.info("timers: %s", change)
        self.active = len(active)
        tasks_mod.snapshot(self.cfg)
        return None

    def status(self) -> str:
        return f"{self.active} active task(s) as {self.backend.name} timers"


def main() -> None:
    SchedulerDaemon().run()
