"""scheduler: keeps each scheduled task's timer equal to the database.

SUMMARY
    Owns no schedule: each pass (at start, on a nudge from the CLI or ipc,
    every 30 s) makes the timers match the active tasks and refreshes each
    group's ``tasks.json``. When a timer fires, ``python -m nanoclaw.admin.fire ID``
    hands the task to the queue.

READS
    The ``task`` table.

WRITES
    Under systemd, timer specs in ``<state>/timers/`` (``core.timer_specs``)
    that the root one-shot ``nanoclaw timers sync`` (``admin/timer_sync.py``)
    re-validates into units; without systemd, lines in the service user's
    crontab (and there, the nightly backup's line: ``[backup] nightly``; under systemd that
    is units/nanoclaw-backup.timer). ``ipc/<group>/in/tasks.json``, which agents see read-only.

PRIVILEGE
    The service user; no network. It never runs as root.

HOSTILE INPUT
    Task prompts and schedules come from agents' requests (validated by ipc
    through ``core.tasks``); specs are re-validated by the root side anyway.
"""

from __future__ import annotations

import os
from pathlib import Path

from nanoclaw.core import tasks as tasks_mod
from nanoclaw.core.config import Config
from nanoclaw.core.models import Task
from nanoclaw.core.skeleton import Daemon
from nanoclaw.core.timer_specs import CrontabTimers, TimerSpecs, fire_command, nanoclaw_command


def backend_for(cfg: Config):
    """The timer backend: systemd when it is PID 1 (or configured), else crontab."""
    kind = cfg.scheduler
    if kind == "auto":
        kind = "systemd" if os.path.isdir("/run/systemd/system") else "crontab"
    if kind == "systemd":
        return TimerSpecs(cfg.timer_spec_dir)
    if kind == "crontab":
        return CrontabTimers(fire_command(), tabfile=Path(cfg.crontab_file) if cfg.crontab_file else None,
                             host_tz=cfg.tz,
                             backup_command=f"{nanoclaw_command()} backup --nightly" if cfg.backup.nightly else "")
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


main = SchedulerDaemon.main
