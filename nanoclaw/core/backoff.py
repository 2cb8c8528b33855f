"""How long to wait before trying again: one rule for every retry in nanoclaw.

A failed agent run, a send the channel could not make, a scheduled task, a
WhatsApp connect: each waits ``base``·2ⁿ⁻¹ seconds before attempt n+1, capped,
so a long outage is retried soon after it ends instead of hours later.
"""

from __future__ import annotations


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``failures`` (1-based): base·2^(n-1), capped."""
    if failures < 1:
        return 0.0
    return min(cap, base * (2 ** (failures - 1)))


class Backoff:
    """The same rule, counting for itself (a connect loop that has no row to keep the count in)."""

    def __init__(self, first: float = 2.0, cap: float = 300.0) -> None:
        self.first, self.cap = first, cap
        self.attempt = 0

    def next(self) -> float:
        self.attempt += 1
        return backoff(self.attempt, self.first, self.cap)

    def reset(self) -> None:
        self.attempt = 0
