"""What the API relay lets a group spend and hold: running totals, reservations, slots.

Totals: what each group (and all groups) spent this day and month, summed from the
database once and then kept up to date as calls are recorded (the relay is the one
writer of usage rows), so the check before a call does not re-read a month of rows.

Reservations: a call holds its estimate (its input, guessed from the body's size, plus
``max_tokens``, at its model's price) against the budgets from before it leaves until
its real usage is recorded, so calls in flight count as spent and parallel calls cannot
overshoot a budget by more than one call.

Slots: calls in flight and request bytes held, per group and per agent, so one group
cannot take every connection to the API or the relay's memory.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass

from nanoclaw.core.config import Config
from nanoclaw.core.usage import ALL, PERIODS, Spent, period_days, spent

TOKENS_PER_BYTE = 0.25  # an input estimate: about 4 bytes of a request body per token


@dataclass
class Hold:
    """One call's reservation."""

    folder: str
    usd: float
    tokens: int
    released: bool = False


class Tally:
    """Running totals per (scope, period), and the reservations of calls in flight."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.totals: dict[tuple[str, str, str], list] = {}  # (scope, period, first day) -> [usd, tokens, unpriced]
        self.held: dict[str, list] = {}  # scope -> [usd, tokens] of calls in flight
        self.settled = asyncio.Event()  # set whenever a reservation is given back

    def spent(self, scope: str, period: str, at: float | None = None) -> Spent:
        """What was recorded."""
        key = (scope, period, period_days(self.cfg, period, at)[0])
        if key not in self.totals:
            if len(self.totals) > 1000:  # periods gone by, and removed groups
                self.totals.clear()
            s = spent(self.cfg, scope, period, at)
            self.totals[key] = [s.usd, s.tokens, s.unpriced]
        usd, tokens, unpriced = self.totals[key]
        return Spent(usd, tokens, unpriced)

    def committed(self, scope: str, period: str, at: float | None = None) -> Spent:
        """What was recorded, and what the calls in flight hold."""
        s = self.spent(scope, period, at)
        usd, tokens = self.held.get(scope, (0.0, 0))
        return Spent(s.usd + usd, s.tokens + tokens, s.unpriced)

    def add(self, folder: str, usd: float | None, tokens: int, at: float) -> None:
        """Count a call just recorded (totals not read yet are summed with it when first asked)."""
        for scope in (folder, ALL):
            for period in PERIODS:
                total = self.totals.get((scope, period, period_days(self.cfg, period, at)[0]))
                if total is not None:
                    total[0] += usd or 0.0
                    total[1] += tokens
                    total[2] += usd is None

    def hold(self, folder: str, usd: float, tokens: int) -> Hold:
        for scope in (folder, ALL):
            held = self.held.setdefault(scope, [0.0, 0])
            held[0] += usd
            held[1] += tokens
        return Hold(folder, usd, tokens)

    def release(self, hold: Hold | None) -> None:
        """Give a reservation back (after the call's real usage was added, if it had any)."""
        if hold is None or hold.released:
            return
        hold.released = True
        for scope in (hold.folder, ALL):
            held = self.held[scope]
            held[0] -= hold.usd
            held[1] -= hold.tokens
            if held[1] <= 0:
                del self.held[scope]
        self.settled.set()
        self.settled = asyncio.Event()

    async def wait(self, timeout: float) -> None:
        """Until a reservation is given back, or ``timeout`` seconds."""
        try:
            await asyncio.wait_for(self.settled.wait(), timeout)
        except asyncio.TimeoutError:
            pass


class Slots:
    """Calls in flight and request bytes held, per group and per agent."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.calls: Counter[tuple[str, str]] = Counter()  # (folder, agent) -> calls in flight
        self.group_calls: Counter[str] = Counter()
        self.buffered: Counter[str] = Counter()  # folder -> request bytes held

    def take(self, folder: str, agent: str) -> str:
        """Take a call slot; '' or why not."""
        api = self.cfg.api
        if self.calls[(folder, agent)] >= api.max_calls_per_agent:
            return f"this agent already has {api.max_calls_per_agent} API calls in flight"
        if self.group_calls[folder] >= api.max_calls_per_group:
            return f"this group already has {api.max_calls_per_group} API calls in flight"
        self.calls[(folder, agent)] += 1
        self.group_calls[folder] += 1
        return ""

    def give(self, folder: str, agent: str) -> None:
        for counter, key in ((self.calls, (folder, agent)), (self.group_calls, folder)):
            counter[key] -= 1
            if counter[key] <= 0:
                del counter[key]

    def buffer(self, folder: str, n: int) -> bool:
        """Hold ``n`` more bytes of a request body for the group, if it stays under its cap."""
        if self.buffered[folder] + n > self.cfg.api.max_buffered_per_group:
            return False
        self.buffered[folder] += n
        return True

    def unbuffer(self, folder: str, n: int) -> None:
        self.buffered[folder] -= n
        if self.buffered[folder] <= 0:
            del self.buffered[folder]
