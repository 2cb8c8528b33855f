"""The WhatsApp channel: formatting, chunking, and (below) the backend fed real neonize events."""

from __future__ import annotations

import pytest

from nanoclaw import config as config_mod
from nanoclaw.formatting import split_message, to_whatsapp


# -- outbound formatting -----------------------------------------------------------

@pytest.mark.parametrize("markdown,whatsapp", [
    ("**bold**", "*bold*"),
    ("*italic* and _italic_", "_italic_ and _italic_"),
    ("__italic__", "_italic_"),
    ("~~gone~~", "~gone~"),
    ("**bold** then *it*", "*bold* then _it_"),
    ("# Title", "*Title*"),
    ("### **Already bold** heading", "*Already bold heading*"),
    ("[docs](https://example.org/x)", "docs (https://example.org/x)"),
    ("[https://a.b](https://a.b)", "https://a.b"),
    ("* one\n* two", "• one\n• two"),
    ("- one", "- one"),
    ("2*3*4 = 24", "2*3*4 = 24"),  # not emphasis: no spaces around
    ("`**kept**` but **this**", "`**kept**` but *this*"),
    ("```\n**kept** *kept* # kept\n[a](b)\n```", "```\n**kept** *kept* # kept\n[a](b)\n```"),
    ("before **b**\n```py\nx = a**2\n```\nafter *i*", "before *b*\n```py\nx = a**2\n```\nafter _i_"),
    ("plain text, nothing to do.", "plain text, nothing to do."),
])
def test_markdown_to_whatsapp(markdown, whatsapp):
    assert to_whatsapp(markdown) == whatsapp


def test_short_text_is_one_chunk():
    assert split_message("hello", 4000) == ["hello"]
    assert split_message("   ", 4000) == []


def test_chunks_split_at_paragraphs_under_the_limit_in_order():
    paras = [f"paragraph {i} " + "word " * 60 for i in range(40)]
    chunks = split_message("\n\n".join(paras), 1000)
    assert len(chunks) > 1 and all(len(c) <= 1000 for c in chunks)
    # nothing lost, nothing reordered, and every chunk ends at a paragraph boundary
    assert [p.strip() for c in chunks for p in c.split("\n\n")] == [p.strip() for p in paras]


def test_an_overlong_paragraph_splits_at_lines_then_words():
    line = "x" * 30
    text = "\n".join([line] * 100)  # one paragraph, 3099 chars
    chunks = split_message(text, 500)
    assert all(len(c) <= 500 for c in chunks)
    assert "\n".join(chunks).split("\n") == [line] * 100
    words = " ".join(["word"] * 400)  # one line
    chunks = split_message(words, 300)
    assert all(len(c) <= 300 for c in chunks) and " ".join(chunks).split() == ["word"] * 400
    hard = "y" * 1000  # no boundary at all: a hard cut, still in order
    assert "".join(split_message(hard, 300)) == hard


def test_code_blocks_are_not_split_when_avoidable():
    code = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(30)) + "\n```"
    text = "intro " * 100 + "\n\n" + code + "\n\noutro"
    chunks = split_message(text, 700)
    assert any(code in c for c in chunks) and all(len(c) <= 700 for c in chunks)  # whole
    assert chunks[-1].endswith("outro") and chunks[0].startswith("intro")
    # a blank line inside a code block is not a paragraph boundary
    spaced = "```\na\n\nb\n```"
    assert split_message("x " * 20 + "\n\n" + spaced, 45)[-1] == spaced


def test_a_code_block_longer_than_the_limit_is_fenced_again_per_piece():
    body = [f"value_{i} = {i} * 2" for i in range(200)]
    chunks = split_message("```python\n" + "\n".join(body) + "\n```", 500)
    assert len(chunks) > 1
    for c in chunks:
        assert len(c) <= 500 and c.startswith("```python\n") and c.endswith("\n```")
    assert [line for c in chunks for line in c.split("\n")[1:-1]] == body


def test_whatsapp_config_table(tmp_path, monkeypatch):
    monkeypatch.delenv("NANOCLAW_STATE_DIR", raising=False)
    path = tmp_path / "config.toml"
    path.write_text('channels = ["whatsapp", "terminal"]\n[whatsapp]\nstore_unregistered = true\n'
                    'send_rate_per_minute = 6\nmax_message_chars = 1000\n')
    cfg = config_mod.load(path)
    assert cfg.channels == ("whatsapp", "terminal")
    assert cfg.whatsapp.store_unregistered is True and cfg.whatsapp.send_rate_per_minute == 6.0
    assert cfg.whatsapp.max_message_chars == 1000 and cfg.whatsapp.download_media is True
    path.write_text('[whatsapp]\nstore_unregistered = "yes"\n')
    with pytest.raises(config_mod.ConfigError, match="true or false"):
        config_mod.load(path)
    path.write_text('[whatsapp]\nsend_burst = true\n')
    with pytest.raises(config_mod.ConfigError, match="expected int"):
        config_mod.load(path)
    path.write_text('[whatsapp]\nno_such = 1\n')
    with pytest.raises(config_mod.ConfigError, match="unknown setting"):
        config_mod.load(path)


# -- the backend, fed real neonize protobuf events ------------------------------------

import asyncio  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from neonize.aioze.events import (ConnectedEv, DisconnectedEv, LoggedOutEv, MessageEv,  # noqa: E402
                                  PairStatusEv, ReceiptEv, StreamReplacedEv)
from neonize.proto.Neonize_pb2 import (JID, Device, GroupInfo, GroupName, GroupParticipant,  # noqa: E402
                                       MessageInfo, MessageSource, SendResponse)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (AudioMessage, DocumentMessage,  # noqa: E402
                                                       ExtendedTextMessage, ImageMessage, VideoMessage)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage  # noqa: E402
from neonize.utils.jid import Jid2String  # noqa: E402

from nanoclaw import groups as groups_mod  # noqa: E402
from nanoclaw.channel import ChannelDaemon  # noqa: E402
from nanoclaw.channels import wa_proto  # noqa: E402
from nanoclaw.channels.whatsapp import TokenBucket, WhatsAppBackend  # noqa: E402
from nanoclaw.models import Group, Message, open_db  # noqa: E402
from nanoclaw.prompt import needs_agent  # noqa: E402

OWNER = "491700000001"  # the linked account: the main group is its self-chat
OWNER_LID = "88000000000001"
FAMILY = "120363000000000001"
ALICE, ALICE_LID = "491700000002", "77000000000002"
T0 = 1_767_225_600_123  # ms


def jid(user: str, server: str = "s.whatsapp.net", device: int = 0) -> JID:
    return JID(User=user, RawAgent=0, Device=device, Integrator=0, Server=server, IsEmpty=False)


EMPTY = JID(User="", RawAgent=0, Device=0, Integrator=0, Server="", IsEmpty=True)


def message_ev(chat: JID, sender: JID, msg_id: str, text: str | None = None, *, body: WAMessage | None = None,
               from_me: bool = False, sender_alt: JID = EMPTY, recipient_alt: JID = EMPTY,
               pushname: str = "Alice", ts: int = T0) -> MessageEv:
    """A MessageEv exactly as neonize hands it over: serialised (all required fields) and parsed."""
    ev = MessageEv(
        Info=MessageInfo(MessageSource=MessageSource(Chat=chat, Sender=sender, IsFromMe=from_me,
                                                     IsGroup=chat.Server == "g.us", SenderAlt=sender_alt,
                                                     RecipientAlt=recipient_alt, BroadcastListOwner=EMPTY),
                         ID=msg_id, ServerID=0, Type="text" if body is None else "media", Pushname=pushname,
                         Timestamp=ts, Category="", Multicast=False, MediaType="", Edit=""),
        Message=body if body is not None else WAMessage(conversation=text),
        IsEphemeral=False, IsViewOnce=False, IsViewOnceV2=False, IsViewOnceV2Extension=False,
        IsDocumentWithCaption=False, IsLottieSticker=False, IsEdit=False, UnavailableRequestID="", RetryCount=0)
    return MessageEv.FromString(ev.SerializeToString())


class FakeEvents:
    """neonize's ``client.event``: ``event(Type)(fn)`` and ``event.qr(fn)``."""

    def __init__(self) -> None:
        self.handlers: dict = {}

    def __call__(self, event_type):
        return lambda fn: self.handlers.__setitem__(event_type, fn)

    def qr(self, fn) -> None:
        self.handlers["qr"] = fn


class RecordingClient:
    """Stands in for neonize's NewAClient: records calls, answers like WhatsApp would."""

    def __init__(self, session: Path) -> None:
        self.session = session
        self.event = FakeEvents()
        self.calls: list[tuple] = []
        self.connect_failures: list[Exception] = []
        self.me = Device(JID=jid(OWNER), LID=jid(OWNER_LID, "lid"), Platform="", BussinessName="",
                         PushName="Owner", Initialized=True)
        self.groups: list[GroupInfo] = []
        self.media = b"OggS-fake-voice"
        self.on_send = None  # called inside send_message, before it returns (echo races)
        self.fail_send_at: int | None = None
        self.sent = 0
        self._stop: asyncio.Event | None = None

    async def connect(self):
        self.calls.append(("connect",))
        if self.connect_failures:
            exc = self.connect_failures.pop(0)

            async def fail():
                raise exc
            return asyncio.ensure_future(fail())
        self._stop = asyncio.Event()
        self.session.write_bytes(b"")  # whatsmeow creates its DB at connect
        return asyncio.ensure_future(self._stop.wait())

    async def stop(self):
        self.calls.append(("stop",))
        if self._stop:
            self._stop.set()

    async def send_message(self, to: JID, message: WAMessage) -> SendResponse:
        self.sent += 1
        if self.fail_send_at == self.sent:
            raise RuntimeError("websocket closed")
        self.calls.append(("send", Jid2String(to), message.conversation))
        msg_id = f"3EB0{self.sent:016X}"
        if self.on_send:
            await self.on_send(to, message)
        return SendResponse(ID=msg_id, Timestamp=0, ServerID=0)

    async def send_chat_presence(self, chat: JID, state, media) -> None:
        self.calls.append(("presence", Jid2String(chat), state.name, media.name))

    async def get_joined_groups(self):
        self.calls.append(("get_joined_groups",))
        return self.groups

    async def get_group_info(self, group: JID) -> GroupInfo:
        self.calls.append(("get_group_info", Jid2String(group)))
        return next(g for g in self.groups if g.JID.User == group.User)

    async def download_any(self, message: WAMessage) -> bytes:
        self.calls.append(("download_any", message.ListFields()[0][0].name))
        return self.media

    async def PairPhone(self, phone: str, push: bool) -> str:
        self.calls.append(("PairPhone", phone))
        return "ABCD-EFGH"

    async def get_me(self) -> Device:
        return self.me


def group_info(user: str, name: str, members: int) -> GroupInfo:
    return GroupInfo(JID=jid(user, "g.us"), GroupName=GroupName(Name=name, NameSetAt=0),
                     Participants=[GroupParticipant(JID=jid(f"49{i}"), LID=EMPTY, PhoneNumber=EMPTY,
                                                    IsAdmin=False, IsSuperAdmin=False, DisplayName="",
                                                    Error=0) for i in range(members)])


class Harness:
    """A real ChannelDaemon (both backends) over a real SQLite DB, WhatsApp on the recording client."""

    def __init__(self, tmp: Path, **whatsapp) -> None:
        self.cfg = config_mod.Config(
            state_dir=tmp / "state", runtime_dir=tmp / "run", config_dir=tmp / "etc", timezone="UTC",
            channels=("whatsapp", "terminal"),
            whatsapp=config_mod.WhatsAppConfig(**{"send_rate_per_minute": 6000.0, "send_burst": 100,
                                                  "reconnect_min": 0.01, "reconnect_max": 0.04,
                                                  **whatsapp}))
        self.cfg.runtime_dir.mkdir(parents=True)
        open_db(self.cfg.db_path)
        self.main = groups_mod.add_group(self.cfg, "main", jid=f"{OWNER}@s.whatsapp.net", is_main=True)
        self.family = groups_mod.add_group(self.cfg, "family", name="Family", jid=f"{FAMILY}@g.us")
        groups_mod.add_group(self.cfg, "term")  # a terminal chat beside WhatsApp

    async def start(self, connected: bool = True) -> "Harness":
        self.daemon = ChannelDaemon(self.cfg)
        await self.daemon.setup()
        self.wa = next(b for b in self.daemon.backends if isinstance(b, WhatsAppBackend))
        self.client: RecordingClient = self.wa.client
        if connected:
            await self.fire(ConnectedEv(status=True))
        return self

    async def fire(self, ev, handler=None) -> None:
        """Deliver an event as neonize does: to the handler registered for its type."""
        await self.client.event.handlers[handler or type(ev)](self.client, ev)

    async def settle(self) -> None:
        for _ in range(20):
            await asyncio.sleep(0)

    def rows(self, chat: str | None = None, **where) -> list[Message]:
        q = Message.select().order_by(Message.id)
        if chat:
            q = q.where(Message.chat == chat)
        return [m for m in q if all(getattr(m, k) == v for k, v in where.items())]

    async def close(self) -> None:
        await self.daemon.shutdown()


@pytest.fixture
def harness(tmp_path, monkeypatch):
    monkeypatch.setattr(WhatsAppBackend, "client_factory", staticmethod(RecordingClient))
    made: list[Harness] = []

    def make(**whatsapp) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", **whatsapp)
        made.append(h)
        return h
    yield make


def run(coro):
    return asyncio.run(coro)


def test_jid_strings_round_trip_with_neonize():
    for text in ("491701234567@s.whatsapp.net", "120363000000000001@g.us", "77000000000002@lid",
                 "491701234567:12@s.whatsapp.net", "4917.1:3@s.whatsapp.net", "status@broadcast"):
        parsed = wa_proto.parse_jid(text)
        assert Jid2String(parsed) == text and wa_proto.jid_str(parsed, device=True) == text
    assert wa_proto.jid_str(wa_proto.parse_jid("491701234567:12@s.whatsapp.net")) == "491701234567@s.whatsapp.net"
    phone = wa_proto.parse_jid("+49 170 1234567")
    assert (phone.User, phone.Server) == ("491701234567", "s.whatsapp.net")
    assert wa_proto.parse_jid("g.us").User == ""
    for bad in ("", "a@b@c", "x@"):
        with pytest.raises(wa_proto.JIDError):
            wa_proto.parse_jid(bad)


def test_backoff_doubles_and_is_capped_then_resets():
    b = wa_proto.Backoff(2.0, 300.0)
    assert [b.next() for _ in range(10)] == [2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    b.reset()
    assert b.next() == 2


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=30, burst=3, clock=lambda: now[0], sleep=sleep)
        return [await bucket.acquire() for _ in range(6)]
    waits = run(go())
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([2.0, 2.0, 2.0])  # 30/min: one every 2 s
