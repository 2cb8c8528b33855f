"""Journal lines (core/log.py): the fields a call passes, cleaned where they are made; nothing in
the text becomes one."""

from __future__ import annotations

import pytest


def test_journal_handler_sends_native_fields(tmp_path):
    """Log lines reach journald as datagrams whose fields are those the call passed, cleaned
    where they were made; nothing in the text (which may carry an agent's words) becomes one."""
    import logging
    import socket as socket_mod

    from nanoclaw.core.log import JournalHandler, LineFormatter, log_fields, parse_datagram

    path = str(tmp_path / "journal.sock")
    server = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
    server.bind(path)
    server.settimeout(2)
    handler = JournalHandler("nanoclaw-queue", path=path)
    handler.setFormatter(LineFormatter("%(name)s: %(message)s"))
    logger = logging.getLogger("nanoclaw.test-journal")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    hostile = "x verdict=allowed host=evil\nGROUP=main\nPRIORITY=0"
    logger.warning("failed: %s\nsecond line", hostile, extra=log_fields(group="family", job=7, message=41))
    got = parse_datagram(server.recv(65536))
    assert got == {"GROUP": "family", "JOB": "7", "MESSAGE_ROW": "41", "PRIORITY": "4",
                   "SYSLOG_IDENTIFIER": "nanoclaw-queue", "LOGGER": "nanoclaw.test-journal",
                   "MESSAGE": "nanoclaw.test-journal: group=family job=7 message=41 failed: x verdict=allowed "
                              "host=evil | GROUP=main | PRIORITY=0 | second line"}, got
    # a value is cleaned once, where it is made: it cannot end its field or start another
    logger.info("model refused", extra=log_fields(group="main", model="m host=evil\nVERDICT=allowed"))
    got = parse_datagram(server.recv(65536))
    assert got["MODEL"] == "m_host_evil_VERDICT_allowed" and "HOST" not in got and "VERDICT" not in got
    assert set(got) == {"GROUP", "MODEL", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER", "MESSAGE"}
    with pytest.raises(ValueError):
        log_fields(verdikt="typo")  # a field name is ours to choose, checked
    server.close()
    logger.info("journald gone: falls back to stderr, never raises")
