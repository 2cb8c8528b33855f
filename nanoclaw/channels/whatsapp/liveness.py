"""The WhatsApp client's lifecycle steps that must end in time, and which one is overdue.

neonize's client can hang where Python cannot end it: a dial through a silent
network lasts a minute and a stop waits for it; a stop during pairing never
ends. The channel cannot wait such a step out, only notice it: an overdue step
is reported by ``stuck()``, the daemon stops feeding systemd's watchdog, and
systemd replaces the process (tests/system: the watchdog test).
"""

from __future__ import annotations

import time
from collections.abc import Callable


class Liveness:
    """At most one step at a time (connecting, stopping), with its deadline."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.what = ""
        self.started = 0.0
        self.deadline: float | None = None

    def begin(self, what: str, limit: float) -> None:
        """``what`` starts now and must end within ``limit`` seconds (0: already too late)."""
        self.what, self.started, self.deadline = what, self.clock(), self.clock() + limit

    def end(self) -> None:
        self.what, self.deadline = "", None

    def overdue(self) -> str:
        """What has been going on past its deadline, and for how long ("" when nothing)."""
        if self.deadline is None or self.clock() < self.deadline:
            return ""
        return f"{self.what} for {self.clock() - self.started:.0f}s"
