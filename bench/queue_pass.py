#!/usr/bin/env python3
"""One queue pass, in process: where the queue's share of a message's way goes.

    python3 bench/queue_pass.py [--groups 6] [--runs 200]

The queue daemon (real SQLite, real spools) in this process, no other daemon:
a pass after a message in a chat whose agent needs no waking (chatter without
the trigger), the pass that starts a job, and a pass that hands a follow-up to
a running job (what "stored -> turn decided" in bench/pipeline.py pays). For
each, the median time and how many SQL statements it ran: building and
running those statements through peewee is most of a pass.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--groups", type=int, default=6, help="registered groups besides main")
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="nc-bench-queue-"))
    os.environ.update(NANOCLAW_STATE_DIR=str(work / "state"), NANOCLAW_RUNTIME_DIR=str(work / "run"),
                      NANOCLAW_CONFIG_DIR=str(work / "etc"))
    (work / "config.toml").write_text('timezone = "UTC"\n')
    from nanoclaw.core import config_file
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import Job, Message, db, open_db
    cfg = config_file.load(work / "config.toml")
    open_db(cfg.db_path)
    from nanoclaw.daemons.queue import QueueDaemon
    groups_mod.add_group(cfg, "main", is_main=True)
    for i in range(args.groups):
        groups_mod.add_group(cfg, f"g{i}", jid=f"g{i}@term")
    queue = QueueDaemon(cfg)
    queue.setup()
    statements = 0
    real = db.execute_sql

    def counted(*a, **kw):
        nonlocal statements
        statements += 1
        return real(*a, **kw)
    db.execute_sql = counted

    def timed_pass() -> tuple[float, int]:
        nonlocal statements
        statements = 0
        t = time.perf_counter()
        queue.work()
        return time.perf_counter() - t, statements

    def add(chat: str, text: str) -> None:
        Message.create(chat=chat, sender="owner@term", text=text, timestamp=time.time(),
                       channel_id=os.urandom(6).hex())

    chatter = []
    for i in range(args.runs):
        add(f"g{i % args.groups}@term", f"chatter {i}")
        chatter.append(timed_pass())
    add("main@term", "hello")
    start = timed_pass()
    job = Job.select().order_by(Job.id.desc()).first()
    queue.inbox.put("job_event", {"job": job.id, "event": "started"})
    queue.work()
    follow = []
    for i in range(args.runs):
        add("main@term", f"and {i}")
        follow.append(timed_pass())
    print(f"queue pass, in process ({args.groups + 1} groups, {args.runs} runs; median time, SQL statements):")
    for name, rows in (("chatter, nobody to wake", chatter), ("a message that starts a job", [start]),
                       ("a follow-up into a running job", follow)):
        print(f"  {name:<34} {statistics.median(r[0] for r in rows) * 1000:6.2f} ms  "
              f"{statistics.median(r[1] for r in rows):4.0f} statements")
    return 0


if __name__ == "__main__":
    sys.exit(main())
