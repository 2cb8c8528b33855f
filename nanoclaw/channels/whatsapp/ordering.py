"""Store a chat's messages in the order WhatsApp handed them over.

neonize schedules every event handler as its own task, unordered: a photo
still downloading would be stored after the "what is this?" that followed it,
and the agent could start without the photo. Handlers start in arrival order
(neonize hands them to the loop one by one), so each takes its turn in its chat
before its first ``await`` and waits for the one before it there; other chats
are not held up.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class ChatOrder:
    """One queue per chat; a turn ends when the handler holding it returns or fails."""

    def __init__(self) -> None:
        self._tail: dict[str, asyncio.Future[None]] = {}

    @asynccontextmanager
    async def turn(self, chat: str) -> AsyncIterator[None]:
        """Wait for every earlier handler of ``chat``. The place in line is taken when this
        is entered (synchronously), so enter it before the handler's first ``await``."""
        before = self._tail.get(chat)
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tail[chat] = mine
        try:
            if before is not None:
                await asyncio.wait({before})  # never cancels the earlier turn with ours
            yield
        finally:
            mine.set_result(None)
            if self._tail.get(chat) is mine:
                del self._tail[chat]

    def __len__(self) -> int:
        return len(self._tail)
