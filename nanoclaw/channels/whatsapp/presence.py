""""typing…" in a WhatsApp chat while its agent works.

SYNOPSIS
    presence = Presence(conn)
    await presence.typing(chat, on)
    presence.showing(chat)     whether it shows
    presence.stop(chat)        a reply replaces "typing…"
    presence.stop_all()        at shutdown

DESCRIPTION
    WhatsApp clears the indicator by itself after a while, so it is said again
    every TYPING_REFRESH seconds, for at most TYPING_MAX per job, and only while
    connected. It is cosmetic: a failure is logged at debug level, never raised.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nanoclaw.channels.whatsapp.connection import Connection
from nanoclaw.channels.whatsapp.convert import parse_jid
from nanoclaw.core.log import log_fields
from nanoclaw.core.skeleton import supervise

log = logging.getLogger("nanoclaw.whatsapp")

TYPING_REFRESH = 10.0  # WhatsApp clears "typing…" by itself after a while: say it again
TYPING_MAX = 600.0  # never show typing longer than this for one job


class Presence:
    """One refreshing "typing…" task per chat."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._typing: dict[str, asyncio.Task] = {}

    async def typing(self, chat: str, on: bool) -> None:
        """Show "typing…" while the agent works; refreshed, since WhatsApp expires it."""
        self.stop(chat)
        if not self.conn.connected:
            return
        if on:
            task = supervise(asyncio.create_task(self._keep_typing(chat)), log, "showing typing", chat=chat)
            self._typing[chat] = task
            task.add_done_callback(lambda t, c=chat: self._typing.pop(c, None) if self._typing.get(c) is t else None)
        else:
            await self._presence(chat, False)

    def showing(self, chat: str) -> bool:
        return chat in self._typing

    def stop(self, chat: str) -> None:
        task = self._typing.pop(chat, None)
        if task:
            task.cancel()

    def stop_all(self) -> None:
        for task in list(self._typing.values()):
            task.cancel()

    async def _presence(self, chat: str, on: bool) -> None:
        from neonize.utils.enum import ChatPresence, ChatPresenceMedia
        state = ChatPresence.CHAT_PRESENCE_COMPOSING if on else ChatPresence.CHAT_PRESENCE_PAUSED
        try:
            await self.conn.client.send_chat_presence(parse_jid(chat), state,
                                                      ChatPresenceMedia.CHAT_PRESENCE_MEDIA_TEXT)
        except Exception as exc:  # cosmetic: never fail a job over it
            log.debug("typing=%s failed: %s", on, exc, extra=log_fields(chat=chat))

    async def _keep_typing(self, chat: str) -> None:
        until = time.monotonic() + TYPING_MAX
        while time.monotonic() < until and self.conn.connected:
            await self._presence(chat, True)
            await asyncio.sleep(TYPING_REFRESH)
        await self._presence(chat, False)
