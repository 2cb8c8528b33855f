"""Replies out to WhatsApp, and knowing our own messages when they come back.

SYNOPSIS
    out = Outbound(conn, presence)
    out.open(path)                                  the ids of our sends, kept on disk
    await out.send(chat, text, msg_id, quote, sender) -> the first chunk's WhatsApp id
    await out.say(chat, text)                       one line, straight through the client
    out.is_ours(msg_id, chats, text) -> bool

DESCRIPTION
    The server is linked to the owner's account as a companion device, so what we
    send goes out as the owner, and comes back as ``from_me`` message events (from
    other linked devices and in the owner's self-chat). whatsmeow does not let
    neonize choose a message id, so we remember the ids WhatsApp gave our sends (on
    disk, :mod:`sentids`, so a restart does not forget them) and, for an echo that
    overtakes the send's return, the exact chunk still in flight to that chat.
    Never a text prefix.

    A reply is translated to WhatsApp's markup and split into messages of
    ``max_message_chars`` (:mod:`format`); the chunks go out in order, together,
    under the rate limit (:mod:`ratelimit`). A retry of the same outbox message
    resumes after the chunks that already went out.

DIAGNOSTICS
    SendError, for the router to retry: not connected, not a JID, nothing left
    after formatting, or the send failing (which part of how many).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any

from nanoclaw.channels.base import SendError
from nanoclaw.channels.whatsapp.connection import Connection
from nanoclaw.channels.whatsapp.convert import JIDError, parse_jid
from nanoclaw.channels.whatsapp.format import split_message, to_whatsapp
from nanoclaw.channels.whatsapp.presence import Presence
from nanoclaw.channels.whatsapp.ratelimit import TokenBucket
from nanoclaw.channels.whatsapp.sentids import SentIds
from nanoclaw.core import config as config_mod
from nanoclaw.core.log import log_fields

log = logging.getLogger("nanoclaw.whatsapp")


def quoted(message_cls: Any, text: str, quote: dict) -> Any:
    """A text message showing ``quote`` ({id, sender, text}) as the message it replies to."""
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
        ContextInfo,
        ExtendedTextMessage,
    )
    context = ContextInfo(stanzaID=str(quote.get("id", "")), participant=str(quote.get("sender", "")),
                          quotedMessage=message_cls(conversation=str(quote.get("text", ""))))
    return message_cls(extendedTextMessage=ExtendedTextMessage(text=text, contextInfo=context))


class Outbound:
    """Sends, with what is needed to resume one and to recognise its echoes."""

    def __init__(self, conn: Connection, presence: Presence) -> None:
        self.conn, self.presence = conn, presence
        self.bucket = TokenBucket(self.wcfg.send_rate_per_minute, self.wcfg.send_burst)
        self.sent: SentIds | None = None
        self._inflight: Counter[tuple[str, str]] = Counter()
        self._progress: dict[str, list[str]] = {}  # outbox msg_id -> ids of chunks already sent
        self._done: OrderedDict[str, str] = OrderedDict()  # outbox msg_id -> first chunk id
        self._send_lock = asyncio.Lock()  # one reply's chunks go out together, in order

    @property
    def wcfg(self) -> config_mod.WhatsAppConfig:
        return self.conn.wcfg

    def open(self, path: Path) -> None:
        self.sent = SentIds(path)

    def is_ours(self, msg_id: str, chats: set[str], text: str) -> bool:
        """Whether a ``from_me`` message is one we sent: by the id WhatsApp gave it, or (an echo
        that overtook the send's return) as the very chunk in flight to one of ``chats``."""
        if self.sent is not None and msg_id in self.sent:
            return True
        return any((c, text) in self._inflight for c in chats)

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
        client = self.conn.client
        if client is None or not self.conn.connected:
            raise SendError(f"WhatsApp is not connected ({self.conn.status})")
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
        self.presence.stop(chat)  # a reply replaces "typing…"
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
                    resp = await client.send_message(jid, body)
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

    async def say(self, chat: str, text: str) -> None:
        """One line straight through the client: no outbox, no rate limit (a notice about
        the channel itself, when the database cannot take an outbox row). Raises on failure."""
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
        resp = await self.conn.client.send_message(parse_jid(chat), WAMessage(conversation=text))
        self.sent.add(resp.ID)
