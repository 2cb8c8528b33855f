"""``nanoclaw status``: one screen on units, connection, groups, agents, queue and tasks."""

from __future__ import annotations

import subprocess
from datetime import datetime

from . import DAEMONS
from .config import Config
from .doctor import UNITS, systemd_is_pid1
from .models import Group, Job, Message, Outbox, Task, open_db
from .protocol import request


def show(cfg: Config) -> int:
    if systemd_is_pid1():
        states = []
        for unit in UNITS:
            state = subprocess.run(["systemctl", "is-active", unit], capture_output=True, text=True).stdout.strip()
            states.append(f"{unit.removeprefix('nanoclaw-')} {state}")
        print("units:    " + ", ".join(states))
    down = []
    for name in DAEMONS:
        try:
            reply = request(cfg.socket(name), {"op": "status"}, timeout=2)
            if name == "channel":
                print(f"channel:  {reply.get('status', '')}")
        except (OSError, ValueError):
            down.append(name)
    if down:
        print("not answering: " + ", ".join(down))
    if not cfg.db_path.exists():
        print("no database yet: nanoclaw groups add main --main")
        return 1
    open_db(cfg.db_path)
    groups = list(Group.select().order_by(Group.folder))
    print(f"groups:   {len(groups)}: " + ", ".join(g.folder + (" (main)" if g.is_main else "") for g in groups))
    running = list(Job.select().where(Job.status == "running"))
    queued = Job.select().where(Job.status == "queued").count()
    print(f"agents:   {len(running)} running" + (f" ({', '.join(j.container for j in running)})" if running else "")
          + f", {queued} queued")
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
              f"{t.schedule_value}) {t.prompt[:40]!r}")
    return 0 if not down else 1
