"""The outbound rate limit for WhatsApp: a token bucket, first come first served."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any


class TokenBucket:
    """Outbound rate limit: ``burst`` sends at once, then ``per_minute`` on average.

    WhatsApp bans accounts that send like bots; a long answer split in chunks
    or a chatty agent must not come out as a burst of dozens of messages.
    """

    def __init__(self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep) -> None:
        self.rate = max(per_minute, 0.001) / 60.0
        self.burst = max(1, burst)
        self.tokens = float(self.burst)
        self.clock, self.sleep = clock, sleep
        self.stamp = clock()
        self.lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Take one token, waiting as long as needed; return the seconds waited."""
        waited = 0.0
        async with self.lock:  # first come, first served: chunks keep their order
            while True:
                now = self.clock()
                self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
                self.stamp = now
                if self.tokens >= 1:
                    self.tokens -= 1
                    return waited
                need = (1 - self.tokens) / self.rate
                waited += need
                await self.sleep(need)
