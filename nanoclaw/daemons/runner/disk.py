"""Disk waits: no container starts while the disk it would write to is nearly full.

SUMMARY
    An agent started on a full disk fails its turn. So a job's thread waits while the state
    directory's disk (or Podman's store) is nearly full or refuses writes
    (``core.faults``): the queue is nudged once, tells the chat, and the job starts when
    space returns. A start that failed on the disk is not counted as a try.

SYNOPSIS
    problem(daemon) -> why nothing should start now, or None
    await_space(daemon, body)   (in a job's thread; raises Stopped if the runner stops)
    unwritable(directory) -> why a small file cannot be written there, or None
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from nanoclaw.core import faults
from nanoclaw.core.log import log_fields
from nanoclaw.core.protocol import nudge, unique_name

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon

SPACE_CHECK = 2.0  # seconds between looks at the disk while a job waits for space


class Stopped(Exception):
    """The runner is stopping while a job's thread waits for the disk: leave the job as it is
    (its file stays in cur/ for the next runner)."""


def unwritable(directory: Path) -> str | None:
    """Why a small new file cannot be written in ``directory`` (a spool's ``tmp/``: a read-only
    or failing disk), or None when it can. Named as a spool writer's file, so one left by a
    runner killed right then is swept as a dead writer's."""
    probe = directory / unique_name("probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return faults.storage_error(exc)
    return None


def problem(daemon: RunnerDaemon) -> str | None:
    """Why no agent should start now: the state directory's disk (or Podman's) is nearly
    full, or refuses writes. None when it is fine."""
    for path in (daemon.cfg.state_dir, daemon.graph_root):
        why = faults.low_space(path) if path is not None else None
        if why is not None:
            return why
    return unwritable(daemon.spool.tmp)


def await_space(daemon: RunnerDaemon, body: dict) -> None:
    """Hold this job's thread until there is room to start its container: an agent started
    on a full disk fails its turn. The queue tells the chat (once); raises Stopped if the
    runner stops first."""
    job = body["job"]
    while (why := problem(daemon)) is not None:
        first = job not in daemon.waiting_space
        daemon.waiting_space[job] = why  # in the status before anyone is told of it
        if first:
            daemon.log.warning("not started: %s; waiting for space", why,
                               extra=log_fields(group=body["group"], job=job))
            nudge(daemon.cfg.socket("queue"))  # it looks at the disk, and tells the chat
        if daemon.stopping:
            raise Stopped()
        time.sleep(SPACE_CHECK)
    if daemon.waiting_space.pop(job, None) is not None:
        daemon.log.info("space again; starting", extra=log_fields(group=body["group"], job=job))
