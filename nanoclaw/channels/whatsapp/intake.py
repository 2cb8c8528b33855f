"""WhatsApp messages in: an event checked, its media downloaded, handed over to be stored.

SYNOPSIS
    intake = Intake(conn, outbound, groups); intake.receive = the channel's store-then-ack
    intake.handlers() -> {neonize event name: handler}   registered by the connection
    await intake.drain(wait)                               at shutdown: handlers still storing

DESCRIPTION
    * The owner's own messages (``from_me`` but not ours: :mod:`outbound` knows
      ours) are real input: the main group is the owner's self-chat. A
      self-chat message's destination is us: a DM the owner typed to someone
      else never passes for it (``convert.chat_of``).
    * Only registered chats reach the agent; others are dropped (or stored when
      ``[whatsapp] store_unregistered`` is set) and never answered — the queue
      only ever looks at registered groups' chats. A message naming the trigger
      in an unregistered chat is handed over with the chat's name and size: it
      may ask the owner for approval (core/approvals.py decides, the channel
      keeps it only while that request is open).
    * A chat or sender that arrives as a bare ``@lid`` is mapped to its phone
      form from whatsmeow's store, only while connected (``while_connected``).
    * A chat's messages are stored in the order WhatsApp handed them over
      (:mod:`ordering`), a photo still downloading before the question after it.
      whatsmeow acknowledged them when it queued them, so a stop lets the
      handlers still storing finish first, and a message that cannot be stored
      (a full disk) is told to its chat, at most once in NOT_STORED_QUIET.

HOSTILE INPUT
    Everything in the event: text (cut at MAX_TEXT), names, ids, media. Media is
    downloaded only for a registered group, within ``max_media_bytes`` and
    MEDIA_TIMEOUT, into that group's ``inbox/``, which the agent can write: walked
    without following links, the file created ``O_EXCL`` then renamed into place
    (:mod:`nanoclaw.channels.attachments`, :mod:`safefs`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable
from typing import Any

from nanoclaw.channels import attachments
from nanoclaw.channels.base import Receive, StoreError
from nanoclaw.channels.whatsapp.connection import Connection
from nanoclaw.channels.whatsapp.convert import (
    GROUP_SERVER,
    LID_SERVER,
    Media,
    chat_of,
    jid_str,
    media_of,
    message_text,
    parse_jid,
    sender_of,
    to_inbound,
)
from nanoclaw.channels.whatsapp.groups import Groups
from nanoclaw.channels.whatsapp.ordering import ChatOrder
from nanoclaw.channels.whatsapp.outbound import Outbound
from nanoclaw.core import config as config_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Message
from nanoclaw.core.prompt import matches_trigger

log = logging.getLogger("nanoclaw.whatsapp")

MAX_TEXT = 64 * 1024
NOT_STORED_QUIET = 600.0  # seconds between two "not stored" notices to one chat
MEDIA_TIMEOUT = 120.0  # a download still going after this is given up: the chat's next messages wait for it


class Intake:
    def __init__(self, conn: Connection, outbound: Outbound, groups: Groups) -> None:
        self.conn, self.outbound, self.groups = conn, outbound, groups
        self.receive: Receive  # the channel daemon's, given at start
        self.cfg = conn.cfg
        self._order = ChatOrder()
        self._storing: set[asyncio.Task] = set()  # message handlers that have not stored yet
        self._not_stored_told: dict[str, float] = {}
        self._phones: OrderedDict[str, str] = OrderedDict()  # LID -> phone JID, as the store mapped it

    @property
    def wcfg(self) -> config_mod.WhatsAppConfig:
        return self.conn.wcfg

    def handlers(self) -> dict[str, Any]:
        return {"MessageEv": self.on_message, "ReceiptEv": self.on_receipt}

    async def drain(self, wait: float) -> None:
        """Let the handlers still storing finish (whatsmeow told WhatsApp we have their
        messages when it queued them), for at most ``wait`` seconds."""
        if self._storing:
            await asyncio.wait(set(self._storing), timeout=wait)

    async def on_receipt(self, client: Any, ev: Any) -> None:
        log.debug("receipt type=%s ids=%s", ev.Type, list(ev.MessageIDs))

    async def on_message(self, client: Any, ev: Any) -> None:
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
        conn = self.conn
        raw_chat = jid_str(src.Chat)
        destination = info.DeviceSentMeta.DestinationJID if info.HasField("DeviceSentMeta") else ""
        chat = chat_of(src, conn.own_lid, conn.own_phone, destination)
        if chat.endswith("@" + LID_SERVER):
            chat = await self._phone_for(chat) or chat
        # Our own JID as it arrived never stands in for what chat_of made of it (a DM the
        # owner sent to someone else must not find the main group under it).
        forms = {chat} if chat != raw_chat and raw_chat in (conn.own_phone, conn.own_lid) else {chat, raw_chat}
        msg_id = info.ID
        text = message_text(ev.Message)
        if src.IsFromMe and self.outbound.is_ours(msg_id, forms, text):
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
        sender = sender_of(src, conn.own_lid, conn.own_phone)
        if sender.endswith("@" + LID_SERVER):
            sender = await self._phone_for(sender) or sender
        media = media_of(ev.Message, msg_id)
        attachment = await self._save_media(client, ev, media, group) if media is not None else None
        if not text.strip() and attachment is None:
            log.debug("no text (reaction, sticker, protocol message); ignored", extra=log_fields(chat=chat, msg=msg_id))
            return
        inbound = to_inbound(ev, chat=chat, text=text[:MAX_TEXT], own_lid=conn.own_lid,
                             own_phone=conn.own_phone, media=attachment, sender=sender, group=group)
        if group is None and matches_trigger(text, self.cfg.default_trigger):
            # It may ask the owner: the card names the chat (a direct chat by the other person,
            # never by the owner's own name when the owner wrote there).
            name, members = (await self.groups.name_of(chat) if chat.endswith("@" + GROUP_SERVER)
                             else ("" if inbound.from_me else inbound.sender_name, None))
            inbound = dataclasses.replace(inbound, chat_name=name, members=members)
        return chat, self.receive(inbound)

    async def _phone_for(self, lid: str) -> str | None:
        """The phone JID whatsmeow's store has for ``lid``: a DM can arrive as a bare @lid
        with no phone form beside it (whatsmeow issues 1014, 1262), and a registered chat
        is known by its phone form."""
        if lid in self._phones:
            return self._phones[lid]
        pn = await self.conn.while_connected(lambda: self.conn.client.get_pn_from_lid(parse_jid(lid)))
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
        if now - self._not_stored_told.get(chat, -NOT_STORED_QUIET) < NOT_STORED_QUIET or not self.conn.connected:
            return
        self._not_stored_told[chat] = now
        text = f"{self.cfg.assistant_name}: your message did not reach me ({reason}). Please send it again later."
        try:
            await self.outbound.say(chat, text)
        except Exception as exc:
            log.warning("cannot say that a message was not stored: %s", exc, extra=log_fields(chat=chat))

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
