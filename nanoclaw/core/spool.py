"""Spool directories: the durable hand-over between nanoclaw's processes.

SUMMARY
    Spools have Maildir semantics. A producer writes ``tmp/NAME``, fsyncs it and
    renames it into ``new/`` (then fsyncs the directory), so a consumer never sees
    half a file and a file in ``new/`` survives a crash. The consumer claims a
    file by renaming it into ``cur/`` and deletes it once its effects are durable;
    whatever is still in ``cur/`` when a consumer starts was claimed by a
    predecessor that died, and is processed again. Consumers therefore make their
    effects idempotent (unique keys), which turns "at least once" into "exactly
    once" where it matters.

SYNOPSIS
    Spool(root, *, exposed=None, max_bytes=1 MiB, name=None)
        .ensure()  .put(kind, body)  .put_until_written(kind, body)
        .claim_new()  .leftovers()  .unseen(seen)  .take(paths)  .read(path)
        .done(path)  .reject(path, reason)  .sweep_tmp()
    unique_name(tag="") -> str      refused(exc) -> bool

DESCRIPTION
    A file is one message (core/messages.py), checked once where it is read.
    Anything unreadable, oversize, not a regular file, of an unknown type, with a
    missing or undeclared field goes to ``bad/`` with a ``.reason`` file beside
    it; it never crashes a daemon and is never silently dropped.

HOSTILE INPUT
    An exposed spool's ``tmp/`` and ``new/`` (a group's ``ipc/<group>/out``) are
    the agent's: every entry may be a link, a FIFO or a directory, and every byte
    is attacker-controlled. They are walked with :mod:`safefs`, never followed.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import re
import stat
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

try:
    from nanoclaw.core.messages import BadMessage, Envelope, Message, parse, encode
    from nanoclaw.core.safefs import Dir, UnsafeEntry
except ImportError:  # inside an agent image, where these are top-level modules
    from messages import BadMessage, Envelope, Message, parse, encode  # type: ignore[no-redef]
    from safefs import Dir, UnsafeEntry  # type: ignore[no-redef]

_NAME_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,200}")  # whole names: fullmatch

_counter = itertools.count()
log = logging.getLogger("nanoclaw.protocol")  # the name journal readers know
# The disk refusing a write: full (ENOSPC, EDQUOT), failing (EIO) or read-only (EROFS). What was
# to be written is kept and written again once the disk takes it (Spool.put_until_written, and
# the daemons' kept writes in core/faults.py); a refusal is never a reason to drop anything.
REFUSED = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS))
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between tries of a refused write: doubling, capped


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk refusing a write (as opposed to a bug or a bad entry)."""
    return isinstance(exc, OSError) and exc.errno in REFUSED


def unique_name(tag: str = "") -> str:
    """A spool file name that sorts by creation time and never collides."""
    suffix = f".{tag}" if tag else ""
    return f"{time.time_ns():020d}.{os.getpid()}.{next(_counter)}{suffix}"


SWEEP_EVERY = 30.0  # seconds between looks into tmp/ for dead writers' leftovers
STALE_TMP = 86400.0


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


class Spool:
    """A Maildir-style queue directory with one consumer.

    ``tmp/`` and ``new/`` may be *exposed*: a group's container writes its
    requests into its own ``ipc/<group>/out/{tmp,new}`` while the host keeps
    ``cur/`` and ``bad/`` under ``root``, where the container cannot reach
    them. The exposed directory is a trusted base (its own path is the
    host's); everything below it is walked with :mod:`safefs`, so a link the
    container planted is moved or removed as an entry, never followed.
    """

    def __init__(self, root: Path, *, exposed: Path | None = None, max_bytes: int = 1 << 20,
                 name: str | None = None) -> None:
        self.root = Path(root)
        self.exposed = Path(exposed) if exposed else None
        top = self.exposed or self.root
        self.new = top / "new"
        self.tmp = top / "tmp"
        self.cur = self.root / "cur"
        self.bad = self.root / "bad"
        self.max_bytes = max_bytes
        self.name = name or self.root.name
        self._swept = 0.0

    def _open(self, sub: str, create: bool = False) -> Dir:
        """One of the spool's directories, opened without following links below its base."""
        if self.exposed is not None and sub in ("new", "tmp"):
            return Dir.open(self.exposed, sub, create=create)
        return Dir.open(self.root, sub, create=create)

    def ensure(self) -> "Spool":
        """Make the spool's directories. An exposed ``new/`` or ``tmp/`` that is not a
        directory (a link the container planted) is removed and made again."""
        for sub in ("cur", "bad") if self.exposed else ("tmp", "new", "cur", "bad"):
            self._open(sub, create=True).close()
        if self.exposed is not None:
            with Dir.open(self.exposed, create=True) as top:
                for sub in ("tmp", "new"):
                    top.ensure_dir(sub).close()
        return self

    # -- producing -------------------------------------------------------
    def put(self, kind: str, body: dict | Message, *, name: str | None = None, durable: bool = True) -> Path:
        """Add a message, durably unless told otherwise; returns its path in ``new/``.

        ``durable=False`` leaves out the two fsyncs (the file's and ``new/``'s). Readers
        still see the whole file or none (the rename is atomic either way); only a power
        cut may lose it. That is for hand-overs whose content the database can make again:
        a prompt for a container, which a power cut kills too, and whose messages stay
        behind the agent's cursor until a result for them is stored."""
        data = encode(kind, body)
        name = name or unique_name(kind)
        if not _NAME_RE.fullmatch(name):
            raise ValueError(f"bad spool file name {name!r}")
        with self._open("tmp") as tmp, self._open("new") as new:
            # 0644: an agent container runs under another uid and must read its prompts;
            # the state directory around the spools is what keeps others out.
            tmp.new_file(name, data, 0o644, sync=durable)
            tmp.rename(name, new)
            if durable:
                new.fsync()
        return self.new / name

    def put_until_written(self, kind: str, body: dict | Message, *, name: str | None = None, durable: bool = True,
                          stop: Callable[[], bool] = lambda: False,
                          on_refused: Callable[[OSError], None] | None = None) -> Path | None:
        """:meth:`put`, tried again (0.5 s, then doubling up to 5 s) for as long as the disk refuses
        it: for a writer that can wait, in a thread or a process of its own (the runner's reports,
        an agent's results). ``on_refused`` hears each refusal; None if ``stop()`` said to give up
        first. The file keeps its first name, so a retry after a write that landed but whose
        sync failed replaces it instead of adding a second one."""
        name = name or unique_name(kind)
        pause = RETRY_FIRST
        while True:
            try:
                return self.put(kind, body, name=name, durable=durable)
            except OSError as exc:
                if not refused(exc):
                    raise
                if on_refused is not None:
                    on_refused(exc)
            if stop():
                return None
            time.sleep(pause)
            pause = min(pause * 2, RETRY_MAX)

    # -- consuming -------------------------------------------------------
    def leftovers(self) -> list[Path]:
        """Files a dead predecessor had claimed: to be processed again, oldest first."""
        with self._open("cur") as cur:
            return [self.cur / n for n in self._valid(cur)]

    def claim_new(self) -> list[Path]:
        """Move every file in ``new/`` into ``cur/`` and return the claimed paths, oldest first."""
        if time.time() - self._swept > SWEEP_EVERY:
            self.sweep_tmp()
        claimed = []
        try:
            new = self._open("new")
        except FileNotFoundError:
            return []
        except UnsafeEntry as exc:
            log.error("spool=%s new/ refused: %s", self.name, exc)
            return []
        with new, self._open("cur") as cur:
            for name in self._valid(new):
                try:
                    new.rename(name, cur)  # the entry moves; a planted link is read (and refused) as one
                except FileNotFoundError:
                    continue  # vanished (another claimer, or the producer withdrew it)
                claimed.append(self.cur / name)
        return claimed

    def unseen(self, seen: set[str]) -> list[Path]:
        """Files in ``new/`` not in ``seen``, oldest first, without claiming them: for a
        consumer that may only read the directory (an agent's read-only ``in/``)."""
        try:
            names = sorted(os.listdir(self.new))
        except FileNotFoundError:
            return []
        return [self.new / n for n in names if n not in seen and _NAME_RE.fullmatch(n)]

    def sweep_tmp(self, now: float | None = None) -> int:
        """Delete what writers that died mid-write left in ``tmp/``.

        As in Maildir, a file in ``tmp/`` is not a message yet: its writer had not
        committed it, and redoes the work after its restart. Host-side files name
        their writer's pid, so one whose writer is gone goes at once; any other goes
        once it is a day old. Entries are removed as entries (a link, never its target).
        """
        now = now or time.time()
        self._swept = now
        removed = 0
        try:
            tmp = self._open("tmp")
        except (FileNotFoundError, UnsafeEntry):
            return 0
        with tmp:
            for name in tmp.names():
                parts = name.split(".")
                try:
                    st = tmp.lstat(name)
                except (FileNotFoundError, UnsafeEntry):
                    continue
                if stat.S_ISDIR(st.st_mode):
                    continue
                age = now - st.st_mtime
                writer_gone = (self.exposed is None and len(parts) > 2 and parts[1].isdigit()
                               and not _alive(int(parts[1])))
                if (writer_gone and age > 1.0) or age > STALE_TMP:
                    if tmp.unlink(name):
                        removed += 1
                        log.info("spool=%s file=%s removed from tmp/: its writer died before committing it",
                                 self.name, name)
        return removed

    def _valid(self, d: Dir) -> list[str]:
        """The names in ``d`` that can be messages; the rest go to ``bad/``."""
        out = []
        for n in d.names():
            if not _NAME_RE.fullmatch(n):  # hidden, odd or hostile names: never a message we wrote
                self._reject_from(d, n, "file name is not a valid spool name")
                continue
            out.append(n)
        return out

    def read(self, path: Path) -> Envelope:
        """Read and validate a claimed file; raise BadMessage with the reason."""
        try:
            with Dir.open(path.parent) as d:
                raw = d.read(path.name, self.max_bytes)
        except UnsafeEntry as exc:
            raise BadMessage(exc.strerror or str(exc)) from exc
        except OSError as exc:
            raise BadMessage(f"cannot open: {exc.strerror}") from exc
        kind, message = parse(raw)
        return Envelope(kind, msgspec.to_builtins(message), path, message)

    def done(self, path: Path) -> None:
        """The message's effects are durable: forget it."""
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass

    def reject(self, path: Path, reason: str) -> Path | None:
        """Move a claimed file aside into ``bad/`` and record why; log it loudly."""
        with Dir.open(path.parent) as d:
            return self._reject_from(d, path.name, reason)

    def _reject_from(self, d: Dir, name: str, reason: str) -> Path | None:
        safe = re.sub(r"[^0-9A-Za-z._-]", "_", name).lstrip(".") or "unnamed"
        with self._open("bad", create=True) as bad:
            dest = safe
            if bad.exists(dest) or bad.exists(dest + ".reason"):
                dest = f"{safe}.{unique_name()}"
            try:
                d.rename(name, bad, dest)
            except FileNotFoundError:
                return None
            except OSError as exc:  # e.g. a directory we cannot move: remove rather than loop on it
                log.error("spool=%s file=%r cannot move to bad/: %s", self.name, name, exc)
                return None
            try:
                bad.write(dest + ".reason", (reason + "\n").encode())  # never read half-written
            except OSError as exc:  # a full disk: the file is aside all the same, the reason is logged
                if not refused(exc):
                    raise
                log.error("spool=%s file=%r: no .reason written beside it in bad/: %s", self.name, name, exc)
        log.warning("spool=%s file=%r rejected to bad/: %s", self.name, name, reason)
        return self.bad / dest

    def take(self, paths: list[Path]) -> list[Envelope]:
        """Read claimed paths, moving the unreadable ones to ``bad/``."""
        out = []
        for p in paths:
            try:
                out.append(self.read(p))
            except BadMessage as exc:
                self.reject(p, str(exc))
        return out
