"""fire: what a task's timer runs (``python -m nanoclaw.admin.fire ID``; by hand,
``nanoclaw tasks fire ID`` does the same): hand the task to the queue.

It writes ``task_fire`` into the queue's spool (fsync, rename; while the disk
refuses it, full or read-only, it tries again until it takes it) and nudges the
queue, loading neither the CLI, nor the database, nor the scheduling libraries:
the timer's share of a task's lateness is a Python start, reading the
configuration, one spool write and a datagram.
The queue checks that the task is active and moves ``next_run`` on when it
takes the file (``due_at`` absent tells it to), in the transaction that
records the run, so a file read twice still makes one run.

PRIVILEGE
    The service user, from ``nanoclaw-task@.service`` (or its crontab line).
"""

from __future__ import annotations

import sys
import time

PYTHON_AT = time.time()  # the interpreter is up and running this module: before our imports

from nanoclaw.core import config as config_mod  # noqa: E402
from nanoclaw.core import config_file  # noqa: E402
from nanoclaw.core.config import Config  # noqa: E402
from nanoclaw.core.protocol import Spool, nudge, process_started  # noqa: E402


def fire(cfg: Config, task_id: int, *, now: float | None = None) -> None:
    """Put ``task_fire`` for ``task_id`` in the queue's spool and wake the queue. The file says
    when this process started and when Python began running this module too, so the queue's
    log can tell the timer's, systemd's (the unit's sandbox, exec) and Python's shares of a
    firing's lateness apart."""
    body: dict = {"task": task_id, "fired_at": now or time.time()}
    started = process_started()
    if started is not None:
        body["started_at"] = started
        body["python_at"] = PYTHON_AT
    said: list[OSError] = []

    def refused(exc: OSError) -> None:  # a full or read-only disk: this process keeps the firing
        if not said:
            said.append(exc)
            print(f"nanoclaw: task {task_id}: the disk refuses the firing ({exc}); trying again until it "
                  "takes it", file=sys.stderr, flush=True)

    Spool(cfg.spool_dir / "queue").ensure().put_until_written("task_fire", body, on_refused=refused)
    nudge(cfg.socket("queue"))


def main(argv: list[str] | None = None) -> int:
    """``python -m nanoclaw.admin.fire TASK_ID`` (nanoclaw-task@.service): :func:`fire`, with
    only the configuration loaded first. Exit 2 for a bad argument, 1 for a bad configuration."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or not args[0].isdigit():
        print("usage: python -m nanoclaw.admin.fire TASK_ID (a task's number)", file=sys.stderr)
        return 2
    try:
        cfg = config_file.get()
    except config_mod.ConfigError as exc:
        print(f"nanoclaw: configuration error: {exc}", file=sys.stderr)
        return 1
    fire(cfg, int(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
