"""The one-screen summary's database part: groups, agents, queue, failures, requests, today's
usage and budgets, outbox, tasks.

A rule two processes apply: ``nanoclaw status`` prints it under the daemons' own lines
(admin/status.py), and the queue answers the owner's ``status`` in the main chat with it
(daemons/queue/owner_chat.py). So it reads only the database, never another daemon.
Group names, task prompts and job errors in it are the owner's or an agent's words: it is
text for the owner's screen or main chat, never a journal field.
"""

from __future__ import annotations

import time
from datetime import datetime

from nanoclaw.core import model_choice
from nanoclaw.core.config import Config
from nanoclaw.core.models import Cursor, Group, Job, Message, Outbox, Task

_CLI = "the CLI's default model"


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
