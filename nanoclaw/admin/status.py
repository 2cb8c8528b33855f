"""``nanoclaw status``: one screen on units, connection, groups, agents, queue and tasks."""

from __future__ import annotations

import os
import subprocess
import time
from datetime import datetime

from nanoclaw import registry
from nanoclaw.core import faults, model_choice
from nanoclaw.core.config import Config
from nanoclaw.core.models import Cursor, Group, Job, Message, Outbox, Task, open_db
from nanoclaw.core.protocol import request

_CLI = "the CLI's default model"
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


def summary(cfg: Config) -> list[str]:
    """The database's part of the screen: groups, agents, queue, failures, requests, today's
    usage and budgets, outbox, tasks. Also the answer to ``status`` in the main chat (the
    queue's, daemons/queue/owner_chat.py), so it reads only the database, never another daemon."""
    out: list[str] = []
    print = out.append  # noqa: A001 (the lines as the screen shows them)
    groups = list(Group.select().order_by(Group.folder))
    print(f"groups:   {len(groups)}: " + ", ".join(g.folder + (" (main)" if g.is_main else "") for g in groups))
    running = list(Job.select().where(Job.status == "running"))  # each on the model it was given
    queued = Job.select().where(Job.status == "queued").count()
    print(f"agents:   {len(running)} running" + (f" ({', '.join(f'{j.container} on {j.model or _CLI}' for j in running)})"
                                                    if running else "")
          + f", {queued} queued")
    team = list(Job.select().where(Job.status.in_(("running", "queued")), Job.agent != "").order_by(Job.id))
    if team:  # live team members, each in its own container
        print("team:     " + ", ".join(f"{j.group.folder}/{j.agent} ({j.status})" for j in team))
    day_ago = time.time() - 86400
    for job in list(Job.select().where(Job.status == "failed", Job.finished_at > day_ago)
                    .order_by(Job.id.desc()).limit(3)):
        when = datetime.fromtimestamp(job.finished_at).strftime("%H:%M")
        print(f"failed:   {job.group.folder} job {job.id} at {when}: "
              f"{(job.error or f'exit code {job.exit_code}').splitlines()[0][:160]}")
    for cursor in list(Cursor.select().where(Cursor.failures > 0)):
        last = (Job.select().where(Job.group == cursor.group, Job.agent == cursor.agent, Job.status == "failed")
                .order_by(Job.id.desc()).first())
        wait = max(0, cursor.retry_at - time.time())
        who = cursor.group.folder + (f"/{cursor.agent}" if cursor.agent else "")
        print(f"failing:  {who}: {cursor.failures}/{cfg.max_attempts} attempts failed"
              + (f", next in {wait:.0f}s" if wait else "") + (f": {last.error.splitlines()[0][:160]}"
                                                             if last and last.error else ""))
    if cfg.voice.enabled:  # voice notes whose transcript a turn waits for (queue/voice.py)
        heard = Message.select().where(Message.media.contains('"state": "asked"')).count()
        print(f"voice:    {heard} transcription(s) waiting")
    from nanoclaw.core.approvals import pending_count
    waiting = pending_count()
    print(f"requests: {waiting} waiting for your answer" + (" (nanoclaw pending)" if waiting else ""))
    from nanoclaw.core import usage
    print(f"usage:    today {usage.today_line(cfg)} (nanoclaw usage)")
    for scope in [usage.ALL] + [g.folder for g in groups]:  # every budget in force, and how much is used
        for lim in usage.limits(cfg, scope):
            used = usage.spent(cfg, scope, lim.period)
            value = used.usd if lim.unit == "usd" else used.tokens
            amount = f"${lim.limit:.2f}" if lim.unit == "usd" else f"{int(lim.limit):,} tokens"
            print(f"budgets:  {'all groups' if scope == usage.ALL else scope} {amount} per {lim.period}, "
                  f"{min(value / lim.limit, 9.99):.0%} used" + (" (today only)" if "today" in lim.source else ""))
    for g in groups:
        spent = usage.exceeded(cfg, g.folder)
        if spent is not None:
            print(f"budget:   {spent.text(g.name)}")
    pending = Outbox.select().where(Outbox.status == "pending").count()
    failed = Outbox.select().where(Outbox.status == "failed").count()
    print(f"outbox:   {pending} pending, {failed} failed; {Message.select().count()} messages stored")
    tasks = list(Task.select().where(Task.status == "active", Task.next_run.is_null(False))
                 .order_by(Task.next_run).limit(5))
    if not tasks:
        print("tasks:    no scheduled tasks")
    for i, t in enumerate(tasks):
        when = datetime.fromtimestamp(t.next_run).strftime("%Y-%m-%d %H:%M")
        print(f"{'tasks:' if i == 0 else '':<10}#{t.id} {t.group.folder} at {when} ({t.schedule_type} "
              f"{t.schedule_value}) {t.prompt[:40]!r} on {model_choice.for_job(cfg, t.group.folder, task_model=t.model).model or _CLI}")
    return out
