"""holds: what keeps a group's agent from starting besides its own work: a spent budget, a full disk.

SUMMARY
    Budgets (``core.usage``): a group whose budget is spent starts no job; its chat is
    told once per budget and period (the notice's key), its messages wait until the
    budget resumes or the owner raises it, and its scheduled task runs are skipped
    (tasks.py), not retried.

    A full disk (``core.faults``): while the state directory's disk is nearly full no
    job starts; a chat with work waiting is told once per episode, its messages (and due
    task runs) wait, and a job that failed meanwhile is not counted against its retries.

SYNOPSIS
    Holds(q).disk_low() -> str | None
    Holds.disk_notice(group)
    Holds.budget_notice(group, spent)
    Holds.on_budget_spent(env)

DESCRIPTION
    ``disk_low`` looks at the disk once per pass and logs when an episode starts and
    ends. Notices go to the router's spool; one the disk refuses is kept and written
    once it can be (``Daemon.put``).

HOSTILE INPUT
    ``budget_spent`` comes from the proxy, naming a group's folder: only a registered
    group is told, and only when its budget is really spent as the database says.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nanoclaw.core import faults
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group
from nanoclaw.core.protocol import Envelope, nudge

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Holds:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self.told: set[str] = set()  # budget notices handed to the router by this process
        self._disk_pass = -1  # the pass the disk was last looked at in
        self.disk_why: str | None = None  # why no agent starts (a full disk), as of that pass
        self._disk_episode = 0  # when the disk was found full, for the notices' keys
        self._disk_told: set[str] = set()
        self.last_low = 0.0  # when the disk was last seen full

    # -- a full disk --------------------------------------------------------
    def disk_low(self) -> str | None:
        """Why no agent should start now (the state directory's disk is nearly full), or None.
        Looked at once per pass."""
        if self._disk_pass == self.q.passes:
            return self.disk_why
        self._disk_pass = self.q.passes
        why = faults.low_space(self.q.cfg.state_dir)
        if why is not None:
            self.last_low = time.time()
            if self.disk_why is None:
                self._disk_episode = int(time.time())
                self.q.log.warning("%s: no agent starts until there is space; chats with work waiting are told", why)
        elif self.disk_why is not None:
            self.q.log.warning("space again: agents start")
        self.disk_why = why
        return why

    def disk_notice(self, group: Group) -> None:
        """Tell a chat once per full-disk episode that its messages wait for space (a notice the
        disk refuses is kept and sent once it can be)."""
        key = f"disk:{self._disk_episode}:{group.folder}"
        if key in self._disk_told:
            return
        self._disk_told.add(key)
        self.q.put(self.q.router_spool, "outbound", {
            "key": key, "chat": group.jid, "kind": "notice",
            "text": f"The server's disk is full: messages to {group.name} wait, and are answered once "
                    "space is freed."}, then=lambda: nudge(self.q.cfg.socket("router")))
        self.q.log.warning("waits for disk space; chat told", extra=log_fields(group=group.folder))

    # -- budgets ------------------------------------------------------------
    def on_budget_spent(self, env: Envelope) -> None:
        """The proxy refused a call for a spent budget: tell the chat (once)."""
        group = Group.get_or_none(Group.folder == env.body.get("group"))
        if group is None:
            return
        spent = usage_mod.exceeded(self.q.cfg, group.folder)
        if spent is not None:
            self.budget_notice(group, spent)

    def budget_notice(self, group: Group, spent: usage_mod.Exceeded) -> None:
        """One notice per budget and period: the outbox key makes a repeat (another process,
        a restart) harmless; the set spares the router's spool the repeats of this one."""
        if spent.key in self.told:
            return
        self.q.put(self.q.router_spool, "outbound", {"key": spent.key, "chat": group.jid, "kind": "notice",
                                                     "text": spent.text(group.name) + "."},
                   then=lambda: nudge(self.q.cfg.socket("router")))
        self.told.add(spent.key)
        self.q.log.warning("budget spent (%s per %s); chat told", spent.limit.unit, spent.limit.period,
                           extra=log_fields(group=group.folder))
