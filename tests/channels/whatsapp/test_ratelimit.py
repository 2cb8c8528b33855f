"""The outbound rate limit (ratelimit.py): a burst, then the rate; defaults that keep an account safe."""

from __future__ import annotations

import pytest

from nanoclaw.channels.whatsapp.ratelimit import TokenBucket
from nanoclaw.core import config as config_mod

from whatsapp_harness import run


def test_token_bucket_allows_a_burst_then_the_rate():
    now = [0.0]
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    async def go() -> list[float]:
        bucket = TokenBucket(per_minute=30, burst=3, clock=lambda: now[0], sleep=sleep)
        return [await bucket.acquire() for _ in range(6)]
    waits = run(go())
    assert waits[:3] == [0, 0, 0]
    assert waits[3:] == pytest.approx([2.0, 2.0, 2.0])  # 30/min: one every 2 s


def test_the_default_send_rate_stays_under_what_gets_accounts_banned():
    """whatsmeow's users report more than about 5 messages a minute as what gets an account
    banned: the defaults send a 3-part answer at once, then one message every 15 s."""
    wcfg = config_mod.WhatsAppConfig()
    assert wcfg.send_rate_per_minute <= 5 and wcfg.send_burst <= 3
    now = [0.0]

    async def sleep(s: float) -> None:
        now[0] += s

    async def go() -> list[float]:
        bucket = TokenBucket(wcfg.send_rate_per_minute, wcfg.send_burst, clock=lambda: now[0], sleep=sleep)
        return [await bucket.acquire() for _ in range(6)]
    assert run(go()) == pytest.approx([0, 0, 0, 15.0, 15.0, 15.0])
    assert now[0] == pytest.approx(45.0)  # six messages take 45 s, not one second
