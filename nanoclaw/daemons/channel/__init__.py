"""channel: the chat connections, in and out.

SUMMARY
    Every message from a chat network is stored before it is acknowledged;
    every reply the router hands over is sent and recorded.

    The backends (``nanoclaw/channels/``: the terminal, WhatsApp) hand their
    messages to the commit line (``commit.py``: group commit, in order, the
    approval request made with its message). The socket ops: ``inbound`` and
    ``watch`` for terminals (``terminal_ops.py``), ``deliver`` and ``typing``
    for the router and the queue (``deliver.py``), ``progress`` from the queue
    (``progress.py``: a reaction, "typing…", a terminal's status line), ``pair`` and
    ``discover_groups`` for WhatsApp (here). The main agent's list of chats is
    kept by ``chats.py``.

READS
    WhatsApp (neonize) events; terminal clients on its socket (``inbound``,
    ``watch``); the router's ``deliver``; the queue's ``progress`` (and ``typing``); ``nanoclaw
    pair`` and ``groups discover``; the ``groups`` table.

WRITES
    ``message`` rows (``Message``, deduplicated by chat and the network's id),
    committed *before* the sender is acknowledged (messages that arrive
    together share one commit), then a nudge to the queue;
    bot messages (``is_bot``) for what it sent, which is how our own messages
    are recognised later, never by their text; media into
    ``groups/<folder>/inbox/`` (walked with ``safefs``: the agent can write
    that folder); a notice to ``spool/router`` for the main chat when a
    network stops for good or for hours (WhatsApp logged out, banned) and
    the main chat is on another one. When an unknown chat (or an unknown
    sender in an ``ask`` group) names the trigger: a ``request`` row and its
    card for the main chat (an ``outbox`` row), in the transaction that
    stores the message (core/approvals.py); an unregistered chat's message
    is kept only while its request is open (or ``store_unregistered``).
    The main agent's list of chats, ``ipc/<main>/in/available_groups.json``.

PRIVILEGE
    The service user; network for WhatsApp only (nanoclaw-channel.service).

HOSTILE INPUT
    Everything from the chat network (text, media, names, ids) and every
    socket line: sizes are capped, unknown chats never reach an agent (they
    can only ask the owner; the names they give are cleaned before shown).
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid

from nanoclaw.channels import BACKENDS, Backend, Inbound, TerminalBackend, WhatsAppBackend
from nanoclaw.core import config_file
from nanoclaw.core.models import Group
from nanoclaw.core.protocol import Spool, nudge
from nanoclaw.core.skeleton import Daemon
from nanoclaw.core.socket_replies import pushed_line
from nanoclaw.daemons.channel import deliver, progress, terminal_ops
from nanoclaw.daemons.channel.chats import ChatList
from nanoclaw.daemons.channel.commit import CommitLine


class ChannelDaemon(Daemon):
    name = "channel"

    async def setup(self) -> None:
        self.store_failure = ""  # why the last message could not be stored (or recorded), until one is
        self.line = CommitLine(self)
        self.chats = ChatList(self)
        self.backends: list[Backend] = []
        for name in self.cfg.channels:
            if name not in BACKENDS:
                raise SystemExit(f"unknown channel backend {name!r} (known: {', '.join(BACKENDS)})")
            self.backends.append(BACKENDS[name].create(self.cfg))
        self.terminal = next((b for b in self.backends if isinstance(b, TerminalBackend)), None)
        for backend in self.backends:
            backend.on_status = self._status_changed
            backend.on_alert = lambda text, b=backend: self._alert(b, text)
            await backend.start(self.receive)

    def receive(self, msg: Inbound) -> asyncio.Future[tuple[int, bool]]:
        """Store an inbound message durably before its sender hears so: the commit line
        (commit.py). The call takes the message's place in the line; the future gives
        (row id, duplicate?) once its commit is done, or raises StoreError."""
        return self.line.receive(msg)

    def store_failed(self, failure: str) -> None:
        """A message could not be stored (or a sent one recorded): said in the status."""
        self.store_failure = failure
        self._set_status()

    def stored_again(self) -> None:
        if self.store_failure:
            self.store_failure = ""
            self._set_status()

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        op = req["op"]
        if op == "inbound":
            return await terminal_ops.inbound(self, req)
        if op == "watch":
            return terminal_ops.watch(self, req, writer)
        if op == "deliver":
            return await deliver.deliver(self, req)
        if op == "typing":
            return await deliver.typing(self, req)
        if op == "progress":  # the queue: what an agent is doing (progress.py)
            return await progress.progress(self, req)
        if op == "pair":
            return await self._pair(req, writer)
        if op == "discover_groups":
            wa = self.whatsapp()
            return await wa.discover() if wa else self._no_whatsapp()
        return await super().handle(req, writer)

    def _status_changed(self) -> None:
        self._set_status()
        self.wake.set()  # e.g. WhatsApp connected: time to list its groups for the main agent

    async def work(self) -> float | None:
        """Keep the main agent's list of chats (chats.py) up to date."""
        return await self.chats.update(self.whatsapp())

    def disconnected(self, writer: asyncio.StreamWriter) -> None:
        # `nanoclaw send --wait` or a chat that exited: no longer a terminal attached
        if self.terminal:
            self.terminal.detach(writer)

    def backend_for(self, chat: str) -> Backend | None:
        """The enabled backend whose network this chat id belongs to."""
        return next((b for b in self.backends if b.owns(chat)), None)

    def whatsapp(self) -> WhatsAppBackend | None:
        return next((b for b in self.backends if isinstance(b, WhatsAppBackend)), None)

    @staticmethod
    def _no_whatsapp() -> dict:
        return {"ok": False, "error": 'the WhatsApp channel is not enabled: add "whatsapp" to channels '
                                      "in the configuration and restart the channel"}

    async def _pair(self, req: dict, writer: asyncio.StreamWriter) -> dict:
        """Pair WhatsApp, pushing each QR code (or the phone code) on this connection."""
        wa = self.whatsapp()
        if wa is None:
            return self._no_whatsapp()
        phone = req.get("phone")
        if phone is not None and not isinstance(phone, str):
            return {"ok": False, "error": "'phone' must be a string"}

        async def emit(event: dict) -> None:
            writer.write(pushed_line("pair", event))
            await asyncio.wait_for(writer.drain(), 10)

        return await wa.pair(phone, emit)

    def _alert(self, backend: Backend, text: str) -> None:
        """Tell the owner that ``backend`` stopped (for good, or for hours) in the main chat, when
        that chat is on another network: the network that failed cannot carry the news. The
        router delivers it like any notice (spool/router)."""
        main = Group.get_or_none(Group.is_main == True)  # noqa: E712
        other = self.backend_for(main.jid) if main else None
        if other is None or other is backend:
            self.log.info("%s alert not posted: the main chat is not on another channel", backend.name)
            return
        self.put(Spool(self.cfg.spool_dir / "router").ensure(), "outbound", {
            "key": f"channel:{backend.name}:{uuid.uuid4().hex}", "chat": main.jid, "kind": "notice",
            "text": f"{backend.name}: {text}"}, then=lambda: nudge(self.cfg.socket("router")))
        self.wake.set()  # a kept write is tried at the next pass
        self.log.info("%s alert posted to the main chat %s", backend.name, main.jid)

    def status(self) -> str:
        parts = [f"{b.name}: {b.status()}" for b in self.backends]
        if self.store_failure:
            parts.append(f"MESSAGES NOT STORED: {self.store_failure}")
        stuck = self.stuck()
        if stuck:
            parts.append(f"STUCK: {stuck}")
        return "; ".join(parts) + f"; {self.line.received} received since start in {self.line.commits} commits"

    def stuck(self) -> str:
        return "; ".join(filter(None, (b.stuck() for b in getattr(self, "backends", ()))))

    async def shutdown(self) -> None:
        for backend in self.backends:
            await backend.stop()

    async def run_async(self) -> None:
        await super().run_async()
        wa = self.whatsapp() if hasattr(self, "backends") else None
        if wa is not None and wa.lingering:
            # neonize left a Go call blocked in a worker thread (a stop during a dial waits for
            # the dial): asyncio.run, then the interpreter, would wait for it until systemd's
            # SIGKILL. Everything is stored; leave from inside the loop.
            self.log.info("exiting without waiting for the WhatsApp client's thread")
            logging.shutdown()
            os._exit(0)

    @classmethod
    def main(cls) -> None:
        cfg = config_file.get()
        if "whatsapp" in cfg.channels:
            from nanoclaw.channels.whatsapp.goenv import exec_with_go_environment
            exec_with_go_environment(cfg.whatsapp)  # returns once the environment is right
        cls(cfg).run()


main = ChannelDaemon.main
