"""WhatsApp messages in (intake.py): the backend fed real neonize events, stored by a real channel daemon."""

from __future__ import annotations

import asyncio
import json
import os
import stat

import pytest
from neonize.aioze.events import DisconnectedEv, ReceiptEv
from neonize.proto.Neonize_pb2 import MessageSource
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    AudioMessage,
    DocumentMessage,
    ExtendedTextMessage,
    ImageMessage,
    VideoMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage

from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Group
from nanoclaw.core.prompt import needs_agent

from whatsapp_harness import (
    ALICE,
    ALICE_LID,
    EMPTY,
    FAMILY,
    OWNER,
    OWNER_LID,
    T0,
    group_info,
    jid,
    message_ev,
    neonize_dispatch,
    run,
    wait_until,
)
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture


def test_group_and_direct_messages_are_stored_once(harness):
    async def go():
        h = await harness().start()
        family = jid(FAMILY, "g.us")
        ev = message_ev(family, jid(ALICE_LID, "lid", device=3), "MSG1", "@Andy what's for dinner?",
                        sender_alt=jid(ALICE))
        await h.fire(ev)
        await h.fire(ev)  # WhatsApp re-delivers after a reconnect: stored once
        # a direct chat (registered), extended text
        h.main.jid  # noqa: B018
        groups_mod.add_group(h.cfg, "alice", jid=f"{ALICE}@s.whatsapp.net")
        await h.fire(message_ev(jid(ALICE), jid(ALICE, device=2), "MSG2",
                                body=WAMessage(extendedTextMessage=ExtendedTextMessage(text="hi, with a link"))))
        rows = h.rows()
        await h.close()
        return rows
    rows = run(go())
    assert [(r.chat, r.sender, r.sender_name, r.text, r.channel_id, r.from_me, r.is_bot) for r in rows] == [
        (f"{FAMILY}@g.us", f"{ALICE}@s.whatsapp.net", "Alice", "@Andy what's for dinner?", "MSG1", False, False),
        (f"{ALICE}@s.whatsapp.net", f"{ALICE}@s.whatsapp.net", "Alice", "hi, with a link", "MSG2", False, False)]
    assert rows[0].timestamp == pytest.approx(T0 / 1000)  # milliseconds -> seconds
    assert 1.7e9 < rows[0].timestamp < 2.1e9


def test_lid_and_phone_forms_are_one_sender(harness):
    async def go():
        h = await harness().start()
        family = jid(FAMILY, "g.us")
        await h.fire(message_ev(family, jid(ALICE_LID, "lid"), "A1", "via lid", sender_alt=jid(ALICE)))
        await h.fire(message_ev(family, jid(ALICE, device=5), "A2", "via phone, another device"))
        # a direct chat that arrives in LID form is stored under the registered phone form
        groups_mod.add_group(h.cfg, "alice", jid=f"{ALICE}@s.whatsapp.net")
        await h.fire(message_ev(jid(ALICE_LID, "lid"), jid(ALICE_LID, "lid"), "A3", "dm via lid",
                                sender_alt=jid(ALICE)))
        rows = h.rows()
        await h.close()
        return rows
    rows = run(go())
    assert {r.sender for r in rows} == {f"{ALICE}@s.whatsapp.net"}
    assert [r.chat for r in rows] == [f"{FAMILY}@g.us", f"{FAMILY}@g.us", f"{ALICE}@s.whatsapp.net"]


def test_unregistered_chats_are_dropped_or_stored_but_never_answered(harness):
    from nanoclaw.core.models import Outbox, Request
    stranger = jid("120363999999999999", "g.us")

    async def go(**cfg):
        h = await harness(**cfg).start()
        h.client.groups = [group_info("120363999999999999", "Lisbon\u202e trip", 5)]
        await h.fire(message_ev(stranger, jid(ALICE), "S0", "hello?"))
        await h.fire(message_ev(stranger, jid(ALICE), "S1", "@Andy hello?"))
        await h.fire(message_ev(jid("4915550000"), jid("4915550000"), "S2", "spam"))
        rows = h.rows()
        registered = {g.jid for g in Group.select()}
        requests = [(r.chat, r.chat_name, r.members) for r in Request.select()]
        cards = [o.text for o in Outbox.select().where(Outbox.chat == h.main.jid)]
        lookups = [c for c in h.client.calls if c == ("get_group_info", f"{stranger.User}@g.us")]
        await h.close()
        return rows, registered, requests, cards, lookups
    rows, registered, requests, cards, lookups = run(go())
    # only the trigger is kept, for the owner's answer: it asks, with the group's name from WhatsApp
    assert [r.channel_id for r in rows] == ["S1"]
    assert requests == [(f"{stranger.User}@g.us", "Lisbon trip", 5)]
    assert cards == ["Lisbon trip (5 members) asks for @Andy — reply `approve 1` or `deny 1`"]
    assert len(lookups) == 1  # the name is looked up for a trigger only
    rows, registered, _, _, _ = run(go(store_unregistered=True))
    assert [r.channel_id for r in rows] == ["S0", "S1", "S2"]
    # the queue serves only registered groups' chats, so these can never start an agent
    assert not {r.chat for r in rows} & registered


def test_a_direct_chat_asks_under_the_other_persons_name_never_the_owners(harness):
    from nanoclaw.core.models import Outbox

    async def go():
        h = await harness().start()
        await h.fire(message_ev(jid(ALICE), jid(ALICE), "A1", "@Andy hi", pushname="Alice\nSmith"))
        await h.fire(message_ev(jid("491700000003"), jid(OWNER), "A2", "@Andy join us", from_me=True,
                                pushname="Owner"))
        cards = [o.text for o in Outbox.select().where(Outbox.chat == h.main.jid).order_by(Outbox.id)]
        await h.close()
        return cards
    assert run(go()) == [
        f"Alice Smith (+{ALICE}, direct chat) asks for @Andy — reply `approve 1` or `deny 1`",
        "Someone (+491700000003, direct chat) asks for @Andy — reply `approve 2` or `deny 2`"]


def test_owner_self_chat_reaches_the_agent(harness):
    async def go():
        h = await harness().start()
        # the owner types in their own chat on the phone: from_me, chat in LID or phone form
        await h.fire(message_ev(jid(OWNER_LID, "lid"), jid(OWNER_LID, "lid"), "O1", "remind me to call mum",
                                from_me=True, recipient_alt=jid(OWNER), pushname="Owner"))
        await h.fire(message_ev(jid(OWNER), jid(OWNER, device=0), "O2", "and buy milk", from_me=True))
        rows = h.rows(h.main.jid)
        await h.close()
        return rows, h.main
    rows, main = run(go())
    assert [(r.text, r.from_me, r.is_bot, r.sender) for r in rows] == [
        ("remind me to call mum", True, False, f"{OWNER}@s.whatsapp.net"),
        ("and buy milk", True, False, f"{OWNER}@s.whatsapp.net")]
    assert needs_agent(rows, requires_trigger=False, trigger="@Andy", allowed=None)


def test_a_dm_the_owner_sent_to_someone_else_never_passes_for_the_self_chat(harness):
    """The defect: a DM typed on the phone, reported with Chat = our own JID and the real
    recipient only in DeviceSentMeta.DestinationJID, was stored in the main group, whose agent
    answers every message. A self-chat message's destination is us."""
    async def go():
        h = await harness().start()
        await h.fire(message_ev(jid(OWNER), jid(OWNER), "D1", "see you at 8", from_me=True,
                                destination=f"{ALICE}@s.whatsapp.net"))
        await h.fire(message_ev(jid(OWNER_LID, "lid"), jid(OWNER_LID, "lid"), "D2", "bring wine", from_me=True,
                                destination=f"{ALICE_LID}:0@lid"))
        await h.fire(message_ev(jid(OWNER), jid(OWNER), "S1", "remind me to call mum", from_me=True,
                                destination=f"{OWNER}@s.whatsapp.net"))
        await h.fire(message_ev(jid(OWNER_LID, "lid"), jid(OWNER_LID, "lid"), "S2", "buy milk", from_me=True,
                                destination=f"{OWNER}:0@s.whatsapp.net"))
        main_rows = h.rows(h.main.jid)
        groups_mod.add_group(h.cfg, "alice", jid=f"{ALICE}@s.whatsapp.net")
        await h.fire(message_ev(jid(OWNER), jid(OWNER), "D3", "one more thing", from_me=True,
                                destination=f"{ALICE}:0@s.whatsapp.net"))
        alice_rows = h.rows(f"{ALICE}@s.whatsapp.net")
        await h.close()
        return main_rows, alice_rows
    main_rows, alice_rows = run(go())
    assert [r.channel_id for r in main_rows] == ["S1", "S2"]
    assert [(r.channel_id, r.from_me, r.sender) for r in alice_rows] == [("D3", True, f"{OWNER}@s.whatsapp.net")]


def test_a_dm_arriving_as_a_bare_lid_reaches_the_registered_phone_chat(harness):
    """The defect: a DM with only an @lid (no phone form beside it) was dropped as unregistered;
    whatsmeow's store knows the phone number (get_pn_from_lid), asked only while connected."""
    async def go():
        h = await harness().start()
        groups_mod.add_group(h.cfg, "alice", jid=f"{ALICE}@s.whatsapp.net")
        h.client.lids[ALICE_LID] = jid(ALICE)
        await h.fire(message_ev(jid(ALICE_LID, "lid"), jid(ALICE_LID, "lid", device=2), "L1", "hi, only my lid"))
        await h.fire(message_ev(jid(ALICE_LID, "lid"), jid(ALICE_LID, "lid"), "L2", "again"))  # remembered
        await h.fire(message_ev(jid("77000000000099", "lid"), jid("77000000000099", "lid"), "L3", "who am I"))
        await h.fire(DisconnectedEv())
        await h.fire(message_ev(jid("77000000000098", "lid"), jid("77000000000098", "lid"), "L4", "offline"))
        rows = h.rows()
        lookups = [c[1] for c in h.client.calls if c[0] == "get_pn_from_lid"]
        await h.close()
        return rows, lookups
    rows, lookups = run(go())
    alice = f"{ALICE}@s.whatsapp.net"
    assert [(r.chat, r.sender, r.channel_id) for r in rows] == [(alice, alice, "L1"), (alice, alice, "L2")]
    assert lookups == [f"{ALICE_LID}@lid", "77000000000099@lid"]  # none while disconnected


def test_a_photo_is_stored_before_the_question_that_followed_it(harness):
    """The defect: neonize runs each handler as its own task, so "what is this?" was stored
    (and could start the agent) while the photo before it was still downloading. Dispatched
    here by neonize's own Event.execute, from another thread, as its Go callback does."""
    async def go():
        h = await harness().start()
        h.client.download_gate = asyncio.Event()
        with neonize_dispatch(h) as deliver:
            family, alice = jid(FAMILY, "g.us"), jid(ALICE)
            for ev in (message_ev(family, alice, "P1", body=WAMessage(imageMessage=ImageMessage(
                           mimetype="image/jpeg", fileLength=15))),
                       message_ev(family, alice, "Q1", "@Andy what is this?", ts=T0 + 2000),
                       message_ev(jid(OWNER), jid(OWNER), "O1", "another chat", from_me=True)):
                await asyncio.to_thread(deliver, ev)
            await wait_until(lambda: h.rows(h.main.jid))  # other chats are not held up
            held = h.rows(h.family.jid)
            h.client.download_gate.set()
            await wait_until(lambda: len(h.rows(h.family.jid)) == 2)
        rows = h.rows(h.family.jid)
        await h.close()
        return held, rows
    held, rows = run(go())
    assert held == []  # the question waits for the photo still downloading
    assert [r.channel_id for r in rows] == ["P1", "Q1"]
    assert json.loads(rows[0].media)["file"] == "inbox/P1.jpg"


def test_captions_and_media_land_in_the_group_inbox(harness):
    async def go():
        h = await harness().start()
        family = jid(FAMILY, "g.us")
        alice = jid(ALICE)
        await h.fire(message_ev(family, alice, "IMG1", body=WAMessage(imageMessage=ImageMessage(
            caption="@Andy what is this?", mimetype="image/jpeg", fileLength=15))))
        await h.fire(message_ev(family, alice, "PTT1", body=WAMessage(audioMessage=AudioMessage(
            PTT=True, mimetype="audio/ogg; codecs=opus", fileLength=15))))
        await h.fire(message_ev(family, alice, "DOC1", body=WAMessage(documentMessage=DocumentMessage(
            fileName="../../etc/passwd plan.pdf", mimetype="application/pdf", fileLength=15))))
        await h.fire(message_ev(family, alice, "VID1", body=WAMessage(videoMessage=VideoMessage(
            caption="too big", mimetype="video/mp4", fileLength=10**9))))
        # an unregistered chat's media is never downloaded
        await h.fire(message_ev(jid("120363999"), alice, "IMG2", body=WAMessage(imageMessage=ImageMessage(
            caption="x", mimetype="image/jpeg"))))
        rows = h.rows(h.family.jid)
        downloads = [c for c in h.client.calls if c[0] == "download_any"]
        await h.close()
        return h, rows, downloads
    h, rows, downloads = run(go())
    # the caption is the message's text (so its trigger counts); the attachment is stored beside it
    assert [r.text for r in rows] == ["@Andy what is this?", "", "", "too big"]
    assert [json.loads(r.media) for r in rows] == [
        {"kind": "image", "type": "image/jpeg", "size": 15, "file": "inbox/IMG1.jpg"},
        {"kind": "voice note", "type": "audio/ogg", "size": 15, "file": "inbox/PTT1.ogg"},
        {"kind": "document", "type": "application/pdf", "size": 15, "file": "inbox/DOC1-etc_passwd_plan.pdf"},
        {"kind": "video", "type": "video/mp4", "size": 10**9,
         "note": "not downloaded: 1000000000 bytes is over the limit"}]
    inbox = h.cfg.groups_dir / "family" / "inbox"
    assert sorted(p.name for p in inbox.iterdir()) == ["DOC1-etc_passwd_plan.pdf", "IMG1.jpg", "PTT1.ogg"]
    assert (inbox / "PTT1.ogg").read_bytes() == b"OggS-fake-voice"
    assert [d[1] for d in downloads] == ["imageMessage", "audioMessage", "documentMessage"]


def test_media_never_goes_through_what_the_agent_planted_in_its_inbox(harness, tmp_path):
    """The group folder is the agent's: a link, hard link or FIFO where the next download lands
    is replaced as an entry; so is an inbox/ that is a link (by a real directory)."""
    outside = tmp_path / "outside"
    outside.write_text("not yours\n")

    async def go():
        h = await harness().start()
        folder = h.cfg.groups_dir / "family"
        inbox = folder / "inbox"
        inbox.mkdir()
        memory = folder / "CLAUDE.md"
        before = memory.read_text()
        os.symlink(outside, inbox / "L1.jpg")
        os.link(memory, inbox / "H1.jpg")
        os.mkfifo(inbox / "F1.jpg")
        for msg_id in ("L1", "H1", "F1"):
            await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), msg_id, body=WAMessage(
                imageMessage=ImageMessage(caption="pic", mimetype="image/jpeg", fileLength=15))))
        kinds = {n: stat.S_IFMT(os.lstat(inbox / f"{n}.jpg").st_mode) for n in ("L1", "H1", "F1")}
        # the whole inbox replaced by a link to somewhere else
        for p in inbox.iterdir():
            p.unlink()
        inbox.rmdir()
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        os.symlink(elsewhere, inbox)
        await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "X1", body=WAMessage(
            imageMessage=ImageMessage(caption="pic", mimetype="image/jpeg", fileLength=15))))
        rows = h.rows(h.family.jid)
        relinked = inbox.is_symlink() or not (inbox / "X1.jpg").is_file()
        await h.close()
        return kinds, memory.read_text() == before, os.listdir(elsewhere), rows, relinked
    kinds, memory_kept, elsewhere, rows, relinked = run(go())
    assert kinds == {n: stat.S_IFREG for n in ("L1", "H1", "F1")}  # each a fresh regular file
    assert memory_kept and outside.read_text() == "not yours\n" and elsewhere == []
    assert not relinked and json.loads(rows[-1].media)["file"] == "inbox/X1.jpg"


def test_a_burst_in_one_chat_is_stored_in_order_in_fewer_commits_than_messages(harness):
    """A chat's messages are stored in arrival order, but a handler waits only for the one
    before it to take its place in the commit line, not for that commit: a burst (a backlog
    after a reconnect) shares commits instead of paying one fsync per message. Dispatched by
    neonize's own Event.execute from another thread, all at once, as its Go callback does."""
    async def go():
        h = await harness().start()
        family, alice = jid(FAMILY, "g.us"), jid(ALICE)
        burst = [message_ev(family, alice, f"B{i}", f"line {i}", ts=T0 + i) for i in range(40)]
        with neonize_dispatch(h) as deliver:
            commits = h.daemon.line.commits
            await asyncio.to_thread(lambda: [deliver(ev) for ev in burst])
            await wait_until(lambda: len(h.rows(h.family.jid)) == 40)
            commits = h.daemon.line.commits - commits
        rows = h.rows(h.family.jid)
        await h.close()
        return commits, rows
    commits, rows = run(go())
    assert [r.channel_id for r in rows] == [f"B{i}" for i in range(40)]
    assert commits < 20, commits


def test_a_captioned_photo_triggers_and_the_prompt_names_the_file(harness):
    """The defect: '[image: …] @Andy what is this?' never matched a trigger at the start."""
    from nanoclaw.core.prompt import build_prompt

    async def go():
        h = await harness().start()
        await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "IMG9", body=WAMessage(imageMessage=ImageMessage(
            caption="@Andy what is this?", mimetype="image/jpeg", fileLength=15))))
        await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "PTT9", body=WAMessage(audioMessage=AudioMessage(
            PTT=True, mimetype="audio/ogg; codecs=opus", fileLength=15, seconds=7))))
        rows = h.rows(h.family.jid)
        await h.close()
        return rows
    photo, voice = run(go())
    assert needs_agent([photo], requires_trigger=True, trigger="@Andy", allowed=None)
    assert not needs_agent([voice], requires_trigger=True, trigger="@Andy", allowed=None)
    prompt = build_prompt([photo, voice], cap=10, tz="UTC")
    assert ('<attachment kind="image" file="/workspace/group/inbox/IMG9.jpg" type="image/jpeg" '
            'size="15 bytes"/>@Andy what is this?</message>') in prompt
    assert 'kind="voice note" file="/workspace/group/inbox/PTT9.ogg"' in prompt and 'seconds="7"' in prompt
    assert "not transcribed" in prompt


def test_receipts_and_empty_messages_store_nothing(harness):
    from neonize.proto.Neonize_pb2 import Receipt

    async def go():
        h = await harness().start()
        src = MessageSource(Chat=jid(FAMILY, "g.us"), Sender=jid(ALICE), IsFromMe=False, IsGroup=True,
                            SenderAlt=EMPTY, RecipientAlt=EMPTY, BroadcastListOwner=EMPTY)
        receipt = Receipt(MessageSource=src, MessageIDs=["3EB0X"], Timestamp=1_767_225_600, Type=1)
        await h.fire(ReceiptEv.FromString(receipt.SerializeToString()))
        await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "R1", body=WAMessage()))  # e.g. a reaction
        await h.fire(message_ev(jid("status", "broadcast"), jid(ALICE), "ST1", "my status"))
        rows = h.rows()
        await h.close()
        return rows
    assert run(go()) == []


def test_a_failing_handler_is_logged_not_lost(harness, caplog):
    async def go():
        h = await harness().start()

        async def boom(*a):
            raise RuntimeError("disk on fire")
        h.wa.intake.receive = boom
        await h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "B1", "hello"))
        await h.close()
    with caplog.at_level("ERROR", logger="nanoclaw.whatsapp"):
        run(go())
    assert "Message handler failed" in caplog.text and "disk on fire" in caplog.text


def test_a_message_still_being_stored_at_shutdown_is_stored_before_the_client_stops(harness):
    async def go():
        h = await harness().start()
        h.client.download_gate = asyncio.Event()
        handler = asyncio.ensure_future(h.fire(message_ev(jid(FAMILY, "g.us"), jid(ALICE), "LATE1", body=WAMessage(
            imageMessage=ImageMessage(caption="@Andy look", mimetype="image/jpeg", fileLength=15)))))
        await wait_until(lambda: ("download_any", "imageMessage") in h.client.calls)
        closing = asyncio.ensure_future(h.close())
        await wait_until(lambda: h.wa.conn.stopping)
        stopped_while_downloading = ("stop",) in h.client.calls
        h.client.download_gate.set()
        await asyncio.wait_for(closing, 20)
        await handler
        return stopped_while_downloading, h.rows(h.family.jid), h.client.calls
    stopped_while_downloading, rows, calls = run(go())
    assert not stopped_while_downloading
    assert [r.channel_id for r in rows] == ["LATE1"]
    assert calls.index(("stop",)) > calls.index(("download_any", "imageMessage"))
