"""The WhatsApp backend, on neonize (whatsmeow inside a Go library).

The server is linked to the owner's account as a companion device, so what we
send goes out as the owner. Hence three rules:

* Our own sends come back as ``from_me`` message events (from other linked
  devices and in the owner's self-chat). whatsmeow does not let neonize choose
  a message id, so we remember the ids WhatsApp gave our sends (on disk, so a
  restart does not forget them) and, for an echo that overtakes the send's
  return, the exact chunk still in flight to that chat. Never a text prefix.
* The owner's own messages (``from_me`` but not ours) are real input: the main
  group is the owner's self-chat. A self-chat message's destination is us: a
  DM the owner typed to someone else never passes for it (``chat_of``).
* Only registered chats reach the agent; others are dropped (or stored when
  ``[whatsapp] store_unregistered`` is set) and never answered — the queue
  only ever looks at registered groups' chats. A message naming the trigger
  in an unregistered chat is handed over with the chat's name and size: it
  may ask the owner for approval (core/approvals.py decides, the channel
  keeps it only while that request is open).

neonize calls handlers on our event loop; an async handler's exception would
be silently lost, so every handler is wrapped to log it. There is one handler
per event type (neonize keeps the last registered).

Lifecycle, for a client that may hang (the neonize notes, second half):

* The channel's own client only ever connects a linked session (whatsmeow's
  store holds a device: :mod:`session`). An unlinked one would sit in pairing,
  where neonize 0.5.2 cannot be stopped; pairing runs in its own short-lived
  process (:mod:`pairproc`, driven by :mod:`pairing`) while this client is
  stopped, and the channel connects once it has ended.
* Every connect and every stop has a deadline (``client_timeout``). One that
  passes makes ``stuck()`` say so: the daemon stops feeding systemd's watchdog
  and systemd replaces the process. Nothing here awaits a neonize task without
  a bound, and shutdown does not wait for a Go thread that will not return.
* A failed connect and a connect failure WhatsApp reports are retried with
  capped exponential backoff (our own loop: whatsmeow retries neither), a
  temporary ban after its expiry. Only "logged out" (the session is gone),
  "stream replaced" (another program uses it) and "client outdated" stop all
  retrying until `nanoclaw pair`; they are said in the status, the journal and
  the main chat when that is on another channel.
* GetMe and GetPNFromLID crash the process once the client is stopped (they
  index a nil client): they are called only while connected, never beside a
  stop (the lifecycle lock).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import time
from collections import Counter, OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

from nanoclaw.channels import attachments
from nanoclaw.channels.base import Backend, Receive, SendError, StoreError
from nanoclaw.channels.whatsapp.convert import (
    GROUP_SERVER,
    LID_SERVER,
    SERVERS,
    JIDError,
    Media,
    chat_of,
    is_phone,
    jid_str,
    media_of,
    message_text,
    parse_jid,
    phone_digits,
    sender_of,
    to_inbound,
)
from nanoclaw.channels.whatsapp.format import split_message, to_whatsapp
from nanoclaw.channels.whatsapp.liveness import Liveness
from nanoclaw.channels.whatsapp.ordering import ChatOrder
from nanoclaw.channels.whatsapp.pairing import PAIR_COMMAND, PairingRun
from nanoclaw.channels.whatsapp.ratelimit import TokenBucket
from nanoclaw.channels.whatsapp.sentids import SentIds
from nanoclaw.channels.whatsapp.session import SessionError, linked_account
from nanoclaw.core import config as config_mod
from nanoclaw.core.backoff import Backoff
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Message, db
from nanoclaw.core.prompt import matches_trigger
from nanoclaw.core.skeleton import supervise

log = logging.getLogger("nanoclaw.whatsapp")

MAX_TEXT = 64 * 1024
TYPING_REFRESH = 10.0  # WhatsApp clears "typing…" by itself after a while: say it again
TYPING_MAX = 600.0  # never show typing longer than this for one job
# States in which the connect loop waits for `nanoclaw pair` (or a pairing) instead of connecting.
PARKED = {"unpaired", "logged_out", "replaced", "outdated", "pairing"}
NOT_PAIRED = "not paired — run `nanoclaw pair`"
NOT_STORED_QUIET = 600.0  # seconds between two "not stored" notices to one chat
NAME_TIMEOUT = 10.0  # an unregistered group's name lookup; the card says less without it
MEDIA_TIMEOUT = 120.0  # a download still going after this is given up: the chat's next messages wait for it
STOP_WAIT = 5.0  # at shutdown, for each of: handlers still storing, the client's stop, its task
RUNNER_RESTART = 5.0  # seconds before a connection loop that failed for a bug is started again
T = TypeVar("T")

Emit = Callable[[dict], Awaitable[None]]


def quoted(message_cls: Any, text: str, quote: dict) -> Any:
    """A text message showing ``quote`` ({id, sender, text}) as the message it replies to."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        ContextInfo,
        ExtendedTextMessage,
    )
    context = ContextInfo(stanzaID=str(quote.get("id", "")), participant=str(quote.get("sender", "")),
                          quotedMessage=message_cls(conversation=str(quote.get("text", ""))))
    return message_cls(extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=context))


def new_client(session: Path) -> Any:
    """The real neonize client; imported here so nothing else loads the Go library."""
    from neonize.aioze.client import NewAClient
    return NewAClient(str(session))


class WhatsAppBackend(Backend):
    name = "whatsapp"
    # Tests replace these: a recording stand-in for the neonize client, a scripted pairing child.
    client_factory: Callable[[Path], Any] = staticmethod(new_client)
    pair_command: tuple[str, ...] = PAIR_COMMAND

    @classmethod
    def create(cls, cfg: config_mod.Config) -> WhatsAppBackend:
        return cls(cfg)

    def __init__(self, cfg: config_mod.Config | None = None) -> None:
        self.cfg = cfg or config_mod.get()
        self.wcfg = self.cfg.whatsapp
        self.dir = self.cfg.state_dir / "whatsapp"
        self.session = self.dir / "session.db"
        self.state = "starting"
        self._status = "starting"
        self.client: Any = None
        self.handlers: dict[Any, Callable[[Any, Any], Awaitable[None]]] = {}
        self.backoff = Backoff(self.wcfg.reconnect_min, self.wcfg.reconnect_max)
        self.bucket = TokenBucket(self.wcfg.send_rate_per_minute, self.wcfg.send_burst)
        self.sent: SentIds | None = None
        self.own_phone = ""
        self.own_lid = ""
        self.me = ""  # our own JID once connected
        self._inflight: Counter[tuple[str, str]] = Counter()
        self._progress: dict[str, list[str]] = {}  # outbox msg_id -> ids of chunks already sent
        self._done: OrderedDict[str, str] = OrderedDict()  # outbox msg_id -> first chunk id
        self._typing: dict[str, asyncio.Task] = {}
        self._not_stored_told: dict[str, float] = {}
        self._phones: OrderedDict[str, str] = OrderedDict()  # LID -> phone JID, as the store mapped it
        self._names: OrderedDict[str, tuple[str, int | None]] = OrderedDict()  # unregistered group -> name, size
        self._pairing: PairingRun | None = None
        self._wake = asyncio.Event()
        self.parked = asyncio.Event()  # set while the connect loop waits for pairing
        self._stopping = False
        self._tasks: set[asyncio.Task] = set()
        self._order = ChatOrder()
        self._storing: set[asyncio.Task] = set()  # message handlers that have not stored yet
        self._runner: asyncio.Task | None = None
        self._refresher: asyncio.Task | None = None
        self._lifecycle = asyncio.Lock()  # connect/stop are not safe concurrently (neonize notes)
        self._send_lock = asyncio.Lock()  # one reply's chunks go out together, in order
        self.live = Liveness()
        self.connected = False
        self._task: asyncio.Task | None = None  # neonize's connect task, while there is one
        self._stopped_by_us = False  # the running connect task ends because we stopped it
        self._end_reason: str | None = None  # why we stopped it, when that calls for a retry
        self._retry_at = 0.0  # wall clock: when a ban ends
        self.lingering = False  # shutdown left a neonize task (and its Go thread) running

    # -- Backend -----------------------------------------------------------------------
    def owns(self, chat: str) -> bool:
        return chat.rpartition("@")[2] in SERVERS

    async def start(self, receive: Receive) -> None:
        """Create the session dir and client, register handlers, start connecting
        in the background (a missing network must not hold up the channel)."""
        self.receive = receive
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)  # the session holds the account's keys
        self.sent = SentIds(self.dir / "sent-ids")
        self.client = type(self).client_factory(self.session)
        self._register(self.client)
        self._start_runner()

    def _start_runner(self) -> None:
        """The connection's loop; one that fails for a bug is logged and started again, so the
        channel is never left without WhatsApp until a restart."""
        def again(exc: BaseException) -> None:
            if not self._stopping:
                asyncio.get_running_loop().call_later(RUNNER_RESTART, self._start_runner)
        self._runner = supervise(asyncio.create_task(self._run()), log, "the WhatsApp connection loop", again)

    def status(self) -> str:
        return self._status

    @property
    def _status(self) -> str:
        return self._status_text

    @_status.setter
    def _status(self, text: str) -> None:
        # Published at once (systemd STATUS=), not at the daemon's next pass: "logged out"
        # must show in `systemctl status` when it happens.
        changed = text != getattr(self, "_status_text", None)
        self._status_text = text
        if changed:
            self.on_status()

    def stuck(self) -> str:
        overdue = self.live.overdue()
        return f"the WhatsApp client is stuck: {overdue}" if overdue else ""

    async def stop(self) -> None:
        """Stop within about 3 × STOP_WAIT whatever neonize does: handlers still storing
        first (whatsmeow told WhatsApp we have their messages when it queued them), then
        the client."""
        self._stopping = True
        self._wake.set()
        for task in list(self._typing.values()) + [self._refresher]:
            if task:
                task.cancel()
        if self._pairing is not None:
            self._pairing.cancel()
        if self._storing:
            await asyncio.wait(set(self._storing), timeout=STOP_WAIT)
        try:
            await asyncio.wait_for(self._stop_client(), STOP_WAIT)
        except asyncio.TimeoutError:
            log.warning("whatsapp client did not stop within %.0fs; exiting without it", STOP_WAIT)
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=STOP_WAIT)
        self.lingering = self._task is not None and not self._task.done()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.exception()  # seen: the loop that would have read it is ending
        if self._runner:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=STOP_WAIT)

    async def send(self, chat: str, text: str, msg_id: str, quote: dict | None = None, sender: str = "") -> str:
        """Send a reply as one or more chunks; return the first chunk's WhatsApp id.

        With ``quote``, the first chunk shows the message it answers quoted above it.
        With ``sender``, the first chunk starts with ``Name:``: we write from the
        owner's own account, so without it nobody could tell the assistant from
        the owner. The label is added after splitting, so a reply that opens with
        a code block keeps its fence at a line start.

        A retry of the same outbox message (``msg_id``) resumes after the chunks
        that already went out, so a failure halfway does not repeat the start.
        """
        if msg_id in self._done:
            return self._done[msg_id]
        if self.client is None or not self.connected:
            raise SendError(f"WhatsApp is not connected ({self._status})")
        try:
            jid = parse_jid(chat)
        except JIDError as exc:
            raise SendError(str(exc)) from None
        label = f"{sender}:" if sender else ""
        room = self.wcfg.max_message_chars - (len(label) + 1 if label else 0)
        chunks = split_message(to_whatsapp(text), max(room, 1))
        if not chunks:
            raise SendError("nothing to send after formatting")
        if label and not chunks[0].startswith(label):
            chunks[0] = label + ("\n" if chunks[0].startswith("```") else " ") + chunks[0]
        self._stop_typing(chat)  # a reply replaces "typing…"
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
        async with self._send_lock:
            done = self._progress.setdefault(msg_id, [])
            for i in range(len(done), len(chunks)):
                await self.bucket.acquire()
                key = (chat, chunks[i])
                self._inflight[key] += 1
                try:
                    # A plain conversation message: neonize's str path would scan
                    # the text for @mentions and look groups up.
                    body = quoted(WAMessage, chunks[i], quote) if i == 0 and quote else \
                        WAMessage(conversation=chunks[i])
                    resp = await self.client.send_message(jid, body)
                except Exception as exc:
                    raise SendError(f"WhatsApp send failed (part {i + 1} of {len(chunks)}): {exc}") from exc
                finally:
                    self._inflight[key] -= 1
                    if self._inflight[key] <= 0:
                        del self._inflight[key]
                self.sent.add(resp.ID)
                done.append(resp.ID)
            first = done[0]
            del self._progress[msg_id]
        self._done[msg_id] = first
        while len(self._done) > 1000:
            self._done.popitem(last=False)
        log.info("sent %d message(s) first=%s", len(chunks), first, extra=log_fields(chat=chat))
        return first

    async def typing(self, chat: str, on: bool) -> None:
        """Show "typing…" while the agent works; refreshed, since WhatsApp expires it."""
        self._stop_typing(chat)
        if not self.connected:
            return
        if on:
            task = supervise(asyncio.create_task(self._keep_typing(chat)), log, "showing typing", chat=chat)
            self._typing[chat] = task
            task.add_done_callback(lambda t, c=chat: self._typing.pop(c, None) if self._typing.get(c) is t else None)
        else:
            await self._presence(chat, False)

    # -- pairing and discovery (socket ops) -------------------------------------------
    async def pair(self, phone: str | None, emit: Emit) -> dict:
        """Link this server as a device; stream QR codes (or the phone code) to ``emit``.

        A linked session is left alone (and reconnected if it had stopped for good): this
        never disconnects a working or connecting client. Otherwise our client is stopped
        and the pairing process (:mod:`pairproc`) does the work; a `nanoclaw pair` already
        running is ended in favour of this one (its terminal may be long gone)."""
        if phone is not None and not is_phone(phone):
            return {"ok": False, "error": f"not a phone number: {phone!r} (international format, e.g. +49 170 1234567)"}
        if self._pairing is not None:
            self._pairing.cancel()
            await self._pairing.end()
        try:
            account = linked_account(self.session)
        except SessionError as exc:
            return {"ok": False, "error": str(exc)}
        if account and self.state != "logged_out":
            if self.state in ("replaced", "outdated", "unpaired", "waiting"):
                self._set("starting", f"linked as {account}; connecting")
                self._wake.set()
            return {"ok": True, "paired": account, "already": True, "status": self._status}
        if not await self._release_client():
            return {"ok": False, "error": "the WhatsApp client did not stop; the channel will be restarted "
                                          "by its watchdog: run `nanoclaw pair` again then"}
        run = self._pairing = PairingRun(self.pair_command, {
            "session": str(self.session), "phone": phone_digits(phone) if phone else None,
            "timeout": self.wcfg.pair_timeout, "proxy": self.wcfg.proxy}, self.wcfg.pair_timeout)
        log.info("pairing started (%s)", "phone code" if phone else "QR code")
        self._set("pairing", "pairing — waiting for the phone")
        try:
            result = await run.run(emit)
        except (ConnectionError, OSError, asyncio.TimeoutError):  # the CLI is gone or stopped reading
            log.info("pairing abandoned: the terminal went away")
            result = {"ok": False, "error": "abandoned"}
        finally:
            if self._pairing is run:
                self._pairing = None
        if self._pairing is None and not self._stopping:  # not taken over by a newer pairing
            if result.get("ok"):
                log.info("whatsapp paired as %s", result.get("paired"))
                self.backoff.reset()
                self._set("starting", f"paired as {result.get('paired')}; connecting")
            else:
                log.warning("whatsapp pairing failed: %s", result.get("error"))
                self._set("unpaired", NOT_PAIRED)
            self._wake.set()
        return result

    async def discover(self) -> dict:
        """The account's groups, for `nanoclaw groups discover`."""
        if not self.connected:
            return {"ok": False, "error": f"WhatsApp is not connected ({self._status})"}
        groups = await self.client.get_joined_groups()
        registered = {g.jid: g.folder for g in Group.select()}
        rows = []
        for g in groups:
            jid = jid_str(g.JID)
            rows.append({"name": g.GroupName.Name, "jid": jid, "participants": len(g.Participants),
                         "folder": registered.get(jid, "")})
        rows.sort(key=lambda r: r["name"].lower())
        return {"ok": True, "groups": rows, "self": self.own_phone}

    # -- connect loop --------------------------------------------------------------------
    def _set(self, state: str, status: str) -> None:
        self.state, self._status = state, status

    async def _run(self) -> None:
        while not self._stopping:
            if self.state in PARKED:
                self.parked.set()  # waiting for `nanoclaw pair`: no connect until woken
                await self._wait(None)
                self.parked.clear()
                continue
            if self.state == "banned" and self._retry_at > time.time():
                await self._wait(self._retry_at - time.time())
                continue
            try:
                account = linked_account(self.session)
            except SessionError as exc:
                failure: str | None = str(exc)
            else:
                if account is None:
                    if self.state != "unpaired":
                        log.warning("whatsapp: %s", NOT_PAIRED)
                    self._set("unpaired", NOT_PAIRED)
                    continue
                failure = await self._connect_once()
            if failure is None or self._stopping:
                continue  # we ended it (halt, ban, pairing, shutdown): whoever did set the state
            log.warning("whatsapp %s", failure)
            delay = self.backoff.next()
            self._set("waiting", f"disconnected — next attempt in {delay:.0f}s ({failure})")
            await self._wait(delay)

    async def _connect_once(self) -> str | None:
        """One connect, until its task ends; why it failed, or None when we stopped it."""
        self._set("connecting", "connecting")
        self.live.begin("connecting", self.wcfg.client_timeout)
        try:
            async with self._lifecycle:
                self._stopped_by_us, self._end_reason = False, None
                proxy = (self._proxy_settings(),) if self.wcfg.proxy else ()
                self._task = await self.client.connect(*proxy)
        except Exception as exc:
            self.live.end()
            return f"connect failed: {exc}"
        self._chmod_session()
        # Never `await task`: cancelling that would cancel neonize's task, whose own
        # cancellation handler makes a blocking Go call on the event loop.
        await asyncio.wait({self._task})
        self.connected = False
        self.live.end()
        if self._stopped_by_us:
            return self._end_reason
        exc = None if self._task.cancelled() else self._task.exception()
        return f"connect failed: {exc}" if exc else "connection ended"

    def _proxy_settings(self) -> Any:
        from neonize._binder import ProxySettings
        return ProxySettings(proxy_address=self.wcfg.proxy)

    async def _wait(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    async def _halt(self, state: str, status: str, alert: str = "", level: int = logging.ERROR) -> None:
        """Stop connecting until `nanoclaw pair`: log once per state change, not per event;
        tell the owner elsewhere once, too."""
        if self.state != state:
            log.log(level, "whatsapp: %s", status)
            if alert:
                self.on_alert(alert)
        self._set(state, status)
        await self._stop_client()

    async def _stop_client(self, reason: str | None = None) -> None:
        """Stop the running client (once); ``reason`` makes the connect loop retry with backoff."""
        self.connected = False
        async with self._lifecycle:
            if self._task is None or self._task.done() or self._stopped_by_us:
                return
            self._stopped_by_us, self._end_reason = True, reason
            self.live.begin("stopping", self.wcfg.client_timeout)
            try:
                await self.client.stop()
            except Exception as exc:
                log.warning("whatsapp client stop failed: %s", exc)

    async def _release_client(self) -> bool:
        """Our client stopped and its task ended (within client_timeout), before pairing."""
        if self._task is None or self._task.done():
            return True
        await self._stop_client()
        done, _ = await asyncio.wait({self._task}, timeout=self.wcfg.client_timeout)
        return bool(done)

    async def _while_connected(self, call: Callable[[], Awaitable[T]]) -> T | None:
        """Run a call neonize crashes on once its client is stopped (GetMe, GetPNFromLID index
        a nil client): only while connected, never beside a stop; None otherwise or on error."""
        if not self.connected:
            return None
        async with self._lifecycle:
            if not self.connected:
                return None
            try:
                return await call()
            except Exception as exc:
                log.debug("whatsapp call failed: %s", exc)
                return None

    def _chmod_session(self) -> None:
        for path in self.dir.glob("session.db*"):
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- events --------------------------------------------------------------------------
    def _register(self, client: Any) -> None:
        from neonize.aioze.events import (
            ClientOutdatedEv,
            ConnectedEv,
            ConnectFailureEv,
            DisconnectedEv,
            LoggedOutEv,
            MessageEv,
            ReceiptEv,
            StreamReplacedEv,
            TemporaryBanEv,
        )
        table = {ConnectedEv: self._on_connected, DisconnectedEv: self._on_disconnected,
                 LoggedOutEv: self._on_logged_out, StreamReplacedEv: self._on_stream_replaced,
                 ClientOutdatedEv: self._on_outdated, TemporaryBanEv: self._on_temp_ban,
                 ConnectFailureEv: self._on_connect_failure, MessageEv: self._on_message,
                 ReceiptEv: self._on_receipt}
        for event_type, fn in table.items():
            # Held here too: neonize may keep only weak references.
            self.handlers[event_type] = self._guard(event_type.__name__, fn)
            client.event(event_type)(self.handlers[event_type])
        self.handlers["qr"] = self._guard("qr", self._on_qr)
        client.event.qr(self.handlers["qr"])

    @staticmethod
    def _guard(name: str, fn: Callable[[Any, Any], Awaitable[None]]) -> Callable[[Any, Any], Awaitable[None]]:
        async def handler(client: Any, ev: Any) -> None:
            try:
                await fn(client, ev)
            except Exception:
                log.exception("whatsapp %s handler failed", name)
        handler.__name__ = f"on_{name}"
        return handler

    def _current(self, client: Any) -> bool:
        """Whether an event comes from the client we run (not a late one from a client we stopped)."""
        return client is self.client and self._task is not None and not self._task.done() \
            and not self._stopped_by_us

    async def _on_connected(self, client: Any, ev: Any) -> None:
        if not self._current(client):
            return
        self.connected = True
        self.live.end()
        self.backoff.reset()
        self._chmod_session()
        me = getattr(client, "me", None)  # neonize keeps the Device event here
        if me is None or not me.JID.User:
            me = await self._while_connected(client.get_me)
        if me is not None and me.JID.User:
            self.own_phone, self.me = jid_str(me.JID), jid_str(me.JID)
            self.own_lid = jid_str(me.LID) if me.LID.User else ""
        self._set("connected", f"connected as {self.me}" if self.me else "connected")
        log.info("whatsapp %s", self._status)
        if self._refresher is None or self._refresher.done():
            self._refresher = supervise(asyncio.create_task(self._refresh_names_forever()), log,
                                        "refreshing group names")

    async def _on_disconnected(self, client: Any, ev: Any) -> None:
        self.connected = False
        if self.state == "connected":
            # A logged-in session: whatsmeow reconnects by itself.
            self._set("reconnecting", "disconnected — reconnecting")
            log.warning("whatsapp disconnected; whatsmeow is reconnecting")

    async def _on_logged_out(self, client: Any, ev: Any) -> None:
        # The session is gone (whatsmeow deleted it from its store): only pairing can help.
        self.me = ""
        await self._halt("logged_out", "logged out — run `nanoclaw pair`",
                         "WhatsApp logged this server out (the device was unlinked on the phone, or the "
                         "session expired): nothing is received there until you run `nanoclaw pair`.")

    async def _on_stream_replaced(self, client: Any, ev: Any) -> None:
        # Retrying would fight the other program for the session, each throwing the other out.
        await self._halt("replaced", "replaced — another program uses this WhatsApp session; "
                                     "stop it, then restart the channel or run `nanoclaw pair`",
                         "Another program took over this WhatsApp session: stop it, then run "
                         "`nanoclaw pair` (nothing is received on WhatsApp until then).")

    async def _on_outdated(self, client: Any, ev: Any) -> None:
        # Retrying cannot help before an upgrade; hammering the server could earn a ban.
        await self._halt("outdated", "client outdated — WhatsApp refuses this neonize version; upgrade it",
                         "WhatsApp refuses this version of the WhatsApp library (client outdated): "
                         "upgrade nanoclaw, then run `nanoclaw pair`.")

    async def _on_temp_ban(self, client: Any, ev: Any) -> None:
        """whatsmeow never reconnects after a temporary ban; we do, once it has expired."""
        try:
            why = type(ev).TempBanReason.Name(ev.Code).lower().replace("_", " ")
        except ValueError:
            why = f"code {ev.Code}"
        wait = ev.Expire if ev.Expire > 0 else self.backoff.next()
        self._retry_at = time.time() + wait
        until = time.strftime("%Y-%m-%d %H:%M", time.localtime(self._retry_at))
        status = f"temporarily banned by WhatsApp ({why}); next attempt at {until}"
        if self.state != "banned":
            log.error("whatsapp %s", status)
            self.on_alert(f"WhatsApp has banned this account for a while ({why}): nothing is sent or "
                          f"received there until about {until}, when the channel tries again.")
        self._set("banned", status)
        await self._stop_client()

    async def _on_connect_failure(self, client: Any, ev: Any) -> None:
        """whatsmeow stops after a connect failure it does not know; we retry with backoff."""
        try:
            why = ev.Message or type(ev).DESCRIPTOR.fields_by_name["Reason"].enum_type.values_by_number[
                ev.Reason].name.lower().replace("_", " ")
        except KeyError:
            why = f"reason {ev.Reason}"
        await self._stop_client(f"connect failure: {why}")

    async def _on_qr(self, client: Any, data: bytes) -> None:
        # Our client connects linked sessions only; a QR code means the store lost its device
        # after we looked. neonize 0.5.2 can never end a connect stopped while it shows codes,
        # so this process is thrown away (the watchdog) and the next one sees an unpaired session.
        if not self._current(client) or self.state == "unpaired":
            return
        log.error("whatsapp: the session is not linked any more (asked for a QR scan); the channel "
                  "will be restarted")
        self._set("unpaired", NOT_PAIRED)
        self.live.begin("asking for a QR scan (neonize cannot stop it)", 0)

    async def _on_receipt(self, client: Any, ev: Any) -> None:
        log.debug("receipt type=%s ids=%s", ev.Type, list(ev.MessageIDs))

    async def _on_message(self, client: Any, ev: Any) -> None:
        src = ev.Info.MessageSource
        if src.Chat.Server in ("broadcast", "newsletter"):
            return  # status updates and channels are not conversations
        task = asyncio.current_task()
        self._storing.add(task)  # a stop lets it finish: WhatsApp already has our ack
        try:
            # Entered before the first await: the place in the chat's line is the arrival order.
            # The turn ends once the message has its place in the commit line (the order rows
            # are stored in), not when that commit is done: a chat's burst shares commits.
            async with self._order.turn(jid_str(src.Chat)):
                stored = await self._intake(client, ev)
            if stored is not None:
                chat, pending = stored
                try:
                    await pending
                except StoreError as exc:
                    await self._tell_not_stored(chat, str(exc))
        finally:
            self._storing.discard(task)

    async def _intake(self, client: Any, ev: Any) -> tuple[str, Awaitable[tuple[int, bool]]] | None:
        """Check, download and hand over one message; returns its chat and what its storing
        will give (None: nothing to store)."""
        info = ev.Info
        src = info.MessageSource
        raw_chat = jid_str(src.Chat)
        destination = info.DeviceSentMeta.DestinationJID if info.HasField("DeviceSentMeta") else ""
        chat = chat_of(src, self.own_lid, self.own_phone, destination)
        if chat.endswith("@" + LID_SERVER):
            chat = await self._phone_for(chat) or chat
        # Our own JID as it arrived never stands in for what chat_of made of it (a DM the
        # owner sent to someone else must not find the main group under it).
        forms = {chat} if chat != raw_chat and raw_chat in (self.own_phone, self.own_lid) else {chat, raw_chat}
        msg_id = info.ID
        text = message_text(ev.Message)
        if src.IsFromMe and self._is_ours(msg_id, forms, text):
            log.debug("our own message echoed; ignored", extra=log_fields(chat=chat, msg=msg_id))
            return
        group = Group.get_or_none(Group.jid.in_(list(forms)))
        if group is not None:
            chat = group.jid  # store under the form the owner registered
        elif not self.wcfg.store_unregistered and not matches_trigger(text, self.cfg.default_trigger):
            log.debug("unregistered chat; dropped", extra=log_fields(chat=chat, msg=msg_id))
            return
        if Message.get_or_none(Message.chat == chat, Message.channel_id == msg_id):
            # A re-delivery (or our own reply's first chunk): skip before any download.
            log.debug("already stored", extra=log_fields(chat=chat, msg=msg_id))
            return
        sender = sender_of(src, self.own_lid, self.own_phone)
        if sender.endswith("@" + LID_SERVER):
            sender = await self._phone_for(sender) or sender
        media = media_of(ev.Message, msg_id)
        attachment = await self._save_media(client, ev, media, group) if media is not None else None
        if not text.strip() and attachment is None:
            log.debug("no text (reaction, sticker, protocol message); ignored", extra=log_fields(chat=chat, msg=msg_id))
            return
        inbound = to_inbound(ev, chat=chat, text=text[:MAX_TEXT], own_lid=self.own_lid,
                             own_phone=self.own_phone, media=attachment, sender=sender, group=group)
        if group is None and matches_trigger(text, self.cfg.default_trigger):
            # It may ask the owner: the card names the chat (a direct chat by the other person,
            # never by the owner's own name when the owner wrote there).
            name, members = (await self._chat_name(chat) if chat.endswith("@" + GROUP_SERVER)
                             else ("" if inbound.from_me else inbound.sender_name, None))
            inbound = dataclasses.replace(inbound, chat_name=name, members=members)
        return chat, self.receive(inbound)

    async def _chat_name(self, chat: str) -> tuple[str, int | None]:
        """An unregistered WhatsApp group's name and size, as WhatsApp says (cached: a chat that
        keeps naming the trigger costs one lookup); ("", None) when WhatsApp does not answer."""
        if chat in self._names:
            return self._names[chat]
        info = await self._while_connected(lambda: asyncio.wait_for(self.client.get_group_info(parse_jid(chat)),
                                                                    NAME_TIMEOUT))
        if info is None:
            return "", None
        self._names[chat] = (info.GroupName.Name, len(info.Participants))
        while len(self._names) > 1000:
            self._names.popitem(last=False)
        return self._names[chat]

    async def _phone_for(self, lid: str) -> str | None:
        """The phone JID whatsmeow's store has for ``lid``: a DM can arrive as a bare @lid
        with no phone form beside it (whatsmeow issues 1014, 1262), and a registered chat
        is known by its phone form."""
        if lid in self._phones:
            return self._phones[lid]
        pn = await self._while_connected(lambda: self.client.get_pn_from_lid(parse_jid(lid)))
        if pn is None or not pn.User:
            return None
        self._phones[lid] = jid_str(pn)
        while len(self._phones) > 1000:
            self._phones.popitem(last=False)
        return self._phones[lid]

    async def _tell_not_stored(self, chat: str, reason: str) -> None:
        """The message could not be stored (say, a full disk), and WhatsApp will not send it
        again: tell the chat in one line, straight through the client (the outbox is in the
        same database), at most once per chat in NOT_STORED_QUIET seconds."""
        now = time.monotonic()
        if now - self._not_stored_told.get(chat, -NOT_STORED_QUIET) < NOT_STORED_QUIET or not self.connected:
            return
        self._not_stored_told[chat] = now
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
        text = f"{self.cfg.assistant_name}: your message did not reach me ({reason}). Please send it again later."
        try:
            resp = await self.client.send_message(parse_jid(chat), WAMessage(conversation=text))
            self.sent.add(resp.ID)
        except Exception as exc:
            log.warning("cannot say that a message was not stored: %s", exc, extra=log_fields(chat=chat))

    def _is_ours(self, msg_id: str, chats: set[str], text: str) -> bool:
        if self.sent is not None and msg_id in self.sent:
            return True
        return any((c, text) in self._inflight for c in chats)

    async def _save_media(self, client: Any, ev: Any, media: Media, group: Group | None) -> dict:
        """Save an attachment into the group's ``inbox/`` and describe it for the prompt.

        The group folder is the agent's to write: ``inbox/`` is walked without
        following links and the file is created ``O_EXCL`` then renamed into
        place within that directory (:mod:`safefs`), so nothing the agent
        planted is written through.
        """
        if group is None or not self.wcfg.download_media:
            return media.describe(None)
        if media.size and media.size > self.wcfg.max_media_bytes:
            return media.describe(None, f"not downloaded: {media.size} bytes is over the limit")
        try:
            data = await asyncio.wait_for(client.download_any(ev.Message), MEDIA_TIMEOUT)
            where = attachments.save(self.cfg, group.folder, media.filename, data)
        except Exception as exc:
            log.warning("%s download failed: %s", media.label, exc,
                        extra=log_fields(group=group.folder, msg=ev.Info.ID))
            return media.describe(None, "not downloaded: the download failed")
        described = media.describe(where)
        described["size"] = len(data)
        return described

    # -- typing and names ------------------------------------------------------------------
    async def _presence(self, chat: str, on: bool) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia
        state = ChatPresence.CHAT_PRESENCE_COMPOSING if on else ChatPresence.CHAT_PRESENCE_PAUSED
        try:
            await self.client.send_chat_presence(parse_jid(chat), state,
                                                 ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
        except Exception as exc:  # cosmetic: never fail a job over it
            log.debug("typing=%s failed: %s", on, exc, extra=log_fields(chat=chat))

    async def _keep_typing(self, chat: str) -> None:
        until = time.monotonic() + TYPING_MAX
        while time.monotonic() < until and self.connected:
            await self._presence(chat, True)
            await asyncio.sleep(TYPING_REFRESH)
        await self._presence(chat, False)

    def _stop_typing(self, chat: str) -> None:
        task = self._typing.pop(chat, None)
        if task:
            task.cancel()

    async def refresh_names(self) -> int:
        """Update registered WhatsApp groups' display names from WhatsApp; return how many changed."""
        changed = 0
        for group in list(Group.select().where(Group.jid.endswith("@" + GROUP_SERVER))):
            try:
                info = await self.client.get_group_info(parse_jid(group.jid))
            except Exception as exc:
                log.debug("name refresh failed: %s", exc, extra=log_fields(group=group.folder))
                continue
            name = info.GroupName.Name
            if name and name != group.name:
                with db.atomic("IMMEDIATE"):
                    Group.update(name=name).where(Group.id == group.id).execute()
                log.info("renamed %r -> %r", group.name, name, extra=log_fields(group=group.folder))
                changed += 1
        return changed

    async def _refresh_names_forever(self) -> None:
        while self.connected and not self._stopping:
            try:
                await self.refresh_names()
            except Exception:
                log.exception("group name refresh failed")
            await asyncio.sleep(self.wcfg.name_refresh)
