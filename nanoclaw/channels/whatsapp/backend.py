"""The WhatsApp backend, on neonize (whatsmeow inside a Go library): the face the channel uses.

The server is linked to the owner's account as a companion device, so what we
send goes out as the owner and comes back to us; the owner's own messages are
real input (the main group is the owner's self-chat); only registered chats
reach an agent. The work is done by one part per job, all sharing one
:class:`Connection`:

    connection  neonize's client: connect loop, stop, lifecycle events, liveness
    intake      message events to stored messages (media downloaded, in order)
    outbound    replies out in chunks, and our own messages known when they echo
    presence    "typing…" while an agent works
    reactions   a status reaction on the message a turn answers
    groups      the account's groups: discover, names, an unknown group's card
    pairing     `nanoclaw pair`, run in its own process while our client is stopped

``WhatsAppBackend`` wires them and is what the channel daemon sees: ``start``,
``send``, ``typing``, ``progress``, ``pair``, ``discover``, ``status``, ``stuck``, ``stop``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nanoclaw.channels.base import Backend, Progress, Receive
from nanoclaw.channels.whatsapp import pairing
from nanoclaw.channels.whatsapp.connection import Connection, new_client
from nanoclaw.channels.whatsapp.convert import SERVERS
from nanoclaw.channels.whatsapp.groups import Groups
from nanoclaw.channels.whatsapp.intake import Intake
from nanoclaw.channels.whatsapp.outbound import Outbound
from nanoclaw.channels.whatsapp.presence import Presence
from nanoclaw.channels.whatsapp.reactions import Reactions
from nanoclaw.core import progress as progress_mod
from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file

STOP_WAIT = 5.0  # at shutdown, for each of: handlers still storing, the client's stop, its task

Emit = Callable[[dict], Awaitable[None]]


class WhatsAppBackend(Backend):
    name = "whatsapp"
    # Tests replace these: a recording stand-in for the neonize client, a scripted pairing child.
    client_factory: Callable[[Path], Any] = staticmethod(new_client)
    pair_command: tuple[str, ...] = pairing.PAIR_COMMAND

    @classmethod
    def create(cls, cfg: config_mod.Config) -> WhatsAppBackend:
        return cls(cfg)

    def __init__(self, cfg: config_mod.Config | None = None) -> None:
        self.cfg = cfg or config_file.get()
        # The daemon replaces on_status and on_alert after this: look them up at each call.
        self.conn = Connection(self.cfg, on_status=lambda: self.on_status(),
                               on_alert=lambda text: self.on_alert(text),
                               on_connected=lambda: self.groups.keep_refreshing())
        self.presence = Presence(self.conn)
        self.reactions = Reactions(self.conn, self.cfg.whatsapp.status_reactions)
        self._turns: dict[str, dict[tuple[int, int], tuple[int, bool]]] = {}  # chat -> turn -> (seq, busy)
        self.outbound = Outbound(self.conn, self.presence)
        self.groups = Groups(self.conn)
        self.intake = Intake(self.conn, self.outbound, self.groups)

    @property
    def connected(self) -> bool:
        return self.conn.connected

    @property
    def lingering(self) -> bool:
        """Shutdown left a neonize task (and its Go thread) running."""
        return self.conn.lingering

    def owns(self, chat: str) -> bool:
        return chat.rpartition("@")[2] in SERVERS

    async def start(self, receive: Receive) -> None:
        """Create the session dir and client, register handlers, start connecting
        in the background (a missing network must not hold up the channel)."""
        self.receive = self.intake.receive = receive
        self.conn.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.conn.dir, 0o700)  # the session holds the account's keys
        self.outbound.open(self.conn.dir / "sent-ids")
        self.conn.start(type(self).client_factory, self.intake.handlers())

    def status(self) -> str:
        return self.conn.status

    def stuck(self) -> str:
        return self.conn.stuck()

    async def stop(self) -> None:
        """Stop within about 3 × STOP_WAIT whatever neonize does: handlers still storing
        first (whatsmeow told WhatsApp we have their messages when it queued them), then
        the client."""
        self.conn.stopping = True
        self.conn.wake()
        self.presence.stop_all()
        self.reactions.stop_all()
        self.groups.stop()
        if self.conn.pairing is not None:
            self.conn.pairing.cancel()
        await self.intake.drain(STOP_WAIT)
        await self.conn.stop(STOP_WAIT)

    async def send(self, chat: str, text: str, msg_id: str, quote: dict | None = None, sender: str = "") -> str:
        sent = await self.outbound.send(chat, text, msg_id, quote=quote, sender=sender)
        self.reactions.replied(chat)
        return sent

    async def progress(self, update: Progress) -> None:
        """A turn's state: its message's reaction, and "typing…" while a turn of the chat
        runs in a container (never while one only waits: to start, for a budget, to retry).
        A silent turn's ends at once; a reply's when the reply goes out (it replaces it)."""
        self.reactions.update(update)
        turns = self._turns.setdefault(update.chat, {})
        key = (update.job, update.turn)
        if key in turns and turns[key][0] >= update.seq:
            return  # overtaken by a newer line
        turns[key] = (update.seq, update.state in progress_mod.BUSY)
        busy = any(b for _, b in turns.values())
        for k in [k for k, (_, b) in turns.items() if not b][:-8]:  # a few ended turns are enough
            del turns[k]
        if busy and not self.presence.showing(update.chat):
            await self.presence.typing(update.chat, True)
        elif not busy and update.state != "replied" and self.presence.showing(update.chat):
            await self.presence.typing(update.chat, False)

    async def typing(self, chat: str, on: bool) -> None:
        await self.presence.typing(chat, on)

    async def pair(self, phone: str | None, emit: Emit) -> dict:
        """Link this server as a device, streaming codes to ``emit`` (pairing.pair)."""
        return await pairing.pair(self.conn, self.pair_command, phone, emit)

    async def discover(self) -> dict:
        """The account's groups, for `nanoclaw groups discover`."""
        return await self.groups.discover()

    async def refresh_names(self) -> int:
        return await self.groups.refresh_names()

