"""The one way nanoclaw processes talk: spool directories and socket nudges.

Spools (core/spool.py) carry every message that matters: a file in ``new/`` is
durable the moment it lands, and each is one typed message (core/messages.py)
checked once where it is read. This module gathers their names for the daemons
and adds the sockets.

Because a spool file is durable the moment it lands, a wake-up can be lossy:
producers send a one-line JSON ``{"op": "nudge"}`` to the consumer's Unix
socket so it reacts at once, and consumers also watch ``new/`` with inotify
and rescan on a slow timer in case both are missed. Other socket requests
(status, a terminal's lines, deliveries) are one JSON object per line with an
``op``, answered by one line with ``ok``.
"""

from __future__ import annotations

import json
import os
import socket
import time
from collections import deque
from pathlib import Path
from typing import Any

# What the daemons import from here, defined beside the job it belongs to.
try:
    from nanoclaw.core import socket_replies
    from nanoclaw.core.messages import (KINDS, STAGE_NAME, VERSION, BadMessage, Envelope,  # noqa: F401
                                        decode, encode, validate)
    from nanoclaw.core.safefs import write_atomic  # noqa: F401
    from nanoclaw.core.spool import (REFUSED, RETRY_FIRST, RETRY_MAX, SWEEP_EVERY, Spool,  # noqa: F401
                                     refused, unique_name)
except ImportError:  # inside an agent image, where these are top-level modules
    from messages import (KINDS, STAGE_NAME, VERSION, BadMessage, Envelope,  # type: ignore[no-redef]  # noqa: F401
                          decode, encode, validate)
    from safefs import write_atomic  # type: ignore[no-redef]  # noqa: F401
    from spool import (REFUSED, RETRY_FIRST, RETRY_MAX, SWEEP_EVERY, Spool,  # type: ignore[no-redef]  # noqa: F401
                       refused, unique_name)
    socket_replies = None  # type: ignore[assignment]  # the agent image asks no daemon's socket

# The scheduler's timer specs (<state>/timers/<prefix><id>.json) and the units the root
# sync makes of them (<prefix><id>.timer): a hand-over in files, like a spool's.
TIMER_PREFIX = "nanoclaw-task-"
MAX_LINE = 256 * 1024  # one socket request or reply, in bytes


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


def _who(sock: Path) -> str:
    """The daemon behind a socket, for an error: ``channel.sock`` -> "channel daemon"."""
    return f"{Path(sock).stem} daemon"


class LineClient:
    """A connection to a daemon's socket: JSON lines out, JSON lines back.

    Replies carry ``ok``; a connection that watches a chat also receives
    pushed lines (``op``) between them, which :meth:`call` skips and
    :meth:`recv` returns. Each line is checked against its struct
    (core/socket_replies.py: a reply by the op of the oldest request it has not
    yet had an answer to, a pushed line by its own op); one that does not fit
    raises ``BadReply`` (a ValueError, as a line that is not JSON) naming op and field.
    """

    def __init__(self, sock: Path, timeout: float | None = 10.0) -> None:
        self.path = sock
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.buf = b""
        self.asked: deque[str] = deque()  # the ops sent and not answered yet, oldest first
        try:
            self.sock.connect(str(sock))
        except OSError:
            self.sock.close()
            raise

    def send(self, obj: dict) -> None:
        if obj.get("op") != "nudge":  # a nudge has no reply
            self.asked.append(obj.get("op"))  # before it is sent: another thread may read the reply
        self.sock.sendall(_line(obj))

    def recv(self) -> dict:
        """The next line, whatever it is, checked."""
        while b"\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
            if len(self.buf) > MAX_LINE:
                raise ConnectionError("reply line too long")
        line, _, self.buf = self.buf.partition(b"\n")
        obj = json.loads(line)
        op = self.asked.popleft() if isinstance(obj, dict) and "ok" in obj and self.asked else None
        return socket_replies.read(op, obj, _who(self.path))

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
            if isinstance(reply, dict) and "ok" in reply:
                return socket_replies.read(obj.get("op"), reply, _who(sock))
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
