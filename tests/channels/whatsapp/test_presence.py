"""The typing indicator while an agent works (presence.py), as the queue asks for it."""

from __future__ import annotations

import json

from nanoclaw.core import config as config_mod

from whatsapp_harness import FAMILY, run
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture


def test_typing_indicator_on_and_off_through_the_socket_op(harness):
    async def go():
        h = await harness().start()
        writer = None
        assert (await h.daemon.handle({"op": "typing", "chat": h.family.jid, "on": True}, writer))["ok"]
        await h.settle()
        assert (await h.daemon.handle({"op": "typing", "chat": h.family.jid, "on": False}, writer))["ok"]
        await h.settle()
        # a terminal chat has no indicator; a bad request is refused, not crashed
        assert (await h.daemon.handle({"op": "typing", "chat": "term@term", "on": True}, writer))["ok"]
        bad = await h.daemon.handle({"op": "typing", "chat": h.family.jid}, writer)
        calls = [c for c in h.client.calls if c[0] == "presence"]
        await h.close()
        return calls, bad
    calls, bad = run(go())
    assert calls == [("presence", f"{FAMILY}@g.us", "CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_MEDIA_TEXT"),
                     ("presence", f"{FAMILY}@g.us", "CHAT_PRESENCE_PAUSED", "CHAT_PRESENCE_MEDIA_TEXT")]
    assert not bad["ok"]


def test_queue_tells_the_channel_when_the_agent_starts_and_stops(tmp_path):
    """The queue's typing notices are fire-and-forget lines on the channel socket."""
    import socket as socket_mod

    from nanoclaw.daemons.queue import QueueDaemon
    cfg = config_mod.Config(state_dir=tmp_path / "s", runtime_dir=tmp_path / "r", config_dir=tmp_path / "c")
    cfg.runtime_dir.mkdir(parents=True)
    server = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_STREAM)
    server.bind(str(cfg.socket("channel")))
    server.listen(5)
    server.settimeout(2)
    q = QueueDaemon(cfg)
    q._typing("x@g.us", True)
    q._typing("x@g.us", False)
    got = []
    for _ in range(2):
        conn, _ = server.accept()
        got.append(json.loads(conn.recv(4096)))
        conn.close()
    server.close()
    assert [(g["op"], g["chat"], g["on"]) for g in got] == [("typing", "x@g.us", True), ("typing", "x@g.us", False)]
    q._typing("x@g.us", True)  # nobody listening: returns at once, no error
