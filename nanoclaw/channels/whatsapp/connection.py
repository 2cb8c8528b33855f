"""The WhatsApp connection: neonize's client, its connect loop, stop, and what WhatsApp says of it.

SYNOPSIS
    conn = Connection(cfg, on_status, on_alert, on_connected)
    conn.start(client_factory, handlers)     create the client, register, connect in the background
    conn.state, conn.status, conn.connected, conn.client, conn.own_phone, conn.own_lid
    await conn.while_connected(call)          a call neonize crashes on once stopped
    conn.set(state, status); conn.wake()      what pairing uses to hand the loop back
    await conn.release_client() -> bool       stopped and ended, before pairing
    await conn.stop(wait)                     at shutdown, bounded whatever neonize does
    conn.stuck() -> str

DESCRIPTION
    Lifecycle, for a client that may hang (the neonize notes, second half):

    * The channel's own client only ever connects a linked session (whatsmeow's
      store holds a device: :mod:`session`). An unlinked one would sit in
      pairing, where neonize 0.5.2 cannot be stopped; pairing runs in its own
      short-lived process (:mod:`pairproc`, driven by :mod:`pairing`) while this
      client is stopped, and the loop connects once it has ended.
    * Every connect and every stop has a deadline (``client_timeout``). One that
      passes makes ``stuck()`` say so: the daemon stops feeding systemd's
      watchdog and systemd replaces the process. Nothing here awaits a neonize
      task without a bound, and shutdown does not wait for a Go thread that
      will not return.
    * A failed connect and a connect failure WhatsApp reports are retried with
      capped exponential backoff (our own loop: whatsmeow retries neither), a
      temporary ban after its expiry. Only "logged out" (the session is gone),
      "stream replaced" (another program uses it) and "client outdated" stop all
      retrying until `nanoclaw pair`; they are said in the status, the journal
      and the main chat when that is on another channel (``on_alert``).
    * GetMe and GetPNFromLID crash the process once the client is stopped (they
      index a nil client): they are called only while connected, never beside a
      stop (the lifecycle lock, ``while_connected``).

    neonize calls handlers on our event loop; an async handler's exception would
    be silently lost, so every handler is wrapped to log it. There is one handler
    per event type (neonize keeps the last registered), held here too, since
    neonize may keep only weak references.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from nanoclaw.channels.whatsapp.convert import jid_str
from nanoclaw.channels.whatsapp.liveness import Liveness
from nanoclaw.channels.whatsapp.session import SessionError, linked_account
from nanoclaw.core import config as config_mod
from nanoclaw.core.backoff import Backoff
from nanoclaw.core.skeleton import supervise

if TYPE_CHECKING:  # pragma: no cover
    from nanoclaw.channels.whatsapp.pairchild import PairingRun

log = logging.getLogger("nanoclaw.whatsapp")

# States in which the connect loop waits for `nanoclaw pair` (or a pairing) instead of connecting.
PARKED = {"unpaired", "logged_out", "replaced", "outdated", "pairing"}
NOT_PAIRED = "not paired — run `nanoclaw pair`"
RUNNER_RESTART = 5.0  # seconds before a connection loop that failed for a bug is started again
T = TypeVar("T")
Handler = Callable[[Any, Any], Awaitable[None]]


def new_client(session: Path) -> Any:
    """The real neonize client; imported here so nothing else loads the Go library."""
    from neonize.aioze.client import NewAClient
    return NewAClient(str(session))


class Connection:
    """One neonize client and the loop that keeps it connected (or parked, waiting for pairing)."""

    def __init__(self, cfg: config_mod.Config, on_status: Callable[[], None],
                 on_alert: Callable[[str], None], on_connected: Callable[[], None]) -> None:
        self.cfg = cfg
        self.wcfg = cfg.whatsapp
        self.dir = cfg.state_dir / "whatsapp"
        self.session = self.dir / "session.db"
        self.on_status, self.on_alert, self.on_connected = on_status, on_alert, on_connected
        self.state = "starting"
        self.status = "starting"
        self.client: Any = None
        self.handlers: dict[Any, Handler] = {}
        self.backoff = Backoff(self.wcfg.reconnect_min, self.wcfg.reconnect_max)
        self.own_phone = ""
        self.own_lid = ""
        self.me = ""  # our own JID once connected
        self.pairing: PairingRun | None = None  # the `nanoclaw pair` running, if one is
        self._wake = asyncio.Event()
        self.parked = asyncio.Event()  # set while the connect loop waits for pairing
        self.stopping = False
        self._runner: asyncio.Task | None = None
        self._lifecycle = asyncio.Lock()  # connect/stop are not safe concurrently (neonize notes)
        self.live = Liveness()
        self.connected = False
        self._task: asyncio.Task | None = None  # neonize's connect task, while there is one
        self._stopped_by_us = False  # the running connect task ends because we stopped it
        self._end_reason: str | None = None  # why we stopped it, when that calls for a retry
        self._retry_at = 0.0  # wall clock: when a ban ends
        self.lingering = False  # shutdown left a neonize task (and its Go thread) running

    @property
    def status(self) -> str:
        return self._status_text

    @status.setter
    def status(self, text: str) -> None:
        # Published at once (systemd STATUS=), not at the daemon's next pass: "logged out"
        # must show in `systemctl status` when it happens.
        changed = text != getattr(self, "_status_text", None)
        self._status_text = text
        if changed:
            self.on_status()

    def set(self, state: str, status: str) -> None:
        self.state, self.status = state, status

    def start(self, client_factory: Callable[[Path], Any], handlers: dict[str, Handler]) -> None:
        """Create the client and register every handler (ours, and ``handlers`` by neonize
        event name), then connect in the background: a missing network must not hold up
        the channel."""
        self.client = client_factory(self.session)
        self._register(self.client, handlers)
        self._start_runner()

    def _start_runner(self) -> None:
        """The connection's loop; one that fails for a bug is logged and started again, so the
        channel is never left without WhatsApp until a restart."""
        def again(exc: BaseException) -> None:
            if not self.stopping:
                asyncio.get_running_loop().call_later(RUNNER_RESTART, self._start_runner)
        self._runner = supervise(asyncio.create_task(self._run()), log, "the WhatsApp connection loop", again)

    def stuck(self) -> str:
        overdue = self.live.overdue()
        return f"the WhatsApp client is stuck: {overdue}" if overdue else ""

    async def stop(self, wait: float) -> None:
        """Stop the client and the loop, each step waiting at most ``wait`` seconds; what
        neonize leaves running is noted in ``lingering``."""
        try:
            await asyncio.wait_for(self.stop_client(), wait)
        except asyncio.TimeoutError:
            log.warning("whatsapp client did not stop within %.0fs; exiting without it", wait)
        if self._task is not None and not self._task.done():
            await asyncio.wait({self._task}, timeout=wait)
        self.lingering = self._task is not None and not self._task.done()
        if self._task is not None and self._task.done() and not self._task.cancelled():
            self._task.exception()  # seen: the loop that would have read it is ending
        if self._runner:
            self._runner.cancel()
            await asyncio.wait({self._runner}, timeout=wait)

    # -- the connect loop ----------------------------------------------------------------
    async def _run(self) -> None:
        while not self.stopping:
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
                    self.set("unpaired", NOT_PAIRED)
                    continue
                failure = await self._connect_once()
            if failure is None or self.stopping:
                continue  # we ended it (halt, ban, pairing, shutdown): whoever did set the state
            log.warning("whatsapp %s", failure)
            delay = self.backoff.next()
            self.set("waiting", f"disconnected — next attempt in {delay:.0f}s ({failure})")
            await self._wait(delay)

    async def _connect_once(self) -> str | None:
        """One connect, until its task ends; why it failed, or None when we stopped it."""
        self.set("connecting", "connecting")
        self.live.begin("connecting", self.wcfg.client_timeout)
        try:
            async with self._lifecycle:
                self._stopped_by_us, self._end_reason = False, None
                proxy = (self._proxy_settings(),) if self.wcfg.proxy else ()
                self._task = await self.client.connect(*proxy)
        except Exception as exc:
            self.live.end()
            return f"connect failed: {exc}"
        self.chmod_session()
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

    def wake(self) -> None:
        """Let the loop look at the state again now (after a pairing, at shutdown)."""
        self._wake.set()

    async def _wait(self, timeout: float | None) -> None:
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except asyncio.TimeoutError:
            pass
        self._wake.clear()

    # -- stopping the client -------------------------------------------------------------
    async def stop_client(self, reason: str | None = None) -> None:
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

    async def release_client(self) -> bool:
        """Our client stopped and its task ended (within client_timeout), before pairing."""
        if self._task is None or self._task.done():
            return True
        await self.stop_client()
        done, _ = await asyncio.wait({self._task}, timeout=self.wcfg.client_timeout)
        return bool(done)

    async def while_connected(self, call: Callable[[], Awaitable[T]]) -> T | None:
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

    def chmod_session(self) -> None:
        for path in self.dir.glob("session.db*"):
            try:
                os.chmod(path, 0o600)
            except OSError:
                pass

    # -- events --------------------------------------------------------------------------
    def _register(self, client: Any, handlers: dict[str, Handler]) -> None:
        from neonize.aioze import events
        table = {events.ConnectedEv: self._on_connected, events.DisconnectedEv: self._on_disconnected,
                 events.LoggedOutEv: self._on_logged_out, events.StreamReplacedEv: self._on_stream_replaced,
                 events.ClientOutdatedEv: self._on_outdated, events.TemporaryBanEv: self._on_temp_ban,
                 events.ConnectFailureEv: self._on_connect_failure,
                 **{getattr(events, name): fn for name, fn in handlers.items()}}
        for event_type, fn in table.items():
            # Held here too: neonize may keep only weak references.
            self.handlers[event_type] = self._guard(event_type.__name__, fn)
            client.event(event_type)(self.handlers[event_type])
        self.handlers["qr"] = self._guard("qr", self._on_qr)
        client.event.qr(self.handlers["qr"])

    @staticmethod
    def _guard(name: str, fn: Handler) -> Handler:
        async def handler(client: Any, ev: Any) -> None:
            try:
                await fn(client, ev)
            except Exception:
                log.exception("whatsapp %s handler failed", name)
        handler.__name__ = f"on_{name}"
        return handler

    def current(self, client: Any) -> bool:
        """Whether an event comes from the client we run (not a late one from a client we stopped)."""
        return client is self.client and self._task is not None and not self._task.done() \
            and not self._stopped_by_us

    async def _on_connected(self, client: Any, ev: Any) -> None:
        if not self.current(client):
            return
        self.connected = True
        self.live.end()
        self.backoff.reset()
        self.chmod_session()
        me = getattr(client, "me", None)  # neonize keeps the Device event here
        if me is None or not me.JID.User:
            me = await self.while_connected(client.get_me)
        if me is not None and me.JID.User:
            self.own_phone, self.me = jid_str(me.JID), jid_str(me.JID)
            self.own_lid = jid_str(me.LID) if me.LID.User else ""
        self.set("connected", f"connected as {self.me}" if self.me else "connected")
        log.info("whatsapp %s", self.status)
        self.on_connected()

    async def _on_disconnected(self, client: Any, ev: Any) -> None:
        self.connected = False
        if self.state == "connected":
            # A logged-in session: whatsmeow reconnects by itself.
            self.set("reconnecting", "disconnected — reconnecting")
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

    async def _halt(self, state: str, status: str, alert: str = "", level: int = logging.ERROR) -> None:
        """Stop connecting until `nanoclaw pair`: log once per state change, not per event;
        tell the owner elsewhere once, too."""
        if self.state != state:
            log.log(level, "whatsapp: %s", status)
            if alert:
                self.on_alert(alert)
        self.set(state, status)
        await self.stop_client()

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
        self.set("banned", status)
        await self.stop_client()

    async def _on_connect_failure(self, client: Any, ev: Any) -> None:
        """whatsmeow stops after a connect failure it does not know; we retry with backoff."""
        try:
            why = ev.Message or type(ev).DESCRIPTOR.fields_by_name["Reason"].enum_type.values_by_number[
                ev.Reason].name.lower().replace("_", " ")
        except KeyError:
            why = f"reason {ev.Reason}"
        await self.stop_client(f"connect failure: {why}")

    async def _on_qr(self, client: Any, data: bytes) -> None:
        # Our client connects linked sessions only; a QR code means the store lost its device
        # after we looked. neonize 0.5.2 can never end a connect stopped while it shows codes,
        # so this process is thrown away (the watchdog) and the next one sees an unpaired session.
        if not self.current(client) or self.state == "unpaired":
            return
        log.error("whatsapp: the session is not linked any more (asked for a QR scan); the channel "
                  "will be restarted")
        self.set("unpaired", NOT_PAIRED)
        self.live.begin("asking for a QR scan (neonize cannot stop it)", 0)
