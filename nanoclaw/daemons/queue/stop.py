"""stop: the queue's part of the owner's stop (stopped.py: which turns, and how they settle): carry it out, kill what ignores it.

SUMMARY
    ``stop``, from the main chat (owner_chat.py, an ``OwnerAnswer`` of the pass,
    carried out by owner.py) or from ``nanoclaw stop GROUP`` (the ``stop`` op on the
    queue's socket, which only the owner's processes can reach), marks the group's
    running turns stopped and drops a ``stop`` file in each agent's ``in/``; the agent
    runner interrupts the turn. A turn still not ended ``stopped.KILL_AFTER`` seconds
    later has its container killed through the runner's ``kill`` op; the job's end then
    settles it (``stopped.settle``, in turns.py).

SYNOPSIS
    Stopper(q).stop(group) -> str    the line to answer the owner with
    Stopper.on_socket(req) -> dict   {"op": "stop", "group": ref}
    Stopper.due() -> float | None    kill what is overdue; seconds to the next deadline

DESCRIPTION
    The deadlines are kept in memory: after a restart of the queue a stopped turn that
    never ends is ended by its container's time limit, as any.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nanoclaw.core import groups as groups_mod
from nanoclaw.daemons.queue import stopped as stop_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Job
from nanoclaw.core.protocol import request

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Stopper:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self.deadlines: dict[int, float] = {}  # job id -> when its container is killed if still on the turn

    def stop(self, group: Group) -> str:
        """Stop ``group``'s running turns now; the line to answer the owner with."""
        done = stop_mod.request(self.q.cfg, group)
        for job in done.jobs:
            self.deadlines[job] = time.time() + stop_mod.KILL_AFTER
            self.q.log.info("the owner stopped its turn; interrupting", extra=log_fields(group=group.folder,
                                                                                      job=job))
        self.q.wake.set()  # the deadline is one of work()'s
        return done.text

    def on_socket(self, req: dict) -> dict:
        """``nanoclaw stop GROUP``: {"op": "stop", "group": ref}."""
        ref = req.get("group")
        if not isinstance(ref, str) or not ref:
            return {"ok": False, "error": "stop needs a group"}
        try:
            group = groups_mod.find_group(ref)
        except groups_mod.GroupError as exc:
            return {"ok": False, "error": str(exc)}
        text = self.stop(group)
        return {"ok": True, "text": text}

    def due(self) -> float | None:
        """Kill the containers of stopped turns that did not end in time; seconds to the next deadline."""
        now = time.time()
        for job_id, deadline in list(self.deadlines.items()):
            if not stop_mod.overdue(job_id):
                del self.deadlines[job_id]
            elif deadline <= now:
                del self.deadlines[job_id]
                self._kill(job_id)
        return min((d - now for d in self.deadlines.values()), default=None)

    def _kill(self, job_id: int) -> None:
        job = Job.get_by_id(job_id)
        fields = log_fields(group=job.group.folder, job=job_id)
        self.q.log.warning("its stopped turn did not end within %.0fs; killing its container",
                           stop_mod.KILL_AFTER, extra=fields)
        try:
            said = request(self.q.cfg.socket("runner"), {"op": "kill", "job": job_id}, timeout=10)
            if not said.get("ok"):
                self.q.log.error("the runner did not kill it: %s", said.get("error"), extra=fields)
        except (OSError, ValueError) as exc:
            self.q.log.error("the runner is unreachable (%s); the container ends at its time limit", exc,
                             extra=fields)
