"""A status reaction on the message a turn answers: what the assistant is doing with it.

SYNOPSIS
    reactions = Reactions(conn, enabled)
    reactions.update(progress)     a turn's new state (core/progress.py)
    reactions.replied(chat)        a reply went out to the chat: its turns' reactions go
    reactions.stop_all()

DESCRIPTION
    accepted 👀 → working 🤔 → a tool running (💻 a shell, 🌐 the web, 👥 a team member,
    📝 files, 🔧 another) → removed when the reply is sent (at once for a silent turn), or
    ❌ when the turn failed; 👀 again while it waits to run again. WhatsApp keeps one
    reaction per sender and message, so each replaces the last: no stacking. A message's
    reaction changes at most once every ``min_interval`` seconds; changes in between are
    coalesced into the newest, which goes out when the interval ends. Only messages the
    queue started a turn for get one, so chats the assistant does not answer never do.

    The reaction is a real ``ReactionMessage`` keyed to the message (chat, id, sender;
    ``fromMe`` for the owner's own), sent through the client like any message.
    Cosmetic: a failed send is logged at debug level, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

from nanoclaw.channels.base import Progress
from nanoclaw.channels.whatsapp.connection import Connection
from nanoclaw.channels.whatsapp.convert import JIDError, parse_jid
from nanoclaw.core.log import log_fields
from nanoclaw.core.skeleton import supervise

log = logging.getLogger("nanoclaw.whatsapp")

EMOJI = {"accepted": "👀", "waiting": "👀", "working": "🤔", "failed": "❌", "silent": ""}
TOOL_EMOJI = {"shell": "💻", "web": "🌐", "team": "👥", "files": "📝", "tool": "🔧"}
REPLY_WAIT = 120.0  # a reaction whose reply never came is removed after this anyway
KEEP = 512  # messages whose reaction is remembered


def emoji_for(update: Progress) -> str | None:
    """The reaction a state shows; None: "replied" (removed once the reply is sent)."""
    if update.state == "tool":
        return TOOL_EMOJI.get(update.kind, TOOL_EMOJI["tool"])
    return EMOJI.get(update.state)


@dataclass
class _Mark:
    chat: str
    msg_id: str
    sender: str
    from_me: bool
    seq: int = 0
    shown: str = ""
    wanted: str = ""
    replied_at: float | None = None  # waiting for the reply to go out
    last: float = -1e9  # when the shown reaction was sent (monotonic)
    task: asyncio.Task | None = field(default=None, repr=False)


class Reactions:
    min_interval = 2.0  # seconds between two changes of one message's reaction

    def __init__(self, conn: Connection, enabled: bool = True) -> None:
        self.conn, self.enabled = conn, enabled
        self._marks: dict[tuple[str, str], _Mark] = {}

    def update(self, update: Progress) -> None:
        if not self.enabled or not update.message_id:
            return
        key = (update.chat, update.message_id)
        mark = self._marks.get(key)
        if mark is None:
            if update.state in ("replied", "silent"):
                return  # nothing shown: nothing to take back
            mark = self._marks[key] = _Mark(update.chat, update.message_id, update.message_sender,
                                            update.message_from_me)
            while len(self._marks) > KEEP:
                old = self._marks.pop(next(iter(self._marks)))
                if old.task:
                    old.task.cancel()
        if update.seq <= mark.seq:
            return  # overtaken by a newer line
        mark.seq = update.seq
        emoji = emoji_for(update)
        if emoji is None:  # the reply is on its way: removed when it is sent
            mark.replied_at = time.monotonic()
            self._want(mark, mark.wanted, delay=REPLY_WAIT, then="")
            return
        mark.replied_at = None
        self._want(mark, emoji)

    def replied(self, chat: str) -> None:
        """A reply went out to ``chat``: the reactions of its answered turns go."""
        for mark in list(self._marks.values()):
            if mark.chat == chat and mark.replied_at is not None:
                mark.replied_at = None
                self._want(mark, "")

    def stop_all(self) -> None:
        for mark in self._marks.values():
            if mark.task:
                mark.task.cancel()

    def _want(self, mark: _Mark, emoji: str, delay: float = 0.0, then: str | None = None) -> None:
        mark.wanted = emoji
        if mark.task is not None and not mark.task.done():
            mark.task.cancel()
        mark.task = supervise(asyncio.create_task(self._apply(mark, delay, then)), log, "status reaction",
                              chat=mark.chat)

    async def _apply(self, mark: _Mark, delay: float, then: str | None) -> None:
        if delay:
            await asyncio.sleep(delay)
            mark.wanted, mark.replied_at = then if then is not None else mark.wanted, None
        while mark.shown != mark.wanted:
            wait = mark.last + self.min_interval - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            emoji = mark.wanted
            await self._send(mark, emoji)
            mark.shown, mark.last = emoji, time.monotonic()
        if not mark.shown or mark.shown == EMOJI["failed"]:
            # nothing more will change: forget it (unless a newer turn took it up meanwhile)
            if self._marks.get((mark.chat, mark.msg_id)) is mark and mark.task is asyncio.current_task():
                del self._marks[(mark.chat, mark.msg_id)]

    async def _send(self, mark: _Mark, emoji: str) -> None:
        client = self.conn.client
        if client is None or not self.conn.connected:
            return
        from neonize.proto.waCommon.WACommon_pb2 import MessageKey
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
        from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ReactionMessage
        try:
            chat = parse_jid(mark.chat)
        except JIDError:
            return
        # In a group the key names who wrote the message; our own (the owner's) are fromMe.
        participant = mark.sender if chat.Server == "g.us" and not mark.from_me else ""
        key = MessageKey(remoteJID=mark.chat, fromMe=mark.from_me, ID=mark.msg_id, participant=participant)
        body = WAMessage(reactionMessage=ReactionMessage(key=key, text=emoji,
                                                          senderTimestampMS=int(time.time() * 1000)))
        try:
            await client.send_message(chat, body)
        except Exception as exc:  # cosmetic: never fail anything over it
            log.debug("reaction %r not sent: %s", emoji, exc, extra=log_fields(chat=mark.chat))
