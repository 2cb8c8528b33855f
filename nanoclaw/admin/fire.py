"""fire: what a task's timer runs (``nanoclaw tasks fire ID``): hand the task to the queue.

It writes ``task_fire`` into the queue's spool (fsync, rename) and nudges the
queue, loading neither the database nor the scheduling libraries: the timer's
share of a task's lateness is a Python start, one spool write and a datagram.
The queue checks that the task is active and moves ``next_run`` on when it
takes the file (``due_at`` absent tells it to), in the transaction that
records the run, so a file read twice still makes one run.

PRIVILEGE
    The service user, from ``nanoclaw-task@.service`` (or its crontab line).
"""

from __future__ import annotations

import time

from nanoclaw.core.config import Config
from nanoclaw.core.protocol import Spool, nudge, process_started


def fire(cfg: Config, task_id: int, *, now: float | None = None) -> None:
    """Put ``task_fire`` for ``task_id`` in the queue's spool and wake the queue. The file says
    when this process started too, so the queue's log can tell the timer's and systemd's share
    of a firing's lateness from Python's."""
    body: dict = {"task": task_id, "fired_at": now or time.time()}
    started = process_started()
    if started is not None:
        body["started_at"] = started
    Spool(cfg.spool_dir / "queue").ensure().put("task_fire", body)
    nudge(cfg.socket("queue"))
