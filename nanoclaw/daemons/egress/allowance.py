"""The web bytes a group, and each of its agents, may move in one of the owner's days.

Counted per group (its lead and team together: ``max_bytes_per_day``) and per agent
(``max_bytes_per_agent_per_day``), in and out together, on the owner's day as budgets are
(``core.usage.day_of``). Not per container start: a lead that delegates, or a container
that restarts, gets nothing back. Kept in memory and written to ``EgressBytes`` rows every
few seconds and when egress stops, so a restart of egress gives nothing back either (a
crash loses at most the last few seconds' bytes).
"""

from __future__ import annotations

from collections import Counter

from peewee import SQL

from nanoclaw.core.config import Config
from nanoclaw.core.egress import EgressPolicy, Refusal
from nanoclaw.core.models import EgressBytes, db
from nanoclaw.core.usage import day_of, resets_at

FLUSH_EVERY = 2.0  # seconds between writes of the counts, while bytes move


class Allowance:
    """Today's counts, loaded from the database once a day and added to as bytes pass."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.day = ""
        self.agents: Counter[tuple[str, str]] = Counter()  # (folder, agent) -> bytes today
        self.groups: Counter[str] = Counter()
        self.unsaved: Counter[tuple[str, str]] = Counter()

    def _today(self) -> None:
        day = day_of(self.cfg)
        if day == self.day:
            return
        self.flush()  # the day that ended keeps its counts
        self.day = day
        self.agents.clear()
        self.groups.clear()
        for row in EgressBytes.select().where(EgressBytes.day == day):
            self.agents[(row.group, row.agent)] = row.bytes
            self.groups[row.group] += row.bytes

    def refusal(self, folder: str, agent: str, policy: EgressPolicy) -> Refusal | None:
        """Why a new connection may not start (an allowance is used up), or None."""
        self._today()
        why = self._over(folder, agent, policy, strict=False)
        return Refusal("byte-cap", why) if why else None

    def add(self, folder: str, agent: str, n: int, policy: EgressPolicy) -> str:
        """Count ``n`` bytes; '' or why the connection must be cut (an allowance passed)."""
        self._today()
        self.agents[(folder, agent)] += n
        self.groups[folder] += n
        self.unsaved[(folder, agent)] += n
        return self._over(folder, agent, policy, strict=True)

    def _over(self, folder: str, agent: str, policy: EgressPolicy, strict: bool) -> str:
        resumes = f"{resets_at(self.cfg, 'day'):%H:%M} {self.cfg.tz}"
        for cap, used, whose in ((policy.max_bytes_per_day, self.groups[folder], "this group's"),
                                 (policy.max_bytes_per_agent_per_day, self.agents[(folder, agent)], "this agent's")):
            if cap and (used > cap if strict else used >= cap):
                return f"{whose} web allowance of {cap} bytes a day is used up; it resumes at {resumes}"
        return ""

    def flush(self) -> None:
        """Write the counts not yet written (one transaction)."""
        if not self.unsaved or not self.day:
            return
        rows = [{"group": f, "agent": a, "day": self.day, "bytes": n} for (f, a), n in self.unsaved.items()]
        with db.atomic():
            for row in rows:
                (EgressBytes.insert(**row)
                 .on_conflict(conflict_target=[EgressBytes.group, EgressBytes.agent, EgressBytes.day],
                              update={EgressBytes.bytes: SQL('"bytes" + excluded."bytes"')}).execute())
        self.unsaved.clear()
