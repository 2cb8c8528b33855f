"""Logging set-up: one line per event, fit for the journal.

Events name their subject as ``key=value`` pairs (``group=family job=12``).
Under systemd those pairs also become journal fields (``GROUP=family``,
``JOB=12``), written with journald's native protocol, so
``journalctl -u nanoclaw-queue GROUP=family`` finds a group's events and
``journalctl -g 'group=family'`` works as well. Elsewhere lines go to stderr
with a timestamp. Message bodies are never logged at INFO.
"""

from __future__ import annotations

import logging
import os
import re
import socket
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}
JOURNAL_SOCKET = "/run/systemd/journal/socket"
# The subjects our log lines name; each becomes an upper-case journal field.
FIELDS = ("group", "agent", "job", "chat", "msg", "message", "task", "outbox", "run", "container",
          # the egress proxy's line per connection
          "host", "port", "bytes_in", "bytes_out", "verdict", "rule",
          # the API relay's line per call (usage and its estimated cost)
          "model", "tokens_in", "tokens_out", "cost_usd")
# MESSAGE is the journal's text itself: a message row id goes elsewhere.
_RENAMED = {"message": "MESSAGE_ROW"}
_PAIR = re.compile(r"\b(" + "|".join(FIELDS) + r")=([^\s,;]+)")


def journal_fields(text: str) -> dict[str, str]:
    """The ``key=value`` subjects of a log line, as journal fields (first occurrence wins)."""
    out: dict[str, str] = {}
    for key, value in _PAIR.findall(text):
        out.setdefault(_RENAMED.get(key, key.upper()), value)
    return out


class JournalHandler(logging.Handler):
    """Sends each record to journald as one datagram of ``FIELD=value`` lines."""

    def __init__(self, identifier: str, path: str = JOURNAL_SOCKET) -> None:
        super().__init__()
        self.identifier = identifier
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.fallback = logging.StreamHandler(sys.stderr)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record).replace("\n", " | ")
            fields = {**journal_fields(record.getMessage()),  # first, so they cannot replace these:
                      "MESSAGE": text, "PRIORITY": str(_PRIORITY.get(record.levelno, 6)),
                      "SYSLOG_IDENTIFIER": self.identifier, "LOGGER": record.name}
            data = "".join(f"{k}={v}\n" for k, v in fields.items() if "\n" not in v).encode()
            self.sock.sendto(data, self.path)
        except OSError:
            # journald away or the datagram too big: the line still goes somewhere.
            self.fallback.emit(record)
        except Exception:  # noqa: BLE001 - logging must never take a daemon down
            self.handleError(record)


def setup(component: str) -> None:
    """Configure the root logger for a daemon or the CLI."""
    # A daemon's events go to the journal; a command's own output says what it did, so its
    # log shows only what went wrong (NANOCLAW_LOG_LEVEL=INFO shows the rest).
    level = os.environ.get("NANOCLAW_LOG_LEVEL", "WARNING" if component == "cli" else "INFO").upper()
    handler: logging.Handler
    if os.environ.get("JOURNAL_STREAM") and os.path.exists(JOURNAL_SOCKET):
        handler = JournalHandler(f"nanoclaw-{component}")
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # urllib3 (under the podman bindings) is chatty at INFO about every connection
    logging.getLogger("urllib3").setLevel(logging.WARNING)
