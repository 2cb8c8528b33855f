"""Status reactions and "typing…" while a turn runs (reactions.py, the backend's progress), as the
queue's ``progress`` lines reach the channel's socket, with neonize's real protobufs."""

from __future__ import annotations

import asyncio
import time

from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from whatsapp_harness import ALICE, FAMILY, OWNER, jid, message_ev, run, wait_until
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture

SEQ = iter(range(1, 1 << 30))


async def say(h, chat: str, state: str, row: int | None, *, job: int = 1, turn: int = 0, tool: str = "") -> dict:
    """The queue's line, as the channel's socket answers it."""
    return await h.daemon.handle({"op": "progress", "chat": chat, "state": state, "seq": next(SEQ) + time.time_ns(),
                                  "job": job, "turn": turn, "message": row, "who": "Andy", "since": 0.0,
                                  "tool": tool, "detail": ""}, None)


def reactions(h) -> list:
    """Every reaction sent, parsed back from its bytes as WhatsApp would receive it."""
    got = []
    for m in h.client.messages:
        parsed = WAMessage.FromString(m.SerializeToString())
        if parsed.HasField("reactionMessage"):
            r = parsed.reactionMessage
            got.append((r.key.remoteJID, r.key.ID, r.key.participant, r.key.fromMe, r.text))
    return got


def presence(h) -> list[str]:
    return [c[2] for c in h.client.calls if c[0] == "presence"]


async def family_message(h, msg_id: str, text: str = "@Andy look this up") -> int:
    await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), msg_id, text))
    await wait_until(lambda: h.rows(h.family.jid, channel_id=msg_id))
    return h.rows(h.family.jid, channel_id=msg_id)[0].id


def test_reaction_follows_the_turn_and_goes_when_the_reply_is_sent(harness):
    async def go():
        h = await harness().start()
        h.wa.reactions.min_interval = 0.05
        row = await family_message(h, "MSG1")
        alice = f"{ALICE}@s.whatsapp.net"
        seen = []
        for state, tool in (("accepted", ""), ("working", ""), ("tool", "Bash"), ("working", ""),
                            ("tool", "WebFetch"), ("tool", "mcp__nanoclaw__delegate")):
            assert (await say(h, h.family.jid, state, row, tool=tool))["ok"]
            await wait_until(lambda n=len(seen): len(reactions(h)) > n)
            seen = reactions(h)
        assert (await say(h, h.family.jid, "replied", row))["ok"]
        await asyncio.sleep(0.3)
        before_reply = reactions(h)
        assert (await h.deliver({"chat": h.family.jid, "text": "here it is", "outbox_id": 1}))["ok"]
        await wait_until(lambda: len(reactions(h)) > len(before_reply))
        await asyncio.sleep(0.2)
        got = reactions(h)
        await h.close()
        return got, before_reply, alice
    got, before_reply, alice = run(go())
    key = (f"{FAMILY}@g.us", "MSG1", alice, False)  # keyed to Alice's message in the group
    assert got == [(*key, e) for e in ("👀", "🤔", "💻", "🤔", "🌐", "👥", "")]
    assert before_reply == got[:-1]  # "replied" takes nothing back until the reply is out


def test_burst_marks_the_newest_message_and_the_owners_own_is_from_me(harness):
    async def go():
        h = await harness().start()
        h.wa.reactions.min_interval = 0.05
        await family_message(h, "B1", "@Andy first")
        newest = await family_message(h, "B2", "@Andy and second")
        await say(h, h.family.jid, "accepted", newest)
        await h.fire(message_ev(jid(OWNER), jid(OWNER), "SELF1", "hello", from_me=True))
        await wait_until(lambda: h.rows(h.main.jid, channel_id="SELF1"))
        await say(h, h.main.jid, "accepted", h.rows(h.main.jid, channel_id="SELF1")[0].id, job=2)
        await wait_until(lambda: len(reactions(h)) == 2)
        got = reactions(h)
        await h.close()
        return got
    got = run(go())
    assert got == [(f"{FAMILY}@g.us", "B2", f"{ALICE}@s.whatsapp.net", False, "👀"),
                   (f"{OWNER}@s.whatsapp.net", "SELF1", "", True, "👀")]


def test_changes_are_rate_limited_and_coalesced(harness):
    async def go():
        h = await harness().start()
        h.wa.reactions.min_interval = 0.6
        row = await family_message(h, "R1")
        sent_at = []
        h.client.on_send = lambda to, m: asyncio.sleep(0, sent_at.append(time.monotonic()))
        await say(h, h.family.jid, "accepted", row)
        await wait_until(lambda: len(reactions(h)) == 1)
        for state, tool in (("working", ""), ("tool", "Read"), ("tool", "Bash")):  # within the interval
            await say(h, h.family.jid, state, row, tool=tool)
        await wait_until(lambda: len(reactions(h)) == 2, 3)
        await asyncio.sleep(0.8)  # nothing more comes: the in-between states were coalesced
        got = reactions(h)
        await h.close()
        return got, sent_at
    got, sent_at = run(go())
    assert [r[-1] for r in got] == ["👀", "💻"]
    assert sent_at[1] - sent_at[0] >= 0.55


def test_no_reaction_for_other_chats_rows_our_own_messages_or_when_turned_off(harness):
    async def go():
        h = await harness(store_unregistered=True).start()
        h.wa.reactions.min_interval = 0.05
        # a chat the assistant does not answer: its message is stored, never a turn's
        await h.fire(message_ev(jid("120363000000000099", "g.us"), jid(ALICE), "OTHER", "hi all"))
        await wait_until(lambda: h.rows(channel_id="OTHER"))
        other = h.rows(channel_id="OTHER")[0]
        await say(h, h.family.jid, "accepted", other.id)  # named for the family chat: refused
        await say(h, other.chat, "accepted", None)  # no message: nothing to mark
        await h.deliver({"chat": h.family.jid, "text": "ours", "outbox_id": 3})
        ours = h.rows(h.family.jid, is_bot=True)[0]
        await say(h, h.family.jid, "accepted", ours.id)
        none_yet = reactions(h)
        await h.close()

        off = await harness(status_reactions=False).start()
        row = await family_message(off, "OFF1")
        await say(off, off.family.jid, "accepted", row)
        await say(off, off.family.jid, "working", row)
        await off.settle()
        off_reactions, off_presence = reactions(off), presence(off)
        await off.close()
        return none_yet, off_reactions, off_presence
    none_yet, off_reactions, off_presence = run(go())
    assert none_yet == []
    assert off_reactions == []
    assert off_presence == ["CHAT_PRESENCE_COMPOSING"]  # "typing…" is not a reaction: still shown


def test_typing_only_while_a_turn_runs_and_gone_at_once_for_a_silent_one(harness):
    async def go():
        h = await harness().start()
        row = await family_message(h, "T1")
        chat = h.family.jid
        await say(h, chat, "accepted", row)  # waiting for its container: no "typing…"
        await h.settle()
        accepted = presence(h)
        await say(h, chat, "working", row)
        await h.settle()
        await say(h, chat, "tool", row, tool="Bash")  # still the same "typing…", not said again
        await h.settle()
        working = presence(h)
        await say(h, chat, "silent", row)
        await h.settle()
        silent = presence(h)
        # a turn that waits (its container ended: a retry, a budget) stops it too
        await say(h, chat, "working", row, job=2)
        await h.settle()
        await say(h, chat, "waiting", row, job=2)
        await h.settle()
        waiting = presence(h)
        # a second turn still running keeps it while the first ends
        await say(h, chat, "working", row, job=3, turn=0)
        await h.settle()
        await say(h, chat, "working", row, job=3, turn=1)
        await say(h, chat, "replied", row, job=3, turn=0)
        await h.settle()
        two = presence(h)
        await h.close()
        return accepted, working, silent, waiting, two
    accepted, working, silent, waiting, two = run(go())
    on, off = "CHAT_PRESENCE_COMPOSING", "CHAT_PRESENCE_PAUSED"
    assert accepted == []
    assert working == [on]
    assert silent == [on, off]
    assert waiting == [on, off, on, off]
    assert two == [on, off, on, off, on]


def test_a_line_that_overtook_a_newer_one_is_dropped(harness):
    async def go():
        h = await harness().start()
        h.wa.reactions.min_interval = 0.05
        row = await family_message(h, "O1")
        base = time.time_ns()
        line = {"op": "progress", "chat": h.family.jid, "job": 1, "turn": 0, "message": row}
        await h.daemon.handle({**line, "state": "working", "seq": base + 2}, None)
        await h.daemon.handle({**line, "state": "accepted", "seq": base + 1}, None)  # older: ignored
        bad = await h.daemon.handle({**line, "state": "exploded", "seq": base + 3}, None)
        await asyncio.sleep(0.3)
        got = reactions(h)
        await h.close()
        return got, bad
    got, bad = run(go())
    assert [r[-1] for r in got] == ["🤔"]
    assert not bad["ok"]
