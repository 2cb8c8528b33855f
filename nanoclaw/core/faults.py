"""When the disk refuses a write: what counts as that, how much room is left, and the writes a
daemon keeps until the disk takes them.

A full disk (ENOSPC, SQLite's "database or disk is full"), a failing one (EIO, "disk I/O
error") or a read-only one (EROFS, "attempt to write a readonly database") is a fault of the
moment, not of the message: nothing is dropped or failed for it. A consumer leaves the file it
was working on where it is and works on it again later; a write a daemon decided on its own is
kept here, in order, and tried at each of its passes (``Daemon.put``); a thread or an agent
waits (``Spool.put_until_written``). Agents are not started while the state directory's disk is
nearly full (:func:`low_space`): their turn would fail on it, and the chat is told once instead.
"""

from __future__ import annotations

import errno
import logging
import os
import sqlite3
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from peewee import DatabaseError

from nanoclaw.core.protocol import REFUSED, Spool, refused

# A status line that says this names a daemon held up by the disk (doctor and status look for it).
MARK = "WAITING FOR THE DISK"
# The state directory's disk counts as full below this much free space, or below 5% of its size
# when that is less (a small filesystem): an agent's turn writes its session, the prompt, the
# answer and a few database pages, far less than this, and leaves room for the notices.
FULL_BYTES = 64 * 2**20
MIN_INODES = 256
# SQLite's words for a refused write (its SQLITE_FULL, SQLITE_IOERR and SQLITE_READONLY families),
# and the Podman API's (ENOSPC and friends as text).
_DB_WORDS = ("database or disk is full", "disk i/o error", "readonly database", "read-only database")
_OS_WORDS = ("no space left on device", "read-only file system", "input/output error", "disk quota exceeded")


def storage_error(exc: BaseException) -> str | None:
    """A one-line reason if ``exc`` is the disk refusing a write, else None."""
    text = " ".join(str(exc).split())
    lower = text.lower()
    if isinstance(exc, OSError) and refused(exc):
        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the disk is read-only"}.get(exc.errno or 0, "the disk failed a write")
        return f"{what} ({exc.strerror or text})"
    if isinstance(exc, (sqlite3.Error, DatabaseError)) and any(w in lower for w in _DB_WORDS):
        if "full" in lower:
            return f"the disk is full ({text})"
        return f"the disk is read-only ({text})" if "readonly" in lower or "read-only" in lower \
            else f"the disk failed a write ({text})"
    if not isinstance(exc, OSError) or getattr(exc, "errno", None) is None:  # an API's error text
        if any(w in lower for w in _OS_WORDS):
            return f"the disk is full ({text[:200]})" if "no space" in lower or "quota" in lower \
                else f"the disk refused a write ({text[:200]})"
    return None


def describe(exc: BaseException) -> str:
    """A failed write for the owner: the disk's part named, with what to do about it."""
    why = storage_error(exc)
    if why is None:
        return " ".join(str(exc).split())
    return why + (": free space where nanoclaw keeps its state" if "full" in why or "quota" in why
                  else ": check the disk where nanoclaw keeps its state")


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024:
            return f"{n:.0f} {unit}" if unit != "MiB" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def low_space(path: Path) -> str | None:
    """Why the disk holding ``path`` is too full to start an agent on, or None when it is not
    (or cannot be looked at)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free, size = st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize
    if free < min(FULL_BYTES, size // 20):
        return f"the disk is full: {_size(free)} free of {_size(size)} on {path}"
    if st.f_files and st.f_favail < MIN_INODES:
        return f"the disk is full: {st.f_favail} inodes free of {st.f_files} on {path}"
    return None


@dataclass
class Write:
    spool: Spool
    kind: str
    body: dict
    name: str
    durable: bool
    then: Callable[[], None] | None


class Held:
    """Spool files a daemon could not write because the disk refused them, kept in order.

    In memory: a restart loses them, and what the daemon's durable state says makes it decide
    them again (a job still queued, a notice still owed)."""

    def __init__(self) -> None:
        self.writes: deque[Write] = deque()

    def __len__(self) -> int:
        return len(self.writes)

    def add(self, write: Write) -> None:
        self.writes.append(write)

    def flush(self, log: logging.Logger) -> OSError | None:
        """Write what is kept, oldest first; stop at the first refusal and return it. A write
        that fails otherwise (its spool directory replaced, say) could never be made: logged
        as lost, never retried for ever."""
        while self.writes:
            w = self.writes[0]
            try:
                w.spool.put(w.kind, w.body, name=w.name, durable=w.durable)
            except OSError as exc:
                if exc.errno in REFUSED:
                    return exc
                log.error("spool=%s %s %s cannot be written: %s; lost", w.spool.name, w.kind, w.name, exc)
                self.writes.popleft()
                continue
            self.writes.popleft()
            if w.then is not None:
                w.then()
        return None

    def waiting(self, kind: str, key: str, value: object) -> bool:
        """Whether a kept write of ``kind`` has ``body[key] == value`` (a job's file not yet handed over)."""
        return any(w.kind == kind and w.body.get(key) == value for w in self.writes)
