"""What the WhatsApp tests share: neonize events built as neonize hands them over, a recording
stand-in for neonize's client, a scripted pairing child, and a real ChannelDaemon around them.

The tests are test_whatsapp_<module>.py, one file per module of nanoclaw/channels/whatsapp/.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import sys
import time
from pathlib import Path

import pytest
from neonize.aioze.events import ConnectedEv, MessageEv, PairStatusEv
from neonize.exc import NeonizeError
from neonize.proto.Neonize_pb2 import (
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
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
from neonize.utils.jid import Jid2String

from nanoclaw.channels.whatsapp import WhatsAppBackend
from nanoclaw.core import config as config_mod
from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Message, open_db
from nanoclaw.daemons.channel import ChannelDaemon
from nanoclaw.daemons.channel.deliver import deliver

from whatsapp_offline import link_session

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
              "import whatsapp_harness as t; from nanoclaw.channels.whatsapp import pairproc; "
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

    async def deliver(self, req: dict) -> dict:
        """The router's ``deliver`` op, as the channel's socket answers it."""
        return await deliver(self.daemon, req)

    async def close(self) -> None:
        await self.daemon.shutdown()


@pytest.fixture(name="harness")
def harness_fixture(tmp_path, monkeypatch):
    """``harness(paired=True, **whatsapp)`` makes a Harness (a test file imports
    ``harness_fixture``; its tests take ``harness``)."""
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


async def wait_until(pred, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while not pred():
        if loop.time() > end:
            raise AssertionError("condition not reached")
        await asyncio.sleep(0.005)


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


def connects(h: Harness) -> int:
    """How often the channel has told its client to connect."""
    return h.client.calls.count(("connect",))
