"""The terminal backend: chats typed in ``nanoclaw chat`` over the channel's socket.

Its chats are ``<folder>@term``. A reply is "sent" once it is stored as a bot
message and written to every terminal watching that chat; a terminal that
attaches later is shown the recent history, so nothing is lost by not watching.
While an agent works, its terminals get ``progress`` lines (who, since when, what
it is doing: ``nanoclaw chat`` shows them as a status line).
"""

from __future__ import annotations

import asyncio

from nanoclaw.channels.base import Backend, Progress
from nanoclaw.core.socket_replies import pushed_line


class TerminalBackend(Backend):
    name = "terminal"

    def __init__(self) -> None:
        self.watchers: dict[str, set[asyncio.StreamWriter]] = {}

    def owns(self, chat: str) -> bool:
        return chat.endswith("@term")

    def attach(self, chat: str, writer: asyncio.StreamWriter) -> None:
        self.watchers.setdefault(chat, set()).add(writer)

    def detach(self, writer: asyncio.StreamWriter) -> None:
        for chat in list(self.watchers):
            self.watchers[chat].discard(writer)
            if not self.watchers[chat]:
                del self.watchers[chat]

    async def show(self, chat: str, event: dict, op: str = "message") -> None:
        """Push an event line (its struct: core/socket_replies.py) to every terminal watching
        ``chat``; drop dead ones."""
        line = pushed_line(op, {"chat": chat, **event})
        for writer in list(self.watchers.get(chat, ())):
            try:
                writer.write(line)
                await asyncio.wait_for(writer.drain(), 5)
            except (OSError, asyncio.TimeoutError):
                self.detach(writer)

    async def send(self, chat: str, text: str, msg_id: str, quote: dict | None = None, sender: str = "") -> str:
        await self.show(chat, {"text": text, "id": msg_id, "from": "assistant", "name": sender})
        return msg_id

    async def progress(self, update: Progress) -> None:
        await self.show(update.chat, {k: getattr(update, k) for k in (
            "state", "seq", "job", "turn", "who", "since", "tool", "detail")}, op="progress")

    def status(self) -> str:
        n = len({w for ws in self.watchers.values() for w in ws})
        return f"{n} terminal(s) attached"
