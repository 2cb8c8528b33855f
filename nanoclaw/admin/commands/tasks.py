"""nanoclaw tasks and nanoclaw timers: scheduled prompts, and the systemd timers that fire them.

SYNOPSIS
    add_parsers(sub)                 the tasks and timers commands
    cmd_tasks(cfg, args)             list, add, update, pause, resume, cancel, run-now, log, fire
    cmd_timers(cfg, args)            (as root) make the timer units equal the scheduler's specs

A timer's "tasks fire ID" takes the light path (admin/fire.py: no database), so that a
timer's lateness is only this process's start.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import nudge


def cmd_tasks(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    if args.action == "fire" and not args.if_due:  # a timer: the light path, no database
        from nanoclaw.admin import fire
        fire.fire(cfg, args.id)
        return 0
    from datetime import datetime

    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.models import Task, open_db
    from nanoclaw.core.schedules import ScheduleError

    open_db(cfg.db_path)

    def stamp(ts: float | None) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

    try:
        if args.action == "fire":
            fired = tasks_mod.fire(cfg, args.id, if_due=args.if_due)
            if not fired and not args.if_due:
                print(f"nanoclaw: task {args.id} is not active; not fired", file=sys.stderr)
                return 1
            return 0
        if args.action == "list":
            rows = Task.select().order_by(Task.id)
            if not args.all:
                rows = rows.where(Task.status.in_(("active", "paused")))
            rows = list(rows)
            if not rows:
                print("no scheduled tasks (add one: nanoclaw tasks add GROUP --cron '0 9 * * *' PROMPT)")
            for t in rows:
                check = f"  if {t.precheck[:30]!r}" if t.precheck else ""
                print(f"{t.id:>4}  {t.group.folder:<14} {t.status:<9} {t.schedule_type:<8} {t.schedule_value:<26} "
                      f"next {stamp(t.next_run)}  {t.prompt[:40]!r}{check}  {tasks_mod.model_cell(cfg, t)}")
            return 0
        if args.action in ("add", "update") and args.precheck is not None and not args.precheck.strip():
            raise tasks_mod.TaskError("--if needs a command" + (" (--no-if removes the pre-check)"
                                                                if args.action == "update" else ""))
        if args.action == "add":
            kind, value = ("cron", args.cron) if args.cron else ("interval", args.every) if args.every \
                else ("once", args.at)
            group = groups_mod.find_group(args.group)
            task = tasks_mod.create(cfg, group, " ".join(args.prompt), kind, value, tz=args.tz,
                                    context_mode="isolated" if args.isolated else "group",
                                    precheck=args.precheck or "", over_limits=args.over_limits,
                                    model=args.model or "")
            print(f"added {tasks_mod.describe(task)}")
        elif args.action == "update":
            kind, value = ("cron", args.cron) if args.cron else ("interval", args.every) if args.every \
                else ("once", args.at) if args.at else (None, None)
            task = tasks_mod.update(cfg, tasks_mod.find(args.id, None), prompt=args.prompt, kind=kind, value=value,
                                    precheck="" if args.no_precheck else args.precheck, over_limits=args.over_limits,
                                    model=args.model)
            print(f"updated {tasks_mod.describe(task)}")
        elif args.action in ("pause", "resume", "cancel"):
            task = tasks_mod.change(tasks_mod.find(args.id, None), args.action)
            print(f"task {task.id} is now {task.status}")
        elif args.action == "run-now":
            task = tasks_mod.find(args.id, None)
            if task.status != "active":
                print(f"nanoclaw: task {task.id} is {task.status}; resume it first", file=sys.stderr)
                return 1
            tasks_mod.fire(cfg, task.id)
            print(f"task {task.id} handed to the queue")
            return 0
        elif args.action == "log":
            task = tasks_mod.find(args.id, None)
            print(tasks_mod.describe(task))
            if task.precheck:
                print(f"  pre-check: {task.precheck}")
            for run in tasks_mod.runs(task):
                took = f"{run.finished_at - run.started_at:.1f}s" if run.finished_at and run.started_at else "-"
                detail = run.error if run.status == "error" else run.result  # a skipped run's result says why
                on = f"on {run.model or 'the CLI default'}" if run.started_at and run.status != "skipped" else ""
                print(f"  run {run.id:>4}  {stamp(run.fired_at)}  {run.status:<8} {took:>7}  "
                      f"{detail[:60]!r}  {on}".rstrip())
            return 0
    except (tasks_mod.TaskError, ScheduleError, groups_mod.GroupError) as exc:
        hint = " (--over-limits to go beyond it)" if isinstance(exc, tasks_mod.LimitError) else ""
        print(f"nanoclaw: {exc}{hint}", file=sys.stderr)
        return 2
    nudge(cfg.socket("scheduler"))
    return 0


def cmd_timers(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import timer_sync
    return timer_sync.run(cfg)  # what nanoclaw-timers.service runs alone: python -m nanoclaw.admin.timer_sync


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("tasks", help="scheduled tasks: list, add, pause, resume, cancel, run-now, log")
    sp.set_defaults(run=cmd_tasks)
    tsub = sp.add_subparsers(dest="action", required=True)
    tl = tsub.add_parser("list", help="list tasks")
    tl.add_argument("--all", action="store_true", help="include completed and cancelled tasks")
    ta = tsub.add_parser("add", help="schedule a prompt for a group")
    ta.add_argument("group")
    when = ta.add_mutually_exclusive_group(required=True)
    when.add_argument("--cron", help="cron expression, e.g. '0 9 * * *' or @daily")
    when.add_argument("--every", help="interval, e.g. 30m, 2h, 1d")
    when.add_argument("--at", help="one-off ISO time, e.g. 2026-12-01T09:00")
    ta.add_argument("--tz", help="timezone (default: the owner's)")
    ta.add_argument("--isolated", action="store_true", help="run in a fresh session, not the group's")
    ta.add_argument("--if", dest="precheck", metavar="CMD",
                    help="pre-check: a shell command run first in a container with no network and the group's "
                         "folder read-only; the agent runs (shown its output) only if it exits 0 and prints "
                         "something, else the run is logged as skipped")
    ta.add_argument("--model", help="the model its runs use (default: the group's, else [models] tasks, "
                                    "else [models] default)")
    ta.add_argument("prompt", nargs="+")
    over = ("go beyond [tasks] max_per_group and min_interval (they bind agents; you set them, and may "
            "pass them here)")
    ta.add_argument("--over-limits", action="store_true", help=over)
    tu = tsub.add_parser("update", help="change a task's prompt, schedule, pre-check and/or model")
    tu.add_argument("id", type=int)
    when = tu.add_mutually_exclusive_group()
    when.add_argument("--cron", help="a new cron schedule")
    when.add_argument("--every", help="a new interval")
    when.add_argument("--at", help="a new one-off time")
    tu.add_argument("--prompt", help="a new prompt")
    tu.add_argument("--model", help="a model of its own ('default': none, back to the group's or [models])")
    check = tu.add_mutually_exclusive_group()
    check.add_argument("--if", dest="precheck", metavar="CMD", help="a new pre-check command (see tasks add)")
    check.add_argument("--no-if", dest="no_precheck", action="store_true", help="remove the pre-check")
    tu.add_argument("--over-limits", action="store_true", help=over)
    for action in ("pause", "resume", "cancel", "run-now", "log"):
        tsub.add_parser(action, help=f"{action} a task").add_argument("id", type=int)
    tf = tsub.add_parser("fire", help="(run by timers) hand a task to the queue")
    tf.add_argument("id", type=int)
    tf.add_argument("--if-due", action="store_true", help="only if its next run time has come")
    sp = sub.add_parser("timers", help="(run by nanoclaw-timers.service, as root) task timers")
    sp.add_argument("action", choices=["sync"], help="make the timer units equal the scheduler's specs")
    sp.set_defaults(run=cmd_timers)
