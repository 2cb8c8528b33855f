"""The WhatsApp channel: formatting, chunking, and (below) the backend fed real neonize events."""

from __future__ import annotations

import pytest

from nanoclaw.channels.whatsapp.format import split_message, to_whatsapp
from nanoclaw.core import config as config_mod

# -- outbound formatting -----------------------------------------------------------

@pytest.mark.parametrize("markdown,whatsapp", [
    ("**bold**", "*bold*"),
    ("*italic* and _italic_", "_italic_ and _italic_"),
    ("__strong__ too", "*strong* too"),
    ("a snake__case__name stays", "a snake__case__name stays"),
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


@pytest.mark.parametrize("markdown,whatsapp", [
    ("***both***", "_*both*_"),  # the regex converter made this *_both*_
    ("**bold [link](http://e.org) inside**", "*bold link (http://e.org) inside*"),
    ("* a\n  * nested\n* b", "• a\n  • nested\n• b"),
    ("1. first\n2. second", "1. first\n2. second"),
    ("> quoted *text*", "> quoted _text_"),
    ("`a*b*c` and *d*", "`a*b*c` and _d_"),
])
def test_markdown_structure_is_parsed_not_pattern_matched(markdown, whatsapp):
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
import contextlib  # noqa: E402
import ctypes  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from neonize.aioze.events import (  # noqa: E402
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.exc import NeonizeError  # noqa: E402
from neonize.proto.Neonize_pb2 import (  # noqa: E402
    JID,
    Device,
    DeviceSentMeta,
    GroupInfo,
    GroupName,
    GroupParticipant,
    MessageInfo,
    MessageSource,
    SendResponse,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (  # noqa: E402
    AudioMessage,
    DocumentMessage,
    ExtendedTextMessage,
    ImageMessage,
    VideoMessage,
)
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage  # noqa: E402
from neonize.utils.jid import Jid2String  # noqa: E402

from nanoclaw.channels.whatsapp import WhatsAppBackend  # noqa: E402
from nanoclaw.channels.whatsapp import convert as wa_proto  # noqa: E402
from nanoclaw.channels.whatsapp import pairing as pairing_mod  # noqa: E402
from nanoclaw.channels.whatsapp.pairing import PAIR_COMMAND  # noqa: E402
from nanoclaw.channels.whatsapp.ratelimit import TokenBucket  # noqa: E402
from nanoclaw.core import groups as groups_mod  # noqa: E402
from nanoclaw.core.backoff import Backoff  # noqa: E402
from nanoclaw.core.models import Group, Message, open_db  # noqa: E402
from nanoclaw.core.prompt import needs_agent  # noqa: E402
from nanoclaw.daemons.channel import ChannelDaemon  # noqa: E402
from nanoclaw.daemons.channel.deliver import deliver  # noqa: E402

from whatsapp_offline import SilentProxy, closed_port, link_session, unlink_session  # noqa: E402, I001

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent

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
               pushname: str = "Alice", ts: int = T0, destination: str | None = None) -> MessageEv:
    """A MessageEv exactly as neonize hands it over: serialised (all required fields) and parsed.
    ``destination``: the DeviceSentMeta whatsmeow adds to what the owner's phone sent."""
    meta = {} if destination is None else {"DeviceSentMeta": DeviceSentMeta(DestinationJID=destination, Phash="")}
    ev = MessageEv(
        Info=MessageInfo(MessageSource=MessageSource(Chat=chat, Sender=sender, IsFromMe=from_me,
                                                     IsGroup=chat.Server == "g.us", SenderAlt=sender_alt,
                                                     RecipientAlt=recipient_alt, BroadcastListOwner=EMPTY),
                         ID=msg_id, ServerID=0, Type="text" if body is None else "media", Pushname=pushname,
                         Timestamp=ts, Category="", Multicast=False, MediaType="", Edit="", **meta),
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
        self.messages: list[WAMessage] = []  # what send_message was given, as sent
        self.connect_failures: list[Exception] = []
        self.me = Device(JID=jid(OWNER), LID=jid(OWNER_LID, "lid"), Platform="", BussinessName="",
                         PushName="Owner", Initialized=True)
        self.groups: list[GroupInfo] = []
        self.media = b"OggS-fake-voice"
        self.on_send = None  # called inside send_message, before it returns (echo races)
        self.fail_send_at: int | None = None
        self.sent = 0
        self.lids: dict[str, JID] = {}  # what whatsmeow's store maps LIDs to
        self.download_gate: asyncio.Event | None = None  # a slow download, until set
        self.stop_ends_task = True  # False: neonize 0.5.2 stopped while pairing (never ends)
        self._stop: asyncio.Event | None = None

    async def connect(self, *proxy):
        self.calls.append(("connect",))
        if self.connect_failures:
            exc = self.connect_failures.pop(0)

            async def fail():
                raise exc
            return asyncio.ensure_future(fail())
        self._stop = asyncio.Event()
        self.session.touch()  # whatsmeow creates its DB at connect
        return asyncio.ensure_future(self._stop.wait())

    async def stop(self):
        self.calls.append(("stop",))
        if self._stop and self.stop_ends_task:
            self._stop.set()

    async def get_pn_from_lid(self, lid: JID) -> JID:
        self.calls.append(("get_pn_from_lid", Jid2String(lid)))
        return self.lids.get(lid.User, EMPTY)

    async def send_message(self, to: JID, message: WAMessage) -> SendResponse:
        self.sent += 1
        if self.fail_send_at == self.sent:
            raise RuntimeError("websocket closed")
        self.calls.append(("send", Jid2String(to), message.conversation or message.extendedTextMessage.text))
        self.messages.append(message)
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
        if self.download_gate is not None:
            await self.download_gate.wait()
        return self.media

    async def PairPhone(self, phone: str, push: bool) -> str:
        self.calls.append(("PairPhone", phone))
        return "ABCD-EFGH"

    async def get_me(self) -> Device:
        return self.me


class ScriptedPairing(RecordingClient):
    """The recording stand-in inside the pairing process (pairproc), playing what WhatsApp does
    there. The script is a JSON list in $NC_PAIR_SCRIPT, one step each:
    {"qr": data} a QR code; {"pair": true|false, "error": …} the phone's answer (true links the
    store first, as whatsmeow does); {"status": s} how whatsmeow's QR phase ended; {"wait": path}
    nothing until that file exists; {"block": true} the event loop blocked for good (a Go call
    that never returns); {"hang": true} nothing more, and stop() never ends (neonize 0.5.2
    stopped during pairing); {"fail": text} the connect fails."""

    on_login_status = staticmethod(lambda status: None)

    async def connect(self, *proxy):
        self.calls.append(("connect",))
        steps = json.loads(os.environ["NC_PAIR_SCRIPT"])
        self._stop = asyncio.Event()

        async def play():
            for step in steps:
                if "qr" in step:
                    await self.event.handlers["qr"](self, step["qr"].encode())
                elif "pair" in step:
                    if step["pair"]:
                        link_session(self.session, OWNER)
                    await self.event.handlers[PairStatusEv](self, pair_status(step["pair"], step.get("error", "")))
                elif "status" in step:
                    self.on_login_status(step["status"])
                elif "wait" in step:
                    while not Path(step["wait"]).exists():
                        await asyncio.sleep(0.01)
                elif "block" in step:
                    time.sleep(3600)
                elif "hang" in step:
                    self.stop_ends_task = False
                elif "fail" in step:
                    raise NeonizeError(step["fail"])
            await self._stop.wait()
        return asyncio.ensure_future(play())

    async def PairPhone(self, phone: str, push: bool) -> str:
        return f"ABCD-{phone[-4:]}"  # shows which digits arrived


# How the channel runs the pairing process in these tests: pairproc itself, with the stand-in.
PAIR_CHILD = (sys.executable, "-c", f"import sys; sys.path[:0] = [{str(ROOT)!r}, {str(TESTS)!r}]; "
              "import test_whatsapp as t; from nanoclaw.channels.whatsapp import pairproc; "
              "pairproc.main(client_factory=t.ScriptedPairing)")


def group_info(user: str, name: str, members: int) -> GroupInfo:
    return GroupInfo(JID=jid(user, "g.us"), GroupName=GroupName(Name=name, NameSetAt=0),
                     Participants=[GroupParticipant(JID=jid(f"49{i}"), LID=EMPTY, PhoneNumber=EMPTY,
                                                    IsAdmin=False, IsSuperAdmin=False, DisplayName="",
                                                    Error=0) for i in range(members)])


class Harness:
    """A real ChannelDaemon (both backends) over a real SQLite DB, WhatsApp on the recording client."""

    def __init__(self, tmp: Path, paired: bool = True, **whatsapp) -> None:
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
        self.session = self.cfg.state_dir / "whatsapp" / "session.db"
        if paired:
            link_session(self.session, OWNER)

    async def start(self, connected: bool = True) -> "Harness":
        self.daemon = ChannelDaemon(self.cfg)
        await self.daemon.setup()
        self.wa = next(b for b in self.daemon.backends if isinstance(b, WhatsAppBackend))
        self.client: RecordingClient = self.wa.conn.client
        if connected:
            await self.connect()
        return self

    async def connect(self) -> None:
        """WhatsApp answers the channel's connect (a linked session connects by itself)."""
        await wait_until(lambda: ("connect",) in self.client.calls)
        await self.fire(ConnectedEv(status=True))

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
    monkeypatch.setattr(WhatsAppBackend, "pair_command", PAIR_CHILD)
    made: list[Harness] = []

    def make(paired: bool = True, **whatsapp) -> Harness:
        h = Harness(tmp_path / f"h{len(made)}", paired, **whatsapp)
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
    b = Backoff(2.0, 300.0)
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


def test_the_default_send_rate_stays_under_what_gets_accounts_banned():
    """whatsmeow's users report more than about 5 messages a minute as what gets an account
    banned: the defaults send a 3-part answer at once, then one message every 15 s."""
    wcfg = config_mod.WhatsAppConfig()
    assert wcfg.send_rate_per_minute <= 5 and wcfg.send_burst <= 3
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    async def go() -> list[float]:
        bucket = TokenBucket(wcfg.send_rate_per_minute, wcfg.send_burst, clock=lambda: now[0], sleep=sleep)
        return [await bucket.acquire() for _ in range(6)]
    assert run(go()) == pytest.approx([0, 0, 0, 15.0, 15.0, 15.0])
    assert now[0] == pytest.approx(45.0)  # six messages take 45 s, not one second


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


@contextlib.contextmanager
def neonize_dispatch(h: Harness):
    """neonize's own Event.execute, wired to the channel's MessageEv handler on this loop: the
    function it yields hands a MessageEv over as neonize's Go callback does (call it from
    another thread, as Go does)."""
    from neonize.aioze import events as events_mod
    from neonize.aioze.events import Event
    from neonize.events import EVENT_TO_INT
    dispatch = Event(h.client)
    dispatch.list_func[EVENT_TO_INT[MessageEv]] = h.client.event.handlers[MessageEv]
    saved, events_mod.event_global_loop = events_mod.event_global_loop, asyncio.get_running_loop()

    def deliver(ev: MessageEv) -> None:
        data = ev.SerializeToString()
        buf = ctypes.create_string_buffer(data, len(data))
        dispatch.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[MessageEv])
    try:
        yield deliver
    finally:
        events_mod.event_global_loop = saved


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
        reply = await deliver(h.daemon, {"chat": chat, "text": "**Done.**\n\n" + "word " * 20, "outbox_id": 7})
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
        first = await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 9})
        h.client.fail_send_at = None
        second = await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 9})
        third = await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 9})
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
        reply = await deliver(h.daemon, {"chat": h.main.jid, "text": "hi", "outbox_id": 1})
        await h.close()
        return reply, h.rows()
    reply, rows = run(go())
    assert not reply["ok"] and "not connected" in reply["error"] and rows == []


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


async def wait_until(pred, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


def test_failed_connects_are_retried_with_capped_backoff_then_connected(harness):
    from neonize.exc import NeonizeError

    async def go():
        h = harness()
        waits: list[float] = []
        h_start = h.start(connected=False)
        # no network at boot: four failures, then WhatsApp answers
        orig = RecordingClient.__init__

        def init(self, session):
            orig(self, session)
            self.connect_failures = [NeonizeError("dial tcp: no route to host")] * 4
        RecordingClient.__init__ = init
        try:
            await h_start
        finally:
            RecordingClient.__init__ = orig
        wa = h.wa
        real_wait = wa.conn._wait

        statuses: list[str] = []

        async def recording_wait(timeout):
            if timeout is not None:
                waits.append(timeout)
                statuses.append(wa.status())
            await real_wait(0)
        wa.conn._wait = recording_wait
        await wait_until(lambda: sum(c == ("connect",) for c in h.client.calls) == 5)
        status_while_retrying = statuses[0]
        await h.fire(ConnectedEv(status=True))
        connected = wa.status()
        # a drop of a logged-in session: whatsmeow reconnects itself, we only report it
        await h.fire(DisconnectedEv(status=True))
        reconnecting = wa.status()
        daemon_status = h.daemon.status()
        await h.close()
        return waits, status_while_retrying, connected, reconnecting, daemon_status, h.wa.conn.backoff.attempt
    waits, retrying, connected, reconnecting, daemon_status, attempt = run(go())
    assert waits[:4] == [0.01, 0.02, 0.04, 0.04]  # reconnect_min doubling, capped at reconnect_max
    assert retrying == "disconnected — next attempt in 0s (connect failed: dial tcp: no route to host)"
    assert connected == f"connected as {OWNER}@s.whatsapp.net" and attempt == 0  # backoff reset
    assert reconnecting == "disconnected — reconnecting"
    assert daemon_status.startswith("whatsapp: disconnected — reconnecting; terminal:")


def test_logged_out_stops_retrying_and_says_so_once(harness, caplog):
    from neonize.proto.Neonize_pb2 import LoggedOut

    async def go():
        h = await harness().start()
        await wait_until(lambda: ("connect",) in h.client.calls)
        ev = LoggedOutEv.FromString(LoggedOut(OnConnect=False, Reason=1).SerializeToString())
        await h.fire(ev)
        await h.fire(ev)  # WhatsApp may say it twice: one error line
        await wait_until(h.wa.conn.parked.is_set)  # the loop waits for pairing: no new connect attempt
        connects = sum(c == ("connect",) for c in h.client.calls)
        status = h.wa.status()
        send = await deliver(h.daemon, {"chat": h.main.jid, "text": "hi", "outbox_id": 3})
        await h.close()
        return connects, status, send, h.client.calls
    with caplog.at_level("WARNING", logger="nanoclaw.whatsapp"):
        connects, status, send, calls = run(go())
    assert connects == 1 and ("stop",) in calls
    assert status == "logged out — run `nanoclaw pair`"
    assert [r.levelname for r in caplog.records if "logged out" in r.getMessage()] == ["ERROR"]
    assert not send["ok"] and "logged out" in send["error"]


def test_stream_replaced_also_stops_retrying(harness):
    async def go():
        h = await harness().start()
        await wait_until(lambda: ("connect",) in h.client.calls)
        await h.fire(StreamReplacedEv())
        await wait_until(h.wa.conn.parked.is_set)
        connects = sum(c == ("connect",) for c in h.client.calls)
        status = h.wa.status()
        await h.close()
        return connects, status
    connects, status = run(go())
    assert connects == 1 and status.startswith("replaced — another program uses this WhatsApp session")


def test_an_unpaired_session_is_never_connected_by_the_channel(harness):
    """The defect: the channel's client connected an unlinked session, whatsmeow went into its
    QR phase, and stopping it there never ends in neonize 0.5.2 (the channel hung for good)."""
    async def go():
        h = await harness(paired=False).start(connected=False)
        await wait_until(h.wa.conn.parked.is_set)
        status, stuck = h.wa.status(), h.daemon.stuck()
        await h.close()
        return status, stuck, h.client.calls
    status, stuck, calls = run(go())
    assert status == "not paired — run `nanoclaw pair`" and stuck == ""
    assert ("connect",) not in calls


def connects(h: Harness) -> int:
    return h.client.calls.count(("connect",))


def test_a_temporary_ban_is_waited_out_then_the_channel_connects_again(harness):
    """The defect: a ban only set a status, and whatsmeow never reconnects after one:
    WhatsApp stayed dead until someone restarted the unit."""
    async def go():
        h = await harness().start()
        banned_at = time.monotonic()
        await h.fire(TemporaryBanEv(Code=TemporaryBanEv.SEND_TO_TOO_MANY_PEOPLE, Expire=1))
        status, stopped = h.wa.status(), ("stop",) in h.client.calls
        send = await deliver(h.daemon, {"chat": h.main.jid, "text": "hi", "outbox_id": 4})
        still_one = connects(h)
        await wait_until(lambda: connects(h) == 2, 5)
        waited = time.monotonic() - banned_at
        await h.connect()
        after = h.wa.status()
        await h.close()
        return status, stopped, send, still_one, waited, after
    status, stopped, send, still_one, waited, after = run(go())
    assert status.startswith("temporarily banned by WhatsApp (send to too many people); next attempt at ")
    assert stopped and still_one == 1 and not send["ok"]
    assert waited >= 0.9  # not before the ban's expiry
    assert after == f"connected as {OWNER}@s.whatsapp.net"


def test_a_connect_failure_is_retried_with_backoff(harness):
    from neonize.proto.Neonize_pb2 import Node

    async def go():
        h = await harness().start()
        statuses: list[str] = []
        h.daemon.notify = lambda line: statuses.append(line)
        failure = ConnectFailureEv(Reason=ConnectFailureEv.DESCRIPTOR.fields_by_name["Reason"].enum_type
                                   .values_by_name["INTERNAL_SERVER_ERROR"].number, Message="", Raw=Node(Tag="failure"))
        await h.fire(failure)
        await wait_until(lambda: connects(h) == 2)
        await h.fire(failure)  # again: the backoff grows
        await wait_until(lambda: connects(h) == 3)
        await h.connect()
        await h.close()
        return statuses, h.wa.conn.backoff.attempt
    statuses, attempt = run(go())
    retrying = [s for s in statuses if "next attempt" in s]
    assert retrying and "connect failure: internal server error" in retrying[0]
    assert attempt == 0  # reset once connected


def test_a_lost_session_is_told_in_the_main_chat_when_that_is_on_another_channel(harness):
    from nanoclaw.core.protocol import Spool

    async def go():
        h = await harness().start()
        Group.update(jid="main@term").where(Group.folder == "main").execute()
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))  # said twice: told once
        spool = Spool(h.cfg.spool_dir / "router")
        notices = [e.body for e in spool.take(spool.claim_new())]
        await h.close()
        return notices, h.wa.status()
    notices, status = run(go())
    assert status == "logged out — run `nanoclaw pair`"
    assert len(notices) == 1
    assert notices[0]["chat"] == "main@term" and notices[0]["kind"] == "notice"
    assert notices[0]["text"].startswith("whatsapp: WhatsApp logged this server out")


def test_a_connect_that_never_concludes_is_reported_stuck(harness):
    """A dial through a silent network, a connect no event ever concludes: past client_timeout
    the channel says it is stuck (and so stops feeding systemd's watchdog)."""
    async def go():
        h = await harness(client_timeout=0.2).start(connected=False)
        await wait_until(lambda: connects(h) == 1)
        early = h.daemon.stuck()
        await wait_until(lambda: h.daemon.stuck())
        stuck, status = h.daemon.stuck(), h.daemon.status()
        await h.fire(ConnectedEv(status=True))
        after = h.daemon.stuck()
        await h.close()
        return early, stuck, status, after
    early, stuck, status, after = run(go())
    assert early == "" and after == ""
    assert stuck.startswith("the WhatsApp client is stuck: connecting for ")
    assert "STUCK: the WhatsApp client is stuck" in status


def test_a_stop_that_never_ends_is_reported_stuck_and_shutdown_does_not_wait_for_it(harness):
    async def go():
        h = await harness(client_timeout=0.2).start()
        h.client.stop_ends_task = False
        await h.fire(StreamReplacedEv())
        await wait_until(lambda: h.daemon.stuck())
        stuck = h.daemon.stuck()
        started = time.monotonic()
        await h.close()
        return stuck, time.monotonic() - started, h.wa.lingering
    stuck, took, lingering = run(go())
    assert stuck.startswith("the WhatsApp client is stuck: stopping for ")
    assert took < 15 and lingering


def test_a_qr_code_on_the_channels_own_client_throws_the_process_away(harness):
    """The store lost its device after the channel looked: the client shows QR codes, and
    neonize 0.5.2 can never stop it there. Only a new process helps: stuck at once."""
    async def go():
        h = await harness().start(connected=False)
        await wait_until(lambda: connects(h) == 1)
        await h.fire(b"2@qrdata,1,2,3", "qr")
        stuck, status = h.daemon.stuck(), h.wa.status()
        await h.close()
        return stuck, status
    stuck, status = run(go())
    assert stuck.startswith("the WhatsApp client is stuck: asking for a QR scan")
    assert status == "not paired — run `nanoclaw pair`"


def test_neonize_cannot_hold_the_ack_until_the_message_is_stored():
    """whatsmeow acknowledges a message once its Go event handler returns (SynchronousAck
    would make it wait for that handler). neonize's handler only queues the event for
    Python, and neonize's Python dispatch (Event.execute, what the Go callback calls)
    returns before our handler has even started; neonize exposes no SynchronousAck. So the
    ack always precedes the store: what a crash can lose is said in the README."""
    import inspect

    import neonize
    from neonize.aioze import events as events_mod
    from neonize.aioze.client import NewAClient
    from neonize.aioze.events import Event
    from neonize.events import EVENT_TO_INT

    finished: list[str] = []

    async def go():
        loop = asyncio.get_running_loop()
        saved, events_mod.event_global_loop = events_mod.event_global_loop, loop
        release = asyncio.Event()
        try:
            dispatch = Event(None)

            async def handler(client, ev):  # our store, still going
                await release.wait()
                finished.append(ev.Info.ID)
            dispatch.list_func[EVENT_TO_INT[MessageEv]] = handler
            data = message_ev(jid(FAMILY, "g.us"), jid(ALICE), "ACK1", "hello").SerializeToString()
            buf = ctypes.create_string_buffer(data, len(data))

            def go_callback() -> list[str]:
                dispatch.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[MessageEv])
                return list(finished)  # execute returned: the Go side goes on (and acks)
            seen = await asyncio.wait_for(asyncio.to_thread(go_callback), 5)
            release.set()
            await wait_until(lambda: finished)
            return seen
        finally:
            release.set()
            events_mod.event_global_loop = saved
    assert run(go()) == []
    sources = "".join(p.read_text(errors="replace") for p in Path(neonize.__file__).parent.rglob("*.py"))
    assert "SynchronousAck" not in sources
    assert list(inspect.signature(NewAClient.connect).parameters) == ["self", "proxy_settings"]


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


class FakeWriter:
    """The pairing CLI's end of the socket, as the daemon sees it."""

    def __init__(self, gone: bool = False) -> None:
        self.lines: list[dict] = []
        self.gone = gone  # the terminal went away (Ctrl-C): writing fails

    def write(self, data: bytes) -> None:
        self.lines += [json.loads(line) for line in data.decode().splitlines()]

    async def drain(self) -> None:
        if self.gone:
            raise BrokenPipeError("the terminal went away")


def pair_status(ok: bool, error: str = "") -> PairStatusEv:
    from neonize.proto.Neonize_pb2 import PairStatus
    ev = PairStatus(ID=jid(OWNER, device=7), BusinessName="", Platform="android", Status=2 if ok else 1,
                    Error=error)
    return PairStatusEv.FromString(ev.SerializeToString())


def pair_script(monkeypatch, *steps: dict) -> None:
    monkeypatch.setenv("NC_PAIR_SCRIPT", json.dumps(steps))


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_pairing_runs_in_its_own_process_then_the_channel_connects(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@first,code"}, {"qr": "2@second,code"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        await wait_until(h.wa.conn.parked.is_set)
        connects_during_pairing: list[int] = []

        class Watching(FakeWriter):
            def write(self, data: bytes) -> None:  # each code shown: is the channel's client off?
                super().write(data)
                connects_during_pairing.append(h.client.calls.count(("connect",)))
        writer = Watching()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, writer), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)  # the channel connects after the child
        await h.fire(ConnectedEv(status=True))
        status = h.wa.status()
        again = await h.daemon.handle({"op": "pair"}, FakeWriter())
        await h.close()
        return writer.lines, reply, connects_during_pairing, status, again
    lines, reply, connects_during_pairing, status, again = run(go())
    assert lines == [{"op": "pair", "event": "qr", "data": "2@first,code"},
                     {"op": "pair", "event": "qr", "data": "2@second,code"}]
    assert reply == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}
    assert connects_during_pairing == [0, 0]  # the channel's own client stayed off while pairing ran
    assert status == f"connected as {OWNER}@s.whatsapp.net"
    assert again["ok"] and again["already"] and again["paired"] == f"{OWNER}@s.whatsapp.net"


def test_pairing_with_a_phone_number_streams_the_code_and_reports_failure(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@qr"}, {"pair": False, "error": "the phone said no"})

    async def go():
        h = await harness(paired=False).start(connected=False)
        writer = FakeWriter()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair", "phone": "+49 170 0000001"}, writer), 30)
        bad = await h.daemon.handle({"op": "pair", "phone": "call me maybe"}, FakeWriter())
        status = h.wa.status()
        await h.close()
        return writer.lines, reply, bad, status
    lines, reply, bad, status = run(go())
    assert lines == [{"op": "pair", "event": "code", "code": "ABCD-0001"}]  # PairPhone got the digits
    assert reply == {"ok": False, "error": "pairing failed: the phone said no"}
    assert not bad["ok"] and "phone number" in bad["error"]
    assert status == "not paired — run `nanoclaw pair`"


def test_when_the_codes_run_out_pairing_says_so_and_the_channel_stays_free(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@x"}, {"status": "timeout"})

    async def go():
        h = await harness(paired=False).start(connected=False)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await wait_until(h.wa.conn.parked.is_set)
        status, stuck = h.wa.status(), h.daemon.stuck()
        await h.close()
        return reply, status, stuck, h.client.calls
    reply, status, stuck, calls = run(go())
    assert not reply["ok"] and "the QR codes ran out" in reply["error"]
    assert "Run `nanoclaw pair` again" in reply["error"]
    assert status == "not paired — run `nanoclaw pair`" and stuck == "" and ("connect",) not in calls


def test_the_pairing_timeout_is_inside_whatsmeows_qr_window():
    assert config_mod.WhatsAppConfig().pair_timeout < config_mod.QR_WINDOW <= 160
    with pytest.raises(config_mod.ConfigError, match="QR codes run out"):
        config_mod.WhatsAppConfig(pair_timeout=180.0)


def test_a_pairing_process_that_hangs_is_killed_and_pairing_can_start_again(harness, monkeypatch):
    """The hang neonize can produce is the process's, never the channel's: past its timeout
    the child is killed, the answer is plain, and the next `nanoclaw pair` works."""
    monkeypatch.setattr(pairing_mod, "GRACE", 0.5)
    pair_script(monkeypatch, {"qr": "2@x"}, {"block": True})

    async def go():
        h = await harness(paired=False, pair_timeout=0.5).start(connected=False)
        task = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, FakeWriter()))
        await wait_until(lambda: h.wa.conn.pairing is not None and h.wa.conn.pairing.proc is not None, 10)
        pid = h.wa.conn.pairing.proc.pid
        started = time.monotonic()
        reply = await asyncio.wait_for(task, 30)
        took = time.monotonic() - started
        gone = not alive(pid)
        pair_script(monkeypatch, {"qr": "2@y"}, {"pair": True})
        # The second child must only start and link: give it time on a loaded machine.
        h.wa.conn.wcfg = dataclasses.replace(h.wa.conn.wcfg, pair_timeout=30.0)
        again = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await h.close()
        return reply, took, gone, again
    reply, took, gone, again = run(go())
    assert not reply["ok"] and "hung and was stopped" in reply["error"]
    assert took < 10 and gone
    assert again == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_pairing_can_be_abandoned_and_run_again_without_a_restart(harness, monkeypatch, tmp_path):
    gate = tmp_path / "phone-scanned"
    pair_script(monkeypatch, {"qr": "2@first"}, {"wait": str(gate)}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        # the terminal went away (Ctrl-C): the first code cannot be shown
        abandoned = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter(gone=True)), 30)
        status_after = h.wa.status()
        # a second `nanoclaw pair` while a first one still waits takes over from it
        w1, w2 = FakeWriter(), FakeWriter()
        first = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, w1))
        await wait_until(lambda: w1.lines, 10)
        first_pid = h.wa.conn.pairing.proc.pid
        second = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, w2))
        superseded = await asyncio.wait_for(first, 10)
        await wait_until(lambda: w2.lines, 10)
        gate.touch()
        paired = await asyncio.wait_for(second, 30)
        await h.close()
        return abandoned, status_after, superseded, alive(first_pid), paired
    abandoned, status_after, superseded, first_alive, paired = run(go())
    assert abandoned == {"ok": False, "error": "abandoned"}
    assert status_after == "not paired — run `nanoclaw pair`"
    assert superseded == {"ok": False, "error": "another `nanoclaw pair` took over"} and not first_alive
    assert paired == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_a_pairing_process_that_dies_without_an_answer_is_reported(harness, monkeypatch):
    monkeypatch.setattr(WhatsAppBackend, "pair_command", (sys.executable, "-c", "import sys; sys.exit(3)"))

    async def go():
        h = await harness(paired=False).start(connected=False)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        status = h.wa.status()
        await h.close()
        return reply, status
    reply, status = run(go())
    assert reply == {"ok": False, "error": "the pairing process ended without an answer (exit status 3)"}
    assert status == "not paired — run `nanoclaw pair`"


def test_pair_on_a_linked_session_that_is_still_connecting_leaves_it_alone(harness):
    """The defect: `nanoclaw pair` before the first ConnectedEv waited for a pairing that could
    never come, then stopped the healthy client as 'unpaired'."""
    async def go():
        h = await harness(pair_timeout=0.3).start(connected=False)
        await wait_until(lambda: ("connect",) in h.client.calls)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 5)
        await h.fire(ConnectedEv(status=True))
        status = h.wa.status()
        await h.close()
        return reply, status, h.client.calls
    reply, status, calls = run(go())
    assert reply == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net", "already": True, "status": "connecting"}
    assert calls.count(("stop",)) == 1  # only the shutdown's
    assert calls.count(("connect",)) == 1
    assert status == f"connected as {OWNER}@s.whatsapp.net"


def test_after_a_logout_pair_links_again_and_the_channel_reconnects(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@again"}, {"pair": True})

    async def go():
        h = await harness().start()
        unlink_session(h.session)  # what whatsmeow does on a logout, before saying so
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))
        await wait_until(h.wa.conn.parked.is_set)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await wait_until(lambda: h.client.calls.count(("connect",)) == 2)
        await h.close()
        return reply
    assert run(go()) == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_cli_pair_and_discover_through_the_channel_socket(harness, monkeypatch, capsys):
    import argparse

    from nanoclaw.admin import cli
    pair_script(monkeypatch, {"qr": "2@Zm9vYmFy,qr,code"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        server = await asyncio.start_unix_server(h.daemon._serve_client, path=str(h.cfg.socket("channel")))
        paired_rc = await asyncio.wait_for(asyncio.to_thread(cli.cmd_pair, h.cfg, argparse.Namespace(phone=None)), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)
        await h.fire(ConnectedEv(status=True))
        h.client.groups = [group_info(FAMILY, "Family", 4), group_info("120363000000000002", "Book club", 9)]
        discover_rc = await asyncio.to_thread(cli.cmd_discover, h.cfg)
        server.close()
        await h.close()
        return paired_rc, discover_rc
    paired_rc, discover_rc = run(go())
    out = capsys.readouterr().out
    assert paired_rc == 0 and discover_rc == 0
    assert "Scan with WhatsApp" in out and any(block in out for block in "\u2580\u2584\u2588")  # a drawn QR
    assert f"paired as {OWNER}@s.whatsapp.net" in out
    assert "Book club" in out and "120363000000000002@g.us" in out and "family" in out
    assert "nanoclaw groups add FOLDER --jid JID" in out
    assert f"nanoclaw groups add main --main --jid {OWNER}@s.whatsapp.net" in out


CLI_ENV = ("NANOCLAW_CONFIG", "NANOCLAW_STATE_DIR", "NANOCLAW_RUNTIME_DIR", "NANOCLAW_CONFIG_DIR")


def test_nanoclaw_pair_interrupted_then_run_again(harness, monkeypatch, tmp_path):
    """The real CLI, interrupted with Ctrl-C while it shows a code, then run again at once."""
    gate = tmp_path / "next-code"
    pair_script(monkeypatch, {"qr": "2@first"}, {"wait": str(gate)}, {"qr": "2@second"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        (h.cfg.config_dir).mkdir(parents=True, exist_ok=True)
        (h.cfg.config_dir / "config.toml").write_text('channels = ["whatsapp", "terminal"]\n')
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOCLAW_CONFIG": str(h.cfg.config_dir / "config.toml"),
               "NANOCLAW_STATE_DIR": str(h.cfg.state_dir), "NANOCLAW_RUNTIME_DIR": str(h.cfg.runtime_dir),
               "NANOCLAW_CONFIG_DIR": str(h.cfg.config_dir)}
        server = await asyncio.start_unix_server(h.daemon._serve_client, path=str(h.cfg.socket("channel")))

        async def cli_pair():
            # Ctrl-C as at a terminal: a suite started in the background (a shell without job
            # control ignores SIGINT there, and children inherit that) must not change it.
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "nanoclaw", "pair", env=env,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE,
                                                        preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                         signal.SIG_DFL))
        first = await cli_pair()
        shown = await asyncio.wait_for(first.stdout.readuntil(b"waiting for the phone"), 30)
        child = h.wa.conn.pairing.proc.pid
        first.send_signal(signal.SIGINT)
        first_rc = await asyncio.wait_for(first.wait(), 10)
        gate.touch()  # the next code comes: the daemon finds the terminal gone
        await wait_until(lambda: h.wa.conn.pairing is None and not alive(child), 10)
        status_between = h.wa.status()
        gate.unlink()
        second = await cli_pair()
        await asyncio.wait_for(second.stdout.readuntil(b"waiting for the phone"), 30)
        gate.touch()
        out, err = await asyncio.wait_for(second.communicate(), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)
        server.close()
        await h.close()
        return shown, first_rc, status_between, second.returncode, out.decode(), err.decode()
    shown, first_rc, status_between, rc, out, err = run(go())
    assert b"Scan with WhatsApp" in shown and first_rc == 130
    assert status_between == "not paired — run `nanoclaw pair`"
    assert rc == 0, err
    assert f"paired as {OWNER}@s.whatsapp.net" in out


def test_discover_lists_groups_and_names_are_refreshed(harness):
    async def go():
        h = await harness().start(connected=False)
        h.client.groups = [group_info(FAMILY, "Family (renamed)", 4), group_info("120363000000000002", "Book club", 9)]
        offline = await h.daemon.handle({"op": "discover_groups"}, None)
        await h.connect()
        found = await h.daemon.handle({"op": "discover_groups"}, None)
        await wait_until(lambda: Group.get(Group.folder == "family").name == "Family (renamed)")
        await h.close()
        return offline, found
    offline, found = run(go())
    assert not offline["ok"] and "not connected" in offline["error"]
    assert found["ok"] and found["self"] == f"{OWNER}@s.whatsapp.net"
    assert found["groups"] == [
        {"name": "Book club", "jid": "120363000000000002@g.us", "participants": 9, "folder": ""},
        {"name": "Family (renamed)", "jid": f"{FAMILY}@g.us", "participants": 4, "folder": "family"}]


def test_terminal_keeps_working_beside_a_disconnected_whatsapp(harness):
    from neonize.exc import NeonizeError

    async def go():
        h = harness()
        orig = RecordingClient.__init__

        def init(self, session):
            orig(self, session)
            self.connect_failures = [NeonizeError("no network")] * 1000
        RecordingClient.__init__ = init
        try:
            await h.start(connected=False)
        finally:
            RecordingClient.__init__ = orig
        got = await h.daemon.handle({"op": "inbound", "group": "term", "text": "hello from the terminal",
                                     "id": "t1"}, None)
        sent = await deliver(h.daemon, {"chat": "term@term", "text": "**hi**", "outbox_id": 1})
        mode = oct(h.wa.conn.dir.stat().st_mode & 0o777)
        await h.close()
        return got, sent, h.rows("term@term"), mode
    got, sent, rows, mode = run(go())
    assert got["ok"] and sent["ok"]
    assert [(r.text, r.is_bot) for r in rows] == [("hello from the terminal", False), ("**hi**", True)]
    assert mode == "0o700"


def test_session_file_is_private(harness):
    async def go():
        h = await harness().start()
        await wait_until(lambda: h.wa.conn.session.exists())
        await h.fire(ConnectedEv(status=True))
        mode = h.wa.conn.session.stat().st_mode & 0o777
        await h.close()
        return mode
    assert run(go()) == 0o600


OFFLINE_PROBE = r"""
import asyncio, ctypes, json, socket, sys
from pathlib import Path
connects = []
def audit(event, args):
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family != socket.AF_UNIX:
            connects.append(repr(address))
sys.addaudithook(audit)
import logging
logging.basicConfig(level=logging.INFO, force=True)
import neonize  # must not download the Go library
from neonize.aioze.client import NewAClient
from neonize.aioze import events as events_mod
from neonize.events import EVENT_TO_INT
from neonize.aioze.events import MessageEv
tmp = Path(sys.argv[1])
client = NewAClient(str(tmp / "session.db"))
got = []

async def main():
    events_mod.event_global_loop = asyncio.get_running_loop()  # what connect() would set
    async def handler(c, ev):
        got.append((ev.Info.ID, ev.Message.conversation))
    client.event(MessageEv)(handler)
    data = bytes.fromhex(sys.argv[2])
    buf = ctypes.create_string_buffer(data, len(data))
    # the entry point the Go callback uses
    client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[MessageEv])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if got:
            break
asyncio.run(main())
print(json.dumps({"connects": connects, "got": got, "session_exists": (tmp / "session.db").exists()}))
"""


def test_neonize_imports_and_builds_a_client_offline(tmp_path):
    """No download at import, no network at construction; events arrive through neonize's own dispatch."""
    ev = message_ev(jid(FAMILY, "g.us"), jid(ALICE), "OFF1", "through neonize")
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE, str(tmp_path), ev.SerializeToString().hex()],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["connects"] == []
    assert result["got"] == [["OFF1", "through neonize"]]
    assert result["session_exists"] is False  # created at connect(), not before


def test_the_channel_without_whatsapp_never_loads_neonize():
    code = ("import sys; import nanoclaw.daemons.channel, nanoclaw.admin.cli, nanoclaw.daemons.queue; "
            "print('neonize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_a_resend_after_a_channel_restart_is_recognised_by_its_outbox_row(harness):
    """WhatsApp picks its own ids; the channel matches a repeated deliver by the outbox row,
    so a lost confirmation followed by a restart (the backend's memory gone) sends nothing twice."""
    async def go():
        h = await harness().start()
        first = await deliver(h.daemon, {"chat": h.main.jid, "text": "once only", "outbox_id": 21})
        h.daemon.whatsapp().outbound._done.clear()  # what a restart forgets
        again = await deliver(h.daemon, {"chat": h.main.jid, "text": "once only", "outbox_id": 21})
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
        reply = await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 5, "quote": quote})
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
        reply = await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 7, "sender": "Andy"})
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
        await deliver(h.daemon, {"chat": h.main.jid, "text": text, "outbox_id": 8, "sender": "Andy"})
        await h.close()
        return [m.conversation for m in h.client.messages]
    sent = run(go())
    assert sent[0] == "Andy: part 0 " + "y" * 20 and sent[1] == "part 1 " + "y" * 20
    assert all(len(m) <= 40 for m in sent)


def test_the_main_agents_list_of_chats_holds_the_whatsapp_groups_we_are_in(harness):
    """What list_available_groups reads: written by the channel into main's read-only in/."""
    async def go():
        h = await harness().start()
        h.client.groups = [group_info(FAMILY, "Family", 4), group_info("120363000000000002", "Book club", 9)]
        await h.daemon.work()
        path = h.cfg.ipc_dir / "main" / "in" / "available_groups.json"
        chats = json.loads(path.read_text())
        await h.close()
        return chats
    chats = run(go())
    assert {"jid": "120363000000000002@g.us", "name": "Book club", "members": 9, "registered_as": None} in chats
    assert {"jid": f"{FAMILY}@g.us", "name": "Family", "members": 4, "registered_as": "family"} in chats
    assert {"jid": "term@term", "name": "term", "registered_as": "term"} in chats  # registered, not on WhatsApp


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


def test_a_state_change_is_published_at_once(harness):
    """systemd's STATUS= follows a logout when it happens, not at the next work pass."""
    async def go():
        h = await harness().start()
        published = []
        h.daemon.notify = published.append
        await h.fire(LoggedOutEv(OnConnect=True, Reason=1))
        await asyncio.sleep(0)
        await h.close()
        return published
    published = run(go())
    assert any(p.startswith("STATUS=") and "logged out" in p for p in published), published


# -- neonize's Go side and the environment -----------------------------------------------

def test_neonizes_go_side_sees_only_the_environment_the_process_started_with():
    """Why the channel executes itself again for NEONIZE_BOT_TAG: setting os.environ, even
    before the library loads, changes nothing for Go (GODEBUG=inittrace makes Go's runtime
    print a line per package init when, and only when, it sees the variable)."""
    late = "import os; os.environ['GODEBUG'] = 'inittrace=1'; import neonize.aioze.client"
    seen_late = subprocess.run([sys.executable, "-c", late], capture_output=True, text=True, timeout=60)
    seen_at_start = subprocess.run([sys.executable, "-c", "import neonize.aioze.client"], capture_output=True,
                                   text=True, timeout=60, env={**os.environ, "GODEBUG": "inittrace=1"})
    assert "init " not in seen_late.stderr
    assert "init " in seen_at_start.stderr


@pytest.mark.parametrize("bot_label,expected", [(None, "off"), (True, "on")])
def test_the_channel_runs_with_neonizes_bot_label_as_configured(make_system, bot_label, expected):
    """neonize adds <bot biz_bot="1"/> to every message to a person unless NEONIZE_BOT_TAG=off
    is in the environment its Go side started with: the channel process has it, from the start
    of its (re-executed) image, whatever it was started with."""
    whatsapp = {"proxy": closed_port()} | ({"bot_label": bot_label} if bot_label is not None else {})
    s = make_system(channels=["whatsapp", "terminal"], whatsapp=whatsapp)
    s.env.pop("NEONIZE_BOT_TAG", None)
    s.start("channel")
    pid = s.procs["channel"].pid
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    status = s.request("channel", {"op": "status"})["status"]
    s.stop("channel")
    assert f"NEONIZE_BOT_TAG={expected}".encode() in environ
    assert status.startswith("whatsapp: not paired")  # the same process, serving as usual


# -- the real neonize client, offline (each in a process of its own: a hang fails, not hangs) --

REAL_LIFECYCLE = r"""
import asyncio, ctypes, json, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import test_whatsapp as t
from whatsapp_offline import SilentProxy, link_session, map_lid
from neonize.aioze.events import ConnectedEv, MessageEv
from neonize.events import EVENT_TO_INT
from nanoclaw.core import config as config_mod, groups as groups_mod
from nanoclaw.core.models import Message, open_db
from nanoclaw.daemons.channel import ChannelDaemon
from nanoclaw.daemons.channel.deliver import deliver

tmp = Path(sys.argv[1])
proxy = SilentProxy()
cfg = config_mod.Config(state_dir=tmp / "state", runtime_dir=tmp / "run", config_dir=tmp / "etc",
                        channels=("whatsapp", "terminal"),
                        whatsapp=config_mod.WhatsAppConfig(proxy=proxy.url, reconnect_min=0.05, reconnect_max=0.1))
cfg.runtime_dir.mkdir(parents=True)
open_db(cfg.db_path)
groups_mod.add_group(cfg, "main", jid=f"{t.OWNER}@s.whatsapp.net", is_main=True)
groups_mod.add_group(cfg, "alice", jid=f"{t.ALICE}@s.whatsapp.net")
session = cfg.state_dir / "whatsapp" / "session.db"
link_session(session, t.OWNER)
map_lid(session, t.ALICE_LID, t.ALICE)
out = {}


def dispatch(client, ev):  # what neonize's Go callback does, on its own thread
    data = ev.SerializeToString()
    buf = ctypes.create_string_buffer(data, len(data))
    client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[type(ev)])


async def until(pred, timeout=20):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def rows():
    return [(m.chat, m.sender, m.channel_id) for m in Message.select().order_by(Message.id)]


async def main():
    d = ChannelDaemon(cfg)
    await d.setup()
    wa = d.whatsapp()
    await until(lambda: proxy.accepted)  # the real client dials through the proxy, which says nothing
    out["dialing"] = [wa.conn.state, d.stuck()]
    await asyncio.to_thread(dispatch, wa.conn.client, ConnectedEv(status=True))
    await until(lambda: wa.conn.me)
    out["me"] = wa.conn.me  # GetMe on the real client, which loaded the linked store
    lid_dm = t.message_ev(t.jid(t.ALICE_LID, "lid"), t.jid(t.ALICE_LID, "lid"), "R1", "only my lid")
    await asyncio.to_thread(dispatch, wa.conn.client, lid_dm)
    await until(lambda: rows())
    out["mapped"] = rows()  # GetPNFromLID on the real client, from whatsmeow's own store
    # stop while the real client is still dialing: it ends once the dial does (here: the proxy
    # hangs up); then stop again, twice, on the backend and on the client itself
    stopping = asyncio.ensure_future(wa.stop())
    await until(lambda: wa.conn._stopped_by_us)
    proxy.close()
    await asyncio.wait_for(stopping, 30)
    out["after_stop"] = [wa.connected, wa.lingering, wa.conn._task.done()]
    await wa.stop()
    await wa.conn.client.stop()
    await wa.conn.client.stop()
    # events and calls after the stop: GetMe and GetPNFromLID would kill the process now
    await asyncio.to_thread(dispatch, wa.conn.client, ConnectedEv(status=True))
    await asyncio.to_thread(dispatch, wa.conn.client, t.message_ev(t.jid("77000000000055", "lid"),
                                                              t.jid("77000000000055", "lid"), "R2", "late"))
    await asyncio.to_thread(dispatch, wa.conn.client, t.message_ev(
        t.jid("77000000000055", "lid"), t.jid("77000000000055", "lid"), "R3", "late, with my number",
        sender_alt=t.jid(t.ALICE)))
    await until(lambda: len(rows()) == 2)  # R3 stored after R2 (same chat, in order): R2 was handled
    out["late"] = [rows()[-1], wa.connected]
    out["deliver"] = await deliver(d, {"chat": f"{t.ALICE}@s.whatsapp.net", "text": "hi", "outbox_id": 1})
    await wa.typing(f"{t.ALICE}@s.whatsapp.net", True)
    out["discover"] = await wa.discover()
    out["pair"] = await wa.pair(None, None)
    out["client_calls"] = {}
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
    for name, call in (("send", lambda: wa.conn.client.send_message(t.jid(t.ALICE), WAMessage(conversation="x"))),
                       ("groups", wa.conn.client.get_joined_groups),
                       ("download", lambda: wa.conn.client.download_any(WAMessage(imageMessage=t.ImageMessage(
                           URL="https://mmg.whatsapp.net/x", directPath="/v/x", mediaKey=b"k" * 32)))),
                       ("pairphone", lambda: wa.conn.client.PairPhone("491700000001", True))):
        try:
            await call()
            out["client_calls"][name] = "returned"
        except Exception as exc:
            out["client_calls"][name] = str(exc)[:40]
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def test_the_real_client_connects_stops_and_is_called_after_stop_without_harm(tmp_path):
    """neonize's real client on a linked store, dialing a server that never answers: connected
    (through neonize's own dispatch), a bare-LID DM mapped by the real store, a stop while
    dialing, stops twice, then late events and every call the channel makes. GetMe and
    GetPNFromLID kill the process once the client is stopped; the channel never makes them then."""
    proc = subprocess.run([sys.executable, "-c", REAL_LIFECYCLE, str(tmp_path), str(ROOT), str(TESTS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    alice = f"{ALICE}@s.whatsapp.net"
    assert out["dialing"] == ["connecting", ""]
    assert out["me"] == f"{OWNER}@s.whatsapp.net"
    assert out["mapped"] == [[alice, alice, "R1"]]
    assert out["after_stop"] == [False, False, True]
    assert out["late"] == [[alice, alice, "R3"], False]
    assert not out["deliver"]["ok"] and "not connected" in out["deliver"]["error"]
    assert not out["discover"]["ok"]
    assert out["pair"]["ok"] and out["pair"]["already"]
    assert out["client_calls"] == {"send": "client is nil", "groups": "client is nil", "download": "client is nil",
                                   "pairphone": out["client_calls"]["pairphone"]}
    assert "client is nil" in out["client_calls"]["pairphone"]


class NotifyListener:
    """systemd's end of NOTIFY_SOCKET: what the daemon tells it, with when."""

    def __init__(self, path: Path) -> None:
        import socket as socket_mod
        self.sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def drain(self) -> None:
        """Read what is already queued (stamped with the time it is read, not sent)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.2)

    def pings_after(self, t: float) -> int:
        return sum(1 for at, line in self.got if at > t and line == "WATCHDOG=1")


def hung_channel(make_system, tmp_path, proxy: SilentProxy, **env: str):
    """The real channel daemon, its real client dialing a server that never answers."""
    s = make_system(channels=["whatsapp", "terminal"], whatsapp={"proxy": proxy.url, "client_timeout": 1.0})
    link_session(s.state / "whatsapp" / "session.db", OWNER)
    s.env.update(env)
    return s


def test_a_channel_whose_client_hangs_stops_feeding_the_watchdog(make_system, tmp_path):
    """What systemd sees: READY, WATCHDOG=1 while the connect is young, none once it is
    overdue (systemd would now replace the process: tests/system). SIGTERM then still ends
    the process promptly, though the real client's dial lasts a minute."""
    proxy = SilentProxy()
    listener = NotifyListener(tmp_path / "notify")
    s = hung_channel(make_system, tmp_path, proxy, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000")
    try:
        s.start("channel")
        listener.read(0.6)
        fed_while_young = listener.pings_after(0)
        s.wait_for(lambda: "STUCK" in s.request("channel", {"op": "status"})["status"], 10, what="stuck")
        listener.drain()  # pings sent before it was stuck
        stuck_at = time.monotonic()
        listener.read(2.0)
        fed_while_stuck = listener.pings_after(stuck_at)
        proc = s.procs["channel"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert proxy.accepted  # the real client was dialing
    assert fed_while_young >= 1 and fed_while_stuck == 0
    assert any(line.startswith("STATUS=") and "STUCK: the WhatsApp client is stuck: connecting" in line
               for _, line in listener.got)
    assert rc == 0 and took < 20
    assert "watchdog no longer fed: the WhatsApp client is stuck" in s.log("channel")


def test_without_a_watchdog_a_channel_whose_client_hangs_exits_to_be_restarted(make_system, tmp_path):
    proxy = SilentProxy()
    s = hung_channel(make_system, tmp_path, proxy)
    try:
        s.start("channel")
        rc = s.procs["channel"].wait(30)
    finally:
        proxy.close()
    assert rc == 70
    assert "exiting to be restarted: the WhatsApp client is stuck: connecting" in s.log("channel")


def test_the_real_pairing_process_says_when_whatsapp_cannot_be_reached(harness, monkeypatch):
    monkeypatch.setattr(WhatsAppBackend, "pair_command", PAIR_COMMAND)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    async def go():
        h = await harness(paired=False, proxy=closed_port()).start(connected=False)
        refused = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 60)
        status = h.wa.status()
        await h.close()
        return refused, status
    refused, status = run(go())
    assert not refused["ok"] and refused["error"].startswith("cannot reach WhatsApp: ")
    assert status == "not paired — run `nanoclaw pair`"


def test_the_real_pairing_process_ends_on_time_when_whatsapp_never_answers(harness, monkeypatch):
    """The real client in pairproc, dialing a server that never answers: its dial would last a
    minute and a stop would wait for it; the pairing still ends at its own timeout."""
    monkeypatch.setattr(WhatsAppBackend, "pair_command", PAIR_COMMAND)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    proxy = SilentProxy()

    async def go():
        h = await harness(paired=False, proxy=proxy.url, pair_timeout=2.0).start(connected=False)
        started = time.monotonic()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 60)
        took = time.monotonic() - started
        await h.close()
        return reply, took
    try:
        reply, took = run(go())
    finally:
        proxy.close()
    assert proxy.accepted
    assert reply == {"ok": False, "error": "WhatsApp sent no pairing code within 2s: is it reachable from here "
                                           "(network, [whatsapp] proxy)?"}
    assert took < 10


def test_neonize_still_has_the_login_status_callback_pairing_listens_to():
    """pairproc hears how the QR phase ended through neonize's private __onLoginStatus; an
    upgrade that renames it must fail here, not leave pairing deaf."""
    from neonize.aioze.client import NewAClient
    assert callable(getattr(NewAClient, "_NewAClient__onLoginStatus", None))
    assert "_NewAClient__onLoginStatus" in NewAClient.connect_with_proxy.__code__.co_consts[-1].co_names or \
        "_NewAClient__onLoginStatus" in NewAClient.connect_with_proxy.__code__.co_names
