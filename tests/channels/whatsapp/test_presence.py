"""The typing indicator while an agent works (presence.py), as the queue asks for it."""

from __future__ import annotations



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
