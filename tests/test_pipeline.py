"""End to end through the five daemons, with the agent in real Podman containers."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.podman


def test_message_travels_the_whole_pipeline(system):
    w = system.watch("main")
    system.send("main", "hello there")
    assert w.reply(60) == "echo: hello there"
    # the reply is recorded as a bot message and the outbox row is marked sent
    assert system.wait_replies("main@term", 1) == ["echo: hello there"]
    with system.db() as con:
        rows = con.execute("select status from outbox").fetchall()
        cursor = con.execute("select last_message_id from cursor").fetchone()[0]
        msg = con.execute("select max(id) from message where is_bot=0").fetchone()[0]
    assert [r[0] for r in rows] == ["sent"]
    assert cursor == msg
