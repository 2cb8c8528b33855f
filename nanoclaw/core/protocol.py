"""The one way nanoclaw processes talk: spool directories and socket nudges.

Spools have Maildir semantics. A producer writes ``tmp/NAME``, fsyncs it and
renames it into ``new/`` (then fsyncs the directory), so a consumer never sees
half a file and a file in ``new/`` survives a crash. The consumer claims a
file by renaming it into ``cur/`` and deletes it once its effects are durable;
whatever is still in ``cur/`` when a consumer starts was claimed by a
predecessor that died, and is processed again. Consumers therefore make their
effects idempotent (unique keys), which turns "at least once" into "exactly
once" where it matters.

Files are versioned JSON envelopes ``{"v": 1, "type": ..., "body": {...}}``
checked against :data:`SCHEMAS`. Anything unreadable, oversize, not a regular
file, of an unknown type or missing fields goes to ``bad/`` with a
``.reason`` file beside it; it never crashes a daemon and is never silently
dropped.

Because a spool file is durable the moment it lands, a wake-up can be lossy:
producers send a one-line JSON ``{"op": "nudge"}`` to the consumer's Unix
socket so it reacts at once, and consumers also watch ``new/`` with inotify
and rescan on a slow timer in case both are missed.
"""

from __future__ import annotations

import errno
import itertools
import json
import logging
import os
import re
import socket
import stat
import time
from dataclasses import dataclass
from collections.abc import Callable
from pathlib import Path
from typing import Any

try:
    from nanoclaw.core.safefs import Dir, UnsafeEntry, write_atomic  # noqa: F401  (write_atomic: re-exported)
except ImportError:  # inside an agent image, where both are top-level modules
    from safefs import Dir, UnsafeEntry, write_atomic  # type: ignore[no-redef]  # noqa: F401

VERSION = 1
# The scheduler's timer specs (<state>/timers/<prefix><id>.json) and the units the root
# sync makes of them (<prefix><id>.timer): a hand-over in files, like a spool's.
TIMER_PREFIX = "nanoclaw-task-"
MAX_LINE = 256 * 1024  # one socket request or reply, in bytes
_NAME_RE = re.compile(r"[0-9A-Za-z][0-9A-Za-z._-]{0,200}")  # whole names: fullmatch
# A stage name in a turn's clock readings (an agent's, through ipc to the queue's log line):
# plain words only, so no space or "=" can forge a log line or a journal field.
STAGE_NAME = re.compile(r"[a-z_]{1,20}")
_counter = itertools.count()
log = logging.getLogger("nanoclaw.protocol")
# The disk refusing a write: full (ENOSPC, EDQUOT), failing (EIO) or read-only (EROFS). What was
# to be written is kept and written again once the disk takes it (Spool.put_until_written, and
# the daemons' kept writes in core/faults.py); a refusal is never a reason to drop anything.
REFUSED = frozenset((errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS))
RETRY_FIRST, RETRY_MAX = 0.5, 5.0  # seconds between tries of a refused write: doubling, capped


def refused(exc: BaseException) -> bool:
    """Whether ``exc`` is the disk refusing a write (as opposed to a bug or a bad entry)."""
    return isinstance(exc, OSError) and exc.errno in REFUSED

_OPT = object()  # marks an optional field in SCHEMAS
Schema = dict[str, tuple]

# Every message type that crosses a process boundary, with its body fields:
# name -> (allowed types..., [_OPT]).
SCHEMAS: dict[str, Schema] = {
    # queue -> runner: start an agent container for a job (a scheduled task's job may carry the
    # task's pre-check: the runner runs it first, and starts the agent only if it says so; and
    # the model the queue chose for it)
    "job": {"job": (int,), "group": (str,), "chat": (str,), "is_main": (bool,),
            "prompt": (str,), "session_id": (str, type(None)), "agent": (str, _OPT), "precheck": (str, _OPT),
            "model": (str, _OPT)},  # the model the queue chose (core/model_choice.py); "" = the CLI's
    # host -> container (ipc/<group>/in): a prompt for one turn, or a request to exit
    "prompt": {"job": (int,), "turn": (int,), "prompt": (str,), "session_id": (str, type(None))},
    "close": {"job": (int,)},
    # queue -> runner: a job's container has been idle its time: pause it (or close it)
    "park": {"job": (int,)},
    # container -> host (ipc/<group>/out): the outcome of one turn
    "result": {"job": (int,), "turn": (int,), "text": (str,), "session_id": (str, type(None), _OPT),
               "error": (str, type(None), _OPT), "usage": (dict, type(None), _OPT)},
    # container -> host: the agent's tools, each only a request the ipc daemon authorises
    "send_message": {"job": (int,), "text": (str,), "chat": (str, type(None), _OPT)},
    "task_request": {"job": (int,), "action": (str,), "task": (dict,)},
    "register_group": {"job": (int,), "jid": (str,), "name": (str,), "folder": (str,), "trigger": (str,)},
    # container -> host, within a team: hand a member a task; the lead's new member
    "delegate": {"job": (int,), "agent": (str,), "task": (str,)},
    "create_agent": {"job": (int,), "name": (str,), "description": (str,), "instructions": (str,),
                     "model": (str, _OPT), "tools": (list, _OPT)},
    # container -> host, the main group's lead only: the owner's new budget for a group (or "all")
    "raise_budget": {"job": (int,), "group": (str,), "period": (str,), "amount": (int, float),
                     "unit": (str, _OPT), "mode": (str, _OPT)},
    # proxy -> queue: a group's call was refused for a spent budget (the queue tells the chat once)
    "budget_spent": {"group": (str,), "agent": (str, _OPT), "key": (str, _OPT)},
    # ipc -> queue: a turn's result from a group's container (group taken from the directory)
    "turn_result": {"group": (str,), "agent": (str, _OPT), "job": (int,), "turn": (int,), "text": (str,),
                    "session_id": (str, type(None)), "error": (str, type(None))},
    # runner -> queue: a job's container started or ended, or its pre-check skipped it (``reason``);
    # ``stopped``: ended because `nanoclaw run-all` stopped (not the agent's failure)
    "job_event": {"job": (int,), "event": (str,), "exit_code": (int, type(None), _OPT),
                  "error": (str, _OPT), "container": (str, _OPT), "reason": (str, _OPT), "stopped": (bool, _OPT)},
    # a timer (nanoclaw tasks fire) -> queue: run a scheduled task now
    # due_at absent: a timer's light fire (admin/fire.py); the queue sets it and the next run
    "task_fire": {"task": (int,), "fired_at": (float,), "due_at": (float, type(None), _OPT),
                  # the firing process's start, and Python's (the timer's and systemd's shares of lateness)
                  "started_at": (float, _OPT), "python_at": (float, _OPT)},
    # anyone -> router: text for a chat; ``key`` makes it idempotent. ``sender`` is the name
    # it goes out under (default: the assistant's); ``reply_to`` the message row it answers.
    "outbound": {"key": (str,), "chat": (str,), "text": (str,), "kind": (str,), "sender": (str, _OPT),
                 "reply_to": (int, _OPT)},
}


class BadMessage(Exception):
    """A spool file or socket line that cannot be accepted; the text is the reason."""


@dataclass(frozen=True)
class Envelope:
    type: str
    body: dict[str, Any]
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.path.name if self.path else ""


def validate(obj: Any) -> tuple[str, dict]:
    """Check a decoded envelope; return (type, body) or raise BadMessage."""
    if not isinstance(obj, dict):
        raise BadMessage("not a JSON object")
    if obj.get("v") != VERSION:
        raise BadMessage(f"unsupported version {obj.get('v')!r} (expected {VERSION})")
    kind = obj.get("type")
    if kind not in SCHEMAS:
        raise BadMessage(f"unknown type {kind!r}")
    body = obj.get("body")
    if not isinstance(body, dict):
        raise BadMessage("body is not an object")
    for field, spec in SCHEMAS[kind].items():
        optional = _OPT in spec
        types = tuple(t for t in spec if t is not _OPT)
        if field not in body:
            if optional:
                continue
            raise BadMessage(f"{kind}: missing field {field!r}")
        value = body[field]
        # bool is an int subclass; never let True pass as a job id
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise BadMessage(f"{kind}: field {field!r} has the wrong type")
    return kind, body


def decode(raw: bytes) -> tuple[str, dict]:
    """Parse and check a spool file's bytes; (type, body) or BadMessage with the reason."""
    try:
        obj = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadMessage(f"not JSON: {exc}") from exc
    return validate(obj)


def encode(kind: str, body: dict) -> bytes:
    """Serialise a message, checking it against its schema first."""
    obj = {"v": VERSION, "type": kind, "body": body}
    validate(obj)
    return json.dumps(obj, ensure_ascii=False).encode() + b"\n"


def unique_name(tag: str = "") -> str:
    """A spool file name that sorts by creation time and never collides."""
    suffix = f".{tag}" if tag else ""
    return f"{time.time_ns():020d}.{os.getpid()}.{next(_counter)}{suffix}"


SWEEP_EVERY = 30.0  # seconds between looks into tmp/ for dead writers' leftovers
STALE_TMP = 86400.0


def process_started() -> float | None:
    """When this process began, wall clock: its start in clock ticks since boot, against the
    boot clock now. For the clock readings a hand-over carries (where did the time go before
    this process could act?); None where /proc cannot say."""
    try:
        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        return time.time() - (time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return None


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
    def put(self, kind: str, body: dict, *, name: str | None = None, durable: bool = True) -> Path:
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

    def put_until_written(self, kind: str, body: dict, *, name: str | None = None, durable: bool = True,
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
        kind, body = decode(raw)
        return Envelope(kind, body, path)

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


# -- sockets ------------------------------------------------------------------

def nudge(sock: Path, **extra: Any) -> bool:
    """Wake the daemon listening on ``sock``; best effort (the spool is the truth)."""
    return tell(sock, "nudge", **extra)


def tell(sock: Path, op: str, **fields: Any) -> bool:
    """Send one request line without waiting for a reply; best effort, never blocks long."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            s.connect(str(sock))
            s.sendall(_line({"op": op, **fields}))
        return True
    except OSError:
        return False


def _line(obj: dict) -> bytes:
    return json.dumps({"v": VERSION, **obj}, ensure_ascii=False).encode() + b"\n"


class LineClient:
    """A connection to a daemon's socket: JSON lines out, JSON lines back.

    Replies carry ``ok``; a connection that watches a chat also receives
    pushed lines (``op``) between them, which :meth:`call` skips and
    :meth:`recv` returns.
    """

    def __init__(self, sock: Path, timeout: float | None = 10.0) -> None:
        self.path = sock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = b""
        try:
            self.sock.connect(str(sock))
        except OSError:
            self.sock.close()
            raise

    def send(self, obj: dict) -> None:
        self.sock.sendall(_line(obj))

    def recv(self) -> dict:
        """The next line, whatever it is."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                raise ConnectionError("reply line too long")
        line, _, self.buf = self.buf.partition(b"\n")
        return json.loads(line)

    def call(self, obj: dict) -> dict:
        """Send a request and return its reply, skipping pushed lines."""
        self.send(obj)
        while "ok" not in (reply := self.recv()):
            pass
        return reply

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> "LineClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def request(sock: Path, obj: dict, timeout: float = 10.0) -> dict:
    """Send one JSON request line and return the JSON reply."""
    with LineClient(sock, timeout) as client:
        return client.call(obj)


async def arequest(sock: Path, obj: dict, timeout: float = 10.0, connect_timeout: float = 5.0) -> dict:
    """:func:`request` for a daemon's event loop (the router's deliveries)."""
    import asyncio
    reader, writer = await asyncio.wait_for(asyncio.open_unix_connection(str(sock), limit=MAX_LINE),
                                            connect_timeout)
    try:
        writer.write(_line(obj))
        await writer.drain()
        while True:
            line = await asyncio.wait_for(reader.readline(), timeout)
            if not line:
                raise ConnectionError("the daemon closed the connection")
            reply = json.loads(line)
            if "ok" in reply:
                return reply
    finally:
        writer.close()


def parse_line(line: bytes) -> dict:
    """Decode one request line from a client; raise BadMessage with the reason."""
    try:
        obj = json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise BadMessage("not JSON") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise BadMessage("expected an object with an 'op'")
    if obj.get("v", VERSION) != VERSION:
        raise BadMessage(f"unsupported version {obj.get('v')!r}")
    return obj
