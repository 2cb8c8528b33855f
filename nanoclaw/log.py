"""Logging set-up: one line per event, fit for the journal.

Under systemd (``JOURNAL_STREAM`` is set) each line starts with a ``<N>``
syslog priority that journald turns into the entry's PRIORITY, and carries no
timestamp of its own. Events name their subject as ``key=value`` pairs
(``group=family job=12``) so ``journalctl -u nanoclaw-queue -g 'group=family'``
finds them.
"""

from __future__ import annotations

import logging
import os
import sys

_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


class JournalFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record).replace("\n", " | ")
        return f"<{_PRIORITY.get(record.levelno, 6)}>{text}"


def setup(component: str) -> None:
    """Configure the root logger for a daemon or the CLI."""
    level = os.environ.get("NANOCLAW_LOG_LEVEL", "INFO").upper()
    handler = logging.StreamHandler(sys.stderr)
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)
    # urllib3 (under the podman bindings) is chatty at INFO about every connection
    logging.getLogger("urllib3").setLevel(logging.WARNING)
