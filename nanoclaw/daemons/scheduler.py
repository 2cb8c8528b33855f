"""scheduler: keeps each scheduled task's timer equal to the database.

SUMMARY
    Owns no schedule: each pass (at start, on a nudge from the CLI or ipc,
    every 30 s) makes the timers match the active tasks and refreshes each
    group's ``tasks.json``. When a timer fires, ``python -m nanoclaw.admin.fire ID``
    hands the task to the queue.

READS
    The ``task`` table.

WRITES
    Under the systemd units, timer specs in ``<state>/timers/`` (``core.timer_specs``)
    that the root one-shot ``python -m nanoclaw.admin.timer_sync`` (nanoclaw-timers.service)
    re-validates into units; without them (``nanoclaw run-all``), lines in the
    crontab of the user it runs as. ``ipc/<group>/in/tasks.json``, which agents
    see read-only.

    Without a ``crontab`` program (cron not installed) it says so once, with
    the fix, in its log and its status line (``nanoclaw status``, ``doctor``),
    and tries again every few seconds without a word more: the tasks are in the
    database and get their lines on the first pass that finds the program.

    The nightly backup's line goes in the same crontab (``[backup] nightly``; under
    systemd that is units/nanoclaw-backup.timer).

PRIVILEGE
    The service user; no network. Under the units it never runs as root
    (``nanoclaw run-all`` runs it as whoever started run-all).

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
from nanoclaw.core.timer_specs import (CronMissing, CrontabTimers, TimerSpecs, crontab_program, fire_command,
                                       nanoclaw_command)

RETRY_SECONDS = 5.0  # how soon a backend that failed (no crontab program yet) is tried again


def backend_kind(cfg: Config) -> str:
    """Which timer backend: systemd where its root half is installed (systemd is PID 1 and
    install.sh put ``nanoclaw-timers.path`` in place), or as configured; else crontab. (A
    ``nanoclaw run-all`` on a systemd machine without the units has nothing to turn specs
    into timers.)"""
    if cfg.scheduler == "auto":
        units = os.path.isdir("/run/systemd/system") and \
            (Path(cfg.systemd_unit_dir) / "nanoclaw-timers.path").exists()
        return "systemd" if units else "crontab"
    return cfg.scheduler


def backend_for(cfg: Config):
    """The timer backend, made (:func:`backend_kind`)."""
    kind = backend_kind(cfg)
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
        self.problem = ""  # why the timers could not be made equal to the database, as last said
        self.no_cron = False
        self.told: set[str] = set()  # tasks' problems already logged: once each, not every pass

    def work(self) -> float | None:
        active = list(Task.select().where(Task.status == "active").order_by(Task.id))
        self.active = len(active)
        tasks_mod.snapshot(self.cfg)
        try:
            changes = self.backend.reconcile(active)
        except OSError as exc:  # no crontab program, or crontab refused us: the same each pass
            problem, self.no_cron = str(exc), isinstance(exc, CronMissing)
            if problem != self.problem:  # said once, not once a pass
                self.log.error("timers cannot be written: %s", problem)
                self.problem = problem
            return RETRY_SECONDS
        if self.problem:
            found = f" (found {crontab_program()})" if self.no_cron else ""
            self.log.info("timers can be written again%s: %d active task(s)", found, len(active))
            self.problem, self.no_cron = "", False
        for change in changes:
            self.log.info("timers: %s", change)
        for problem in set(self.backend.problems) - self.told:  # the other tasks' timers are made
            self.log.error("timers: %s; change or cancel it (nanoclaw tasks update/cancel)", problem)
        self.told = set(self.backend.problems)
        return None

    def status(self) -> str:
        if self.problem:
            what = "NO CRONTAB PROGRAM" if self.no_cron else "TIMERS FAILING"
            return f"{what}: {self.active} active task(s) wait: {self.problem}"
        return f"{self.active} active task(s) as {self.backend.name} timers"


main = SchedulerDaemon.main
