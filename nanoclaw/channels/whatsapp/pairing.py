"""One `nanoclaw pair` in progress, as the channel daemon keeps it."""

from __future__ import annotations

import asyncio
from typing import Any


class Pairing:
    """One `nanoclaw pair` in progress: events for the CLI, then one result."""

    def __init__(self, phone: str | None) -> None:
        self.phone = phone
        self.events: asyncio.Queue[dict] = asyncio.Queue()
        self.code_requested = False
        self.done = False

    def push(self, event: dict) -> None:
        if not self.done:
            self.events.put_nowait(event)

    def finish(self, ok: bool, **fields: Any) -> None:
        if not self.done:
            self.events.put_nowait({"final": True, "ok": ok, **fields})
            self.done = True
