"""Replies out to WhatsApp (outbound.py): chunks, resumes, quotes, labels, and our own echoes."""

from __future__ import annotations

from nanoclaw.core.prompt import needs_agent

from whatsapp_harness import ALICE, OWNER, jid, message_ev, run
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture


def test_our_own_replies_echo_back_but_are_never_new_messages(harness):
    async def go():
        h = await harness(max_message_chars=60).start()
        chat = h.main.jid
        echoes: list = []

        async def echo_before_return(to, message):
            # the echo overtakes send_message's return: only the in-flight record knows it
            ev = message_ev(jid(OWNER), jid(OWNER, device=0), f"EARLY{len(echoes)}", message.conversation,
                            from_me=True)
            echoes.append(ev)
            await h.fire(ev)
        h.client.on_send = echo_before_return
        reply = await h.deliver({"chat": chat, "text": "**Done.**\n\n" + "word " * 20, "outbox_id": 7})
        h.client.on_send = None
        sent = [c for c in h.client.calls if c[0] == "send"]
        # and the echoes that arrive afterwards, with WhatsApp's ids for our sends
        for n in range(1, len(sent) + 1):
            await h.fire(message_ev(jid(OWNER), jid(OWNER), f"3EB0{n:016X}", sent[n - 1][2], from_me=True))
        # a restarted channel still knows the ids (kept on disk)
        await h.close()
        h2 = await h.start()
        await h2.fire(message_ev(jid(OWNER), jid(OWNER), f"3EB0{3:016X}", sent[2][2], from_me=True))
        rows = h.rows(chat)
        await h2.close()
        return reply, sent, rows
    reply, sent, rows = run(go())
    assert reply["ok"] and reply["channel_id"] == f"3EB0{1:016X}"
    assert len(sent) == 3 and sent[0][2] == "*Done.*"  # markdown converted, split at the limit
    assert [(r.is_bot, r.channel_id) for r in rows] == [(True, f"3EB0{1:016X}")]
    assert not needs_agent(rows, requires_trigger=False, trigger="@Andy", allowed=None)


def test_a_resend_resumes_after_the_chunks_already_sent(harness):
    async def go():
        h = await harness(max_message_chars=40).start()
        text = "\n\n".join(f"part {i} " + "x" * 20 for i in range(3))
        h.client.fail_send_at = 2
        first = await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 9})
        h.client.fail_send_at = None
        second = await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 9})
        third = await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 9})
        sent = [c[2] for c in h.client.calls if c[0] == "send"]
        await h.close()
        return first, second, third, sent
    first, second, third, sent = run(go())
    assert not first["ok"] and "part 2 of 3" in first["error"]
    assert second["ok"] and third["ok"] and third["channel_id"] == second["channel_id"]
    assert sent == [f"part {i} " + "x" * 20 for i in range(3)]  # each chunk once, in order


def test_sending_while_disconnected_fails_for_the_router_to_retry(harness):
    async def go():
        h = await harness().start(connected=False)
        reply = await h.deliver({"chat": h.main.jid, "text": "hi", "outbox_id": 1})
        await h.close()
        return reply, h.rows()
    reply, rows = run(go())
    assert not reply["ok"] and "not connected" in reply["error"] and rows == []


def test_a_resend_after_a_channel_restart_is_recognised_by_its_outbox_row(harness):
    """WhatsApp picks its own ids; the channel matches a repeated deliver by the outbox row,
    so a lost confirmation followed by a restart (the backend's memory gone) sends nothing twice."""
    async def go():
        h = await harness().start()
        first = await h.deliver({"chat": h.main.jid, "text": "once only", "outbox_id": 21})
        h.daemon.whatsapp().outbound._done.clear()  # what a restart forgets
        again = await h.deliver({"chat": h.main.jid, "text": "once only", "outbox_id": 21})
        sent = [c[2] for c in h.client.calls if c[0] == "send"]
        await h.close()
        return first, again, sent
    first, again, sent = run(go())
    assert first["ok"] and again["ok"] and again.get("already")
    assert again["channel_id"] == first["channel_id"]
    assert sent == ["once only"]


def test_a_reply_quotes_the_message_it_answers_on_its_first_chunk(harness):
    async def go():
        h = await harness(max_message_chars=40).start()
        quote = {"id": "ABCD1234", "sender": f"{ALICE}@s.whatsapp.net", "text": "@Andy what's for dinner?"}
        text = "\n\n".join(f"part {i} " + "x" * 20 for i in range(2))
        reply = await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 5, "quote": quote})
        await h.close()
        return reply, h.client.messages
    reply, messages = run(go())
    assert reply["ok"] and len(messages) == 2
    first = messages[0].extendedTextMessage
    assert first.text == "part 0 " + "x" * 20
    assert first.contextInfo.stanzaID == "ABCD1234"
    assert first.contextInfo.participant == f"{ALICE}@s.whatsapp.net"
    assert first.contextInfo.quotedMessage.conversation == "@Andy what's for dinner?"
    assert messages[1].conversation == "part 1 " + "x" * 20  # later chunks plain


def test_a_reply_that_opens_with_a_code_block_keeps_its_fences(harness):
    """The defect: the router put 'Andy: ' in front before the split, so the opening fence was not
    at a line start: the block was cut with its fence open and the prose after it fenced."""
    code = "```python\n" + "\n".join(f"x{i} = {i}" for i in range(30)) + "\n```"
    text = code + "\n\nThat is the whole script."

    async def go():
        h = await harness(max_message_chars=200).start()
        reply = await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 7, "sender": "Andy"})
        await h.close()
        return reply, [m.conversation for m in h.client.messages]
    reply, sent = run(go())
    assert reply["ok"] and len(sent) >= 2
    assert sent[0].startswith("Andy:\n```python\nx0 = 0")  # the label on its own line, the fence intact
    assert all(len(m) <= 200 for m in sent)
    assert all(m.count("```") == 2 for m in sent)  # every piece of the block opened and closed
    last = sent[-1]
    assert last.endswith("```\n\nThat is the whole script.")  # prose after the block, not inside one
    body = [line for m in sent for line in m.split("\n") if line.startswith("x")]
    assert body == [f"x{i} = {i}" for i in range(30)]


def test_the_label_goes_on_the_first_chunk_only(harness):
    async def go():
        h = await harness(max_message_chars=40).start()
        text = "\n\n".join(f"part {i} " + "y" * 20 for i in range(3))
        await h.deliver({"chat": h.main.jid, "text": text, "outbox_id": 8, "sender": "Andy"})
        await h.close()
        return [m.conversation for m in h.client.messages]
    sent = run(go())
    assert sent[0] == "Andy: part 0 " + "y" * 20 and sent[1] == "part 1 " + "y" * 20
    assert all(len(m) <= 40 for m in sent)


def test_the_router_quotes_only_when_others_spoke_since(tmp_path):
    from nanoclaw.core.models import Group, Job, Message, Outbox, Turn, open_db
    from nanoclaw.daemons.router import quote_for

    open_db(tmp_path / "q.db")
    g = Group.create(jid="123@g.us", name="Family", folder="family", trigger="@Andy")
    asked = Message.create(chat=g.jid, sender="a@s.whatsapp.net", text="@Andy hi", timestamp=1.0,
                           channel_id="M1")
    job = Job.create(group=g)
    Turn.create(job=job, seq=0, first_message_id=asked.id, last_message_id=asked.id)
    row = Outbox.create(key=f"job:{job.id}:turn:0", chat=g.jid, text="hello", reply_to=asked.id)
    assert quote_for(row) is None  # nobody else spoke: a plain reply is clear
    Message.create(chat=g.jid, sender="b@s.whatsapp.net", text="unrelated", timestamp=2.0, channel_id="M2")
    assert quote_for(row) == {"id": "M1", "sender": "a@s.whatsapp.net", "text": "@Andy hi"}
    notice = Outbox.create(key=f"job:{job.id}:failed", chat=g.jid, text="failed", kind="notice",
                           reply_to=asked.id)
    assert quote_for(notice) is None
