"""queue: decides when each group's agent runs, and what it is told.

SUMMARY
    Turns stored messages (and fired tasks) into agent turns, one container
    per group's agent at a time (the lead, and each member of its team),
    under a global cap, with retries and backoff.

    Each pass handles the events in the spool, then reads the state into plain
    data (``state.py``), decides what runs next in a pure function of it
    (``plan.py``), and applies the actions. The rest is one job per file:

        turns.py   a chat job's life: started, fed follow-ups, answered, ended, retried
        team.py    a group's members, the answers owed between them
        tasks.py   a scheduled task's runs, settled in one place
        holds.py   a spent budget, a full disk: nothing starts, the chat is told once
        voice.py   voice notes sent to be transcribed; their transcripts kept before their turn
        owner.py   the owner's requests: approve/deny, stop/status/revoke in the main chat,
                   expiry, where an approved chat's agent starts
        stop.py    the owner's stop: a stopped turn's container killed if it does not end

READS
    New ``message`` rows (the channel nudges it); ``spool/queue``:
    ``turn_result`` (from ipc), ``job_event`` (from the runner),
    ``task_fire`` (from a timer), ``budget_spent`` (from the proxy), ``transcript``
    (from the runner: a voice note's transcript, hostile text, see ``voice.py``).

    Budgets (``core.usage``) and the state directory's free space: while either
    holds a group, its messages (and due task runs) wait, see ``holds.py``. An
    event whose handling the disk refused stays in ``cur/`` and is handled again
    at a later pass.

WRITES
    ``job`` files to ``spool/runner``; follow-up ``prompt`` and ``close`` files
    into a live container's ``ipc/<group>/in`` (host-only, the agent's view is
    read-only); ``outbound`` files to ``spool/router``; jobs, turns, cursors,
    sessions and task runs in the database.

    Delivery rule: an agent's cursor is the last message whose turn finished
    *and* whose reply is durably queued for the router (``turns.py``). Quiet by
    default: a turn whose answer is only ``<internal>`` notes sends nothing. With
    ``burst_window`` set a chat's burst is one turn; work() returns when the
    window ends, nothing polls.

PRIVILEGE
    The service user; no network.

HOSTILE INPUT
    ``turn_result`` texts and session ids come from agents (through ipc,
    which put the group there from the directory the file was found in); a
    result naming another group's job is refused.
"""

from __future__ import annotations

import time
from typing import Any

from nanoclaw.core import faults
from nanoclaw.core.models import Cursor, Group, Job
from nanoclaw.core.protocol import Spool, nudge, tell
from nanoclaw.core.skeleton import Daemon
from nanoclaw.daemons.queue import plan as plan_mod
from nanoclaw.daemons.queue.holds import Holds
from nanoclaw.daemons.queue.owner import Owner
from nanoclaw.daemons.queue.plan import AgentKey, Burst
from nanoclaw.daemons.queue.state import Reader
from nanoclaw.daemons.queue.stop import Stopper
from nanoclaw.daemons.queue.tasks import Tasks
from nanoclaw.daemons.queue.team import Team
from nanoclaw.daemons.queue.turns import Turns
from nanoclaw.daemons.queue.voice import Voice


class QueueDaemon(Daemon):
    name = "queue"

    def setup(self) -> None:
        self.inbox = Spool(self.cfg.spool_dir / "queue", max_bytes=self.cfg.max_spool_bytes).ensure()
        self.runner_spool = Spool(self.cfg.spool_dir / "runner").ensure()
        self.router_spool = Spool(self.cfg.spool_dir / "router").ensure()
        self.watch(self.inbox.new)
        self.passes = 0
        # Chat bursts being waited out: (group, agent) -> (first seen, newest message id, when seen).
        # In memory: after a restart a burst waits at most one cap again.
        self.bursts: dict[AgentKey, Burst] = {}
        self.turns, self.tasks, self.team = Turns(self), Tasks(self), Team(self)
        self.holds, self.owner, self.reader = Holds(self), Owner(self), Reader(self)
        self.voice = Voice(self)
        self.stopper = Stopper(self)  # the owner's stop (stop.py)
        self._pending = self.inbox.leftovers()
        if self._pending:
            self.log.info("re-processing %d event(s) left in cur/", len(self._pending))

    # -- events -------------------------------------------------------------
    def work(self) -> float | None:
        self.passes += 1
        events = self._pending + self.inbox.claim_new()
        self._pending = []
        touched = False
        envs = self.inbox.take(events)
        for i, env in enumerate(envs):
            try:
                if env.type == "turn_result":
                    touched |= self.turns.on_result(env)
                elif env.type == "job_event":
                    self.turns.on_job_event(env)
                elif env.type == "task_fire":
                    self.tasks.on_fire(env)
                elif env.type == "budget_spent":
                    self.holds.on_budget_spent(env)
                elif env.type == "transcript":
                    if not self.voice.on_transcript(env):
                        continue  # refused, in bad/
                else:
                    self.inbox.reject(env.path, f"type {env.type!r} is not for the queue")
                    continue
            except Exception as exc:  # one bad event must not wedge the queue
                if self.refused(exc):
                    # The disk refused a write: this event and the ones after it stay in cur/ and
                    # are handled again, in order, at a later pass (their effects are keyed).
                    self._pending = [e.path for e in envs[i:] if e.path is not None]
                    break
                self.log.exception("event %s failed", env.name)
                self.inbox.reject(env.path, f"processing failed: {exc}")
                continue
            self.inbox.done(env.path)
        if touched:
            nudge(self.cfg.socket("router"))
        expiry = self.owner.sweep()
        due = self._schedule()
        kill = self.stopper.due()  # stopped turns that outlast the interrupt
        return min((d for d in (expiry, due, kill) if d is not None), default=None)

    async def handle(self, req: dict, writer: Any) -> dict | None:
        if req.get("op") == "stop":  # nanoclaw stop GROUP
            return self.stopper.on_socket(req)
        return await super().handle(req, writer)

    # -- the pass: read, decide, apply -----------------------------------------
    def _schedule(self) -> float | None:
        """Start, feed or close agents' jobs as the messages and task runs now stored ask.
        Returns the seconds until the next thing is due."""
        now = time.time()
        self.turns.settle_stale(now)
        self.voice.ask_new(now)  # before the plan, which holds a voice note's turn for its transcript
        self.voice.expire(now)
        state = self.reader.read(now)
        decided = plan_mod.plan(state, now)
        self.bursts = decided.bursts
        for action in decided.actions:
            self._apply(action)
        self.reader.remember(state, decided)
        return None if decided.next_due is None else max(0.0, decided.next_due - time.time())

    def _apply(self, action: object) -> None:
        match action:
            case plan_mod.Start(group=g, agent=agent, batch=batch, prompt=prompt):
                self.turns.start(g.row, agent, batch, prompt)
            case plan_mod.FollowUp(group=g, job=job, turns=turns):
                self.turns.follow_up(job.row, g.row, turns)
            case plan_mod.StartTask(group=g, task=task):
                self.tasks.start(g.row, task.row)
            case plan_mod.Close(job=job):
                self.turns.close(job.row)
            case plan_mod.SkipTasks(group=g, spent=spent):
                self.tasks.skip_for_budget(g.row, spent)
            case plan_mod.BudgetNotice(group=g, spent=spent):
                self.holds.budget_notice(g.row, spent)
            case plan_mod.DiskNotice(group=g):
                self.holds.disk_notice(g.row)
            case plan_mod.OwnerAnswer(group=g, message=m):
                self.owner.answer(g.row, m)
            case _:
                raise TypeError(f"no way to apply {action!r}")

    def _typing(self, chat: str, on: bool) -> None:
        """Tell the channel an agent is working on (or done with) a chat: cosmetic,
        fire-and-forget, so it can neither block nor fail the job."""
        tell(self.cfg.socket("channel"), "typing", chat=chat, on=on)

    def status(self) -> str:
        running = Job.select().where(Job.status == "running").count()
        queued = Job.select().where(Job.status == "queued").count()
        failing = Cursor.select().where(Cursor.failures > 0).count()
        return (f"{Group.select().count()} groups, {running} running, {queued} queued"
                + (f", {failing} failing" if failing else "")
                + (f", {len(self.bursts)} chat(s) waiting for a burst to end" if self.bursts else "")
                + (f", {self.voice.waiting()} voice note(s) waiting for their transcript" if self.voice.waiting() else "")
                + (f"; no agent starts, {faults.MARK}: {self.holds.disk_why}" if self.holds.disk_why else ""))


main = QueueDaemon.main
