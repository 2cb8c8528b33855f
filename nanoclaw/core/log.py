"""Logging set-up: one line per event, fit for the journal.

An event names its subjects explicitly, never inside its text::

    log.info("container exited code=%s", code, extra=log_fields(group=folder, job=job_id))

``log_fields()`` cleans each value once, where it is made (nothing but letters,
digits and ``._:@/+-`` survives, cut at 200 characters), and the handler sends
them as journal fields (``GROUP=family``, ``JOB=12``) beside the text, so
``journalctl -u nanoclaw-queue GROUP=family`` finds a group's events. The text
shows them first (``group=family job=12 container exited code=0``) for people
and ``journalctl -g``, but nothing is ever parsed back out of text: a line's
text may carry an agent's words (a host it asked for, its error output), and
those must never become a field.

Under systemd lines go to journald over its native protocol; elsewhere to
stderr with a timestamp; with ``NANOCLAW_JOURNAL_SOCKET`` set, also to that
datagram socket in the native protocol (the tests read the fields there
exactly as journald would get them). Message bodies are never logged at INFO.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import struct
import sys
from typing import Any

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# The subjects our log lines may name; each becomes an upper-case journal field.
FIELDS = frozenset((
    "group", "agent", "job", "chat", "msg", "message", "task", "outbox", "run", "container", "request",
    # the egress proxy's line per connection
    "host", "port", "bytes_in", "bytes_out", "verdict", "rule",
    # the API relay's line per call (usage and its estimated cost)
    "model", "tokens_in", "tokens_out", "cost_usd",
))
# MESSAGE is the journal's text itself: a message row id goes elsewhere.
_RENAMED = {"message": "MESSAGE_ROW"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._:@/+-]")
MAX_VALUE = 200
_EXTRA_KEY = "nanoclaw_fields"


def clean(value: Any) -> str:
    """A field value as it may appear in a journal field and a log line: no space, '=',
    newline or other character that could start a field of its own."""
    return _UNSAFE.sub("_", str(value))[:MAX_VALUE]


def log_fields(**subjects: Any) -> dict[str, dict[str, str]]:
    """A log call's ``extra=``: its subjects as journal fields. ``None`` and "" are left out;
    a name not in :data:`FIELDS` is a programming error."""
    unknown = set(subjects) - FIELDS
    if unknown:
        raise ValueError(f"not a log field: {', '.join(sorted(unknown))}")
    return {_EXTRA_KEY: {k: clean(v) for k, v in subjects.items() if v is not None and v != ""}}


def subjects_of(record: logging.LogRecord) -> dict[str, str]:
    """The subjects a record was given through :func:`log_fields` (lower-case names)."""
    return getattr(record, _EXTRA_KEY, None) or {}


def journal_fields(record: logging.LogRecord) -> dict[str, str]:
    """A record's subjects as journal field names and values."""
    return {_RENAMED.get(k, k.upper()): v for k, v in subjects_of(record).items()}


class LineFormatter(logging.Formatter):
    """The text of a line: its subjects first (``group=family job=12``), then the message,
    on one line (a newline in agent text must not look like a line of ours)."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        subjects = subjects_of(record)
        if subjects:
            record.message = " ".join(f"{k}={v}" for k, v in subjects.items()) + " " + record.message
        record.message = record.message.replace("\r", " ").replace("\n", " | ")
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def _field(name: str, value: str) -> bytes:
    """One field in journald's native protocol; a value with a newline goes length-prefixed."""
    data = value.encode(errors="replace")
    if b"\n" not in data:
        return name.encode() + b"=" + data + b"\n"
    return name.encode() + b"\n" + struct.pack("<Q", len(data)) + data + b"\n"


class JournalHandler(logging.Handler):
    """Sends each record to journald as one datagram: MESSAGE, the priority, and the fields
    the call passed explicitly (never any read out of the text)."""

    def __init__(self, identifier: str, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
            items = {**journal_fields(record),  # first, so they cannot replace these:
                     "MESSAGE": text, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                     "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name}
            self.sock.sendto(b"".join(_field(k, v) for k, v in items.items()), self.path)
        except OSError:
            # journald away or the datagram too big: the line still goes somewhere.
            self.fallback.emit(record)
        except Exception:  # noqa: BLE001 - logging must never take a daemon down
            self.handleError(record)


def parse_datagram(data: bytes) -> dict[str, str]:
    """A native-protocol datagram read back into its fields, as journald reads it (tests, and
    a check that what we send is what we meant)."""
    out: dict[str, str] = {}
    i = 0
    while i < len(data):
        nl = data.index(b"\n", i)
        line = data[i:nl]
        if b"=" in line:
            key, _, value = line.partition(b"=")
            i = nl + 1
        else:
            key = line
            (size,) = struct.unpack_from("<Q", data, nl + 1)
            value = data[nl + 9:nl + 9 + size]
            i = nl + 9 + size + 1
        out[key.decode()] = value.decode(errors="replace")
    return out


def setup(component: str) -> None:
    """Configure the root logger for a daemon or the CLI."""
    # A daemon's events go to the journal; a command's own output says what it did, so its
    # log shows only what went wrong (NANOCLAW_LOG_LEVEL=INFO shows the rest).
    level = os.environ.get("NANOCLAW_LOG_LEVEL", "WARNING" if component == "cli" else "INFO").upper()
    handlers: list[logging.Handler] = []
    if os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
        handlers.append(JournalHandler(f"nanoclaw-{component}"))
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
        if os.environ.get("NANOCLAW_JOURNAL_SOCKET"):  # the tests' journald: stderr as well
            handlers.append(JournalHandler(f"nanoclaw-{component}", path=os.environ["NANOCLAW_JOURNAL_SOCKET"]))
    for handler in handlers:
        handler.setFormatter(LineFormatter("%(name)s: %(message)s" if isinstance(handler, JournalHandler)
                                           else "%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=handlers, force=True)
    # urllib3 (under the podman bindings) is chatty at INFO about every connection
    logging.getLogger("urllib3").setLevel(logging.WARNING)
