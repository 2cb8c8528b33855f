"""Scheduled tasks: the rules for creating and changing them, shared by the CLI and ipc.

Who may do what: a non-main group manages only its own tasks and schedules
only for itself; the main group manages all and may schedule for any group.
The database is the truth; the scheduler daemon makes the timers match it.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from zoneinfo import ZoneInfo

from nanoclaw.core import model_choice
from nanoclaw.core.config import Config
from nanoclaw.core.models import Group, Task, TaskRun, db
from nanoclaw.core.protocol import Spool, nudge, write_atomic
from nanoclaw.core.schedules import Schedule, ScheduleError, seconds_text, shortest_gap, validate


class TaskError(ValueError):
    """A task request that is refused; the text says why."""


class LimitError(TaskError):
    """A task beyond ``[tasks]`` (how many, how often); the owner may go beyond it."""


MAX_PRECHECK_CHARS = 2000


def check_precheck(command: str) -> str:
    """A task's pre-check command as stored ("" for none); raise TaskError if it cannot be one.

    It is shell text for ``/bin/sh -c`` in a container that has no network and sees the
    group's folder read-only; nothing of it is interpreted on the host.
    """
    if not isinstance(command, str):
        raise TaskError("the pre-check must be a shell command (text)")
    command = command.strip()
    if "\x00" in command:
        raise TaskError("the pre-check must not contain NUL characters")
    if len(command) > MAX_PRECHECK_CHARS:
        raise TaskError(f"the pre-check is {len(command)} characters long; at most {MAX_PRECHECK_CHARS}")
    return command


def check_model(cfg: Config, model: object) -> str:
    """A task's own model as stored ("" for none; "default" says the same); raise TaskError
    (one line) for anything else than an exact model name allowed by ``[usage]``."""
    if isinstance(model, str) and model in model_choice.DEFAULT_WORDS:
        return ""
    try:
        return model_choice.check(cfg, model, "the task's model")
    except model_choice.ModelError as exc:
        raise TaskError(str(exc)) from None


def check_limits(cfg: Config, group: Group, sched: Schedule | None, *, adding: bool) -> None:
    """Refuse (TaskError) what goes beyond ``[tasks]``: a task more than ``max_per_group`` for
    ``group`` (``adding``), or one that would run more often than ``min_interval``."""
    limits = cfg.tasks
    if adding:
        count = Task.select().where(Task.group == group, Task.status.in_(("active", "paused"))).count()
        if count >= limits.max_per_group:
            raise LimitError(f"group {group.folder} has {count} tasks, the most [tasks] max_per_group allows; "
                            "cancel one first")
    gap = shortest_gap(sched) if sched is not None else None
    if gap is not None and gap < limits.min_interval:
        raise LimitError(f"{sched.kind} {sched.value} would run as often as every {seconds_text(gap)}; "
                        f"[tasks] min_interval is {seconds_text(limits.min_interval)}")


def schedule_of(task: Task) -> Schedule:
    return Schedule(task.schedule_type, task.schedule_value, task.timezone)


def compute_next(task: Task, after: float | None = None) -> float | None:
    zone = ZoneInfo(task.timezone)
    base = datetime.fromtimestamp(after, zone) if after else None
    nxt = schedule_of(task).next_run(after=base, last_run=task.last_run)
    return nxt.timestamp() if nxt else None


def create(cfg: Config, owner: Group, prompt: str, kind: str, value: str, *, context_mode: str = "group",
           target: Group | None = None, tz: str | None = None, created_by: str = "cli",
           precheck: str = "", over_limits: bool = False, model: object = "") -> Task:
    """Validate and store a new task; raise TaskError or ScheduleError with the reason.

    ``precheck``: a shell command run before each run (see :func:`check_precheck`).
    ``over_limits``: the owner's CLI going beyond ``[tasks]`` (never an agent's request).
    ``model``: the task's own model (see :func:`check_model`)."""
    precheck = check_precheck(precheck)
    model = check_model(cfg, model)
    if not prompt.strip():
        raise TaskError("the task has no prompt")
    if context_mode not in ("group", "isolated"):
        raise TaskError(f"context_mode must be group or isolated, not {context_mode!r}")
    target = target or owner
    if target.id != owner.id and not owner.is_main:
        raise TaskError(f"group {owner.folder!r} may only schedule tasks for itself")
    sched = validate(kind, value, tz or cfg.tz)  # raises if it is malformed or can never fire
    nxt = sched.next_run()
    with db.atomic("IMMEDIATE"):  # counted and stored in one transaction: no two past the cap
        if not over_limits:
            check_limits(cfg, target, sched, adding=True)
        return Task.create(group=target, chat=target.jid, prompt=prompt, schedule_type=sched.kind,
                           schedule_value=sched.value, timezone=sched.tz, context_mode=context_mode,
                           created_by=created_by, next_run=nxt.timestamp() if nxt else None,
                           precheck=precheck, model=model)


def find(task_id: int, requester: Group | None) -> Task:
    """The task, if ``requester`` (None: the CLI) may manage it."""
    task = Task.get_or_none(Task.id == task_id)
    if task is None or (requester is not None and not requester.is_main and task.group_id != requester.id):
        raise TaskError(f"no task {task_id}" + ("" if requester is None else " in this group"))
    return task


def change(task: Task, action: str) -> Task:
    """pause, resume or cancel a task."""
    allowed = {"pause": ("active",), "resume": ("paused",), "cancel": ("active", "paused")}
    if action not in allowed:
        raise TaskError(f"unknown action {action!r}")
    if task.status not in allowed[action]:
        raise TaskError(f"task {task.id} is {task.status}; cannot {action} it")
    task.status = {"pause": "paused", "resume": "active", "cancel": "cancelled"}[action]
    if action == "resume":
        task.next_run = compute_next(task)
    task.save()
    return task


def update(cfg: Config, task: Task, *, prompt: str | None = None, kind: str | None = None,
           value: str | None = None, precheck: str | None = None, over_limits: bool = False,
           model: object = None) -> Task:
    """Change a task's prompt, schedule, pre-check ("" removes it) and/or its own model ("" or
    "default" removes it), validated as when it
    was made (within ``[tasks]`` unless ``over_limits``: the owner's CLI); raise TaskError or
    ScheduleError with the reason, before anything changes."""
    if precheck is not None:
        precheck = check_precheck(precheck)
    if model is not None:
        model = check_model(cfg, model)
    if task.status not in ("active", "paused"):
        raise TaskError(f"task {task.id} is {task.status}; it cannot be changed")
    if prompt is not None and not prompt.strip():
        raise TaskError("the task's prompt must not be empty")
    if (kind is None) != (value is None):
        raise TaskError("a new schedule needs both its type and its value")
    if prompt is None and kind is None and precheck is None and model is None:
        raise TaskError("nothing to change: give a prompt, a schedule, a pre-check or a model")
    with db.atomic("IMMEDIATE"):
        if prompt is not None:
            task.prompt = prompt
        if precheck is not None:
            task.precheck = precheck
        if model is not None:
            task.model = model
        if kind is not None:
            sched = validate(kind, value or "", task.timezone)  # refuses what can never fire
            if not over_limits:
                check_limits(cfg, task.group, sched, adding=False)
            nxt = sched.next_run()
            task.schedule_type, task.schedule_value = sched.kind, sched.value
            task.next_run, task.last_run = (nxt.timestamp() if nxt else None), None
        task.save()
    return task


def describe(task: Task) -> str:
    try:
        when = schedule_of(task).describe() if task.status == "active" else task.status
    except ScheduleError as exc:
        when = f"invalid schedule: {exc}"
    check = task.precheck if len(task.precheck) <= 60 else task.precheck[:57] + "..."
    return f"task {task.id} for {task.group.folder}: {when}" + (f"; runs only if {check!r} prints something"
                                                                 if check else "") \
        + (f"; on {task.model}" if task.model else "")


def model_cell(cfg: Config, task: Task) -> str:
    """``tasks list``: the model the task's next run uses, and the one its last run used."""
    choice = model_choice.for_job(cfg, task.group.folder, task_model=task.model)
    cell = f"model {choice.model or 'the CLI default'} ({choice.source})"
    if choice.refused:
        cell += " REFUSED: not in [usage] allowed_models"
    last = task.runs.where(TaskRun.started_at.is_null(False), TaskRun.status != "skipped") \
        .order_by(TaskRun.id.desc()).first()
    return cell + (f", last run on {last.model or 'the CLI default'}" if last is not None else "")


def fire(cfg: Config, task_id: int, *, if_due: bool = False, now: float | None = None) -> bool:
    """Hand a task to the queue (what a timer runs). False if it is not active or not due."""
    now = now or time.time()
    task = Task.get_or_none(Task.id == task_id)
    if task is None or task.status != "active":
        return False
    if if_due and (task.next_run is None or task.next_run > now + 1):
        return False
    due = task.next_run
    Spool(cfg.spool_dir / "queue").ensure().put("task_fire", {"task": task.id, "fired_at": now, "due_at": due})
    advance(task, now)
    nudge(cfg.socket("queue"))
    return True


def advance(task: Task, fired_at: float) -> float | None:
    """Move a fired task's ``next_run`` on; return the due time it fired for.

    The next due time is computed from the scheduled time, not from when the timer was late.
    """
    due = task.next_run
    task.next_run = compute_next(task, after=max(fired_at, due or fired_at)) if task.schedule_type != "once" \
        else None
    task.save()
    return due



def snapshot(cfg: Config) -> None:
    """Write each group's view of the tasks to its ipc ``in/`` dir, which the agent sees
    read-only (its list_tasks tool reads it)."""
    tasks = list(Task.select().where(Task.status.in_(("active", "paused"))).order_by(Task.id))
    for group in list(Group.select()):
        visible = [t for t in tasks if group.is_main or t.group_id == group.id]
        rows = [{"id": t.id, "group": t.group.folder, "prompt": t.prompt[:200], "schedule": t.schedule_type,
                 "value": t.schedule_value, "timezone": t.timezone, "status": t.status,
                 "context_mode": t.context_mode, "precheck": t.precheck, "model": t.model,
                 "next_run": datetime.fromtimestamp(t.next_run, ZoneInfo(t.timezone)).isoformat()
                 if t.next_run else None} for t in visible]
        path = cfg.ipc_dir / group.folder / "in" / "tasks.json"
        text = json.dumps(rows, indent=1)
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            if path.read_text() == text:
                continue  # unchanged: no write, no fsync
        except OSError:
            pass
        write_atomic(path, text, 0o644)


def runs(task: Task, limit: int = 20) -> list[TaskRun]:
    return list(task.runs.order_by(TaskRun.id.desc()).limit(limit))
