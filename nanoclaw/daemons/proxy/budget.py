"""The API relay's running totals: what each group (and all groups) spent this day and
month, summed from the database once and then kept up to date as calls are recorded, so
the check before a call does not re-read a month of rows. The relay is the one writer of
usage rows."""

from __future__ import annotations

from nanoclaw.core.config import Config
from nanoclaw.core.usage import ALL, PERIODS, Spent, period_days, spent


class Tally:
    """Running totals per (scope, period)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.totals: dict[tuple[str, str, str], list] = {}  # (scope, period, first day) -> [usd, tokens, unpriced]

    def spent(self, scope: str, period: str, at: float | None = None) -> Spent:
        key = (scope, period, period_days(self.cfg, period, at)[0])
        if key not in self.totals:
            if len(self.totals) > 1000:  # periods gone by, and removed groups
                self.totals.clear()
            s = spent(self.cfg, scope, period, at)
            self.totals[key] = [s.usd, s.tokens, s.unpriced]
        usd, tokens, unpriced = self.totals[key]
        return Spent(usd, tokens, unpriced)

    def add(self, folder: str, usd: float | None, tokens: int, at: float) -> None:
        """Count a call just recorded (totals not read yet are summed with it when first asked)."""
        for scope in (folder, ALL):
            for period in PERIODS:
                total = self.totals.get((scope, period, period_days(self.cfg, period, at)[0]))
                if total is not None:
                    total[0] += usd or 0.0
                    total[1] += tokens
                    total[2] += usd is None
