"""state: what a pass of the queue reads before plan() decides.

SUMMARY
    Reads the database (and the few files the rules depend on: allowlists, team
    folders, the disk's free space) into plan's plain ``State``.

SYNOPSIS
    Reader(q).read(now) -> State
    Reader.remember(state, decided)

DESCRIPTION
    Every live job, with whether it is idle and the last message its turns cover; for
    each group its agents' pending messages (past the cursor and the live job's turns,
    addressed to that agent or context for it), its due task run, its budget and who
    may wake it; whether the disk is full; the words that name a group (the owner's
    ``stop GROUP`` in the main chat, owner_chat.py).

    A group whose newest message was already looked at, with no job and nothing
    addressed to any agent, is not read again (``remember`` keeps what it looked like):
    its untriggered chatter only waits as context. Without this every pass re-read it
    all, so each stored message cost O(backlog). Budgets and the disk are looked at only
    where something could start. Queries are materialised with list(): a SELECT still
    stepping holds a read snapshot, and BEGIN IMMEDIATE on a stale snapshot fails at
    once (SQLITE_BUSY).

    Reading creates an agent's cursor the first time it is needed (where the queue
    alone keeps it: a new group's lead starts after the message the owner approved
    it for, see owner.py), and dismisses a member removed with work still for it
    (team.py), before its askers' answers are weighed.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.models import Cursor, Group, Job, Message, Task, TaskRun
from nanoclaw.core.prompt import next_batch
from nanoclaw.daemons.queue import owner_chat, sql
from nanoclaw.daemons.queue.plan import AgentKey, AgentState, DueTask, GroupState, LiveJob, Plan, Rules, State

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon

ACTIVE = ("queued", "running")


class Reader:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self.top = 0  # the newest message id the last pass saw
        self.approved: int | None = None  # the newest sender the owner approved, as of this pass
        self.nothing_for: dict[int, tuple] = {}  # group id -> what it looked like when nothing was for anyone
        self._seen: dict[int, tuple] = {}  # this pass's signatures

    def rules(self) -> Rules:
        cfg = self.q.cfg
        return Rules(max_concurrent=cfg.max_concurrent, burst_window=cfg.burst_window, prompt_cap=cfg.prompt_cap,
                     prompt_batch=cfg.prompt_batch, prompt_bytes=cfg.max_spool_bytes // 2, tz=cfg.tz,
                     voice_wait=cfg.voice.wait if cfg.voice.enabled else 0.0,
                     park_after=cfg.container.idle_timeout if cfg.container.paused_memory_mib > 0 else 0.0)

    def read(self, now: float) -> State:
        # The statements every pass runs are plain SQL (sql.py); the rest is peewee.
        top = sql.scalar(sql.NEWEST_MESSAGE) or 0
        jobs = self._jobs()
        # Which chats have messages since the last pass, and which groups have task runs queued:
        # two queries for all groups, so a pass costs little for the groups nothing happened in.
        changed = sql.column(sql.CHATS_SINCE, self.top)
        self.top = top
        task_groups = sql.column(sql.GROUPS_WITH_QUEUED_RUNS)
        self.approved = sql.scalar(sql.NEWEST_ALLOWED_SENDER)  # a sender the owner let in
        self._seen = {}
        groups = []
        wants_disk = any(j.status == "queued" for j in jobs.values())
        rows = list(Group.raw(sql.GROUPS))
        for group in rows:
            seen = self._signature(group, None if group.jid in changed else self.nothing_for.get(group.id))
            self._seen[group.id] = seen
            quiet = not any(k[0] == group.id for k in jobs) and self._still_nothing(group, seen)
            g = GroupState(group.id, group.folder, group.is_main, group.trigger, group.requires_trigger, row=group)
            if group.id in task_groups:
                g.task = self._next_task_run(group)
            if not quiet:
                g.agents = self._pending_by_agent(group, jobs)
            if any(a.pending for a in g.agents.values()):
                g.allowed = groups_mod.senders_for(self.q.cfg, group)  # its policy: open, allowlist or ask
                g.owner_asks = groups_mod.policy_of(self.q.cfg, group) == "ask"  # the owner never asks themselves
            runnable = g.task is not None and g.task.retry_at <= now
            starts = any(a.pending and (group.id, agent) not in jobs for agent, a in g.agents.items()) or \
                (runnable and (group.id, "") not in jobs)
            if starts or runnable:
                g.spent = usage_mod.exceeded(self.q.cfg, group.folder, now)
            wants_disk = wants_disk or starts
            groups.append(g)
        disk_low = wants_disk and self.q.holds.disk_low() is not None
        return State(groups, jobs, disk_low, dict(self.q.bursts), self.rules(),
                     owner_chat.group_refs(rows))  # the words that name a group: the owner's "stop GROUP"

    def remember(self, state: State, decided: Plan) -> None:
        """Keep what the groups found with nothing to do looked like, so the next pass need
        not read them again until that changes."""
        for g in state.groups:
            if g.id in decided.idle:
                self.nothing_for[g.id] = self._seen[g.id]
            else:
                self.nothing_for.pop(g.id, None)

    @staticmethod
    def _jobs() -> dict[AgentKey, LiveJob]:
        """Every live job, with whether a turn of it is unanswered and the last message its turns
        cover (in the one query)."""
        rows = Job.raw(sql.LIVE_JOBS)
        return {(j.group_id, j.agent): LiveJob(j.id, j.group_id, j.agent, j.status, j.closing,
                                               j.status == "running" and not j.closing and not j.open_turns,
                                               task=bool(j.task_run),
                                               idle_since=j.last_done or j.started_at or j.created_at, row=j)
                for j in list(rows)}

    @staticmethod
    def _next_task_run(group: Group) -> DueTask | None:
        run = (TaskRun.select().join(Task).where(Task.group == group, TaskRun.status == "queued")
               .order_by(TaskRun.id).first())
        return None if run is None else DueTask(run.id, run.retry_at, row=run)

    def _signature(self, group: Group, unchanged: tuple | None) -> tuple:
        """What decides whether a group's pending messages hold anything for an agent, besides the
        messages: its newest message id first (``unchanged``'s when no message came since), then
        its trigger settings, allowlist and team."""
        top = unchanged[0] if unchanged else sql.scalar(sql.NEWEST_IN_CHAT, group.jid) or 0
        try:
            allow = groups_mod.allowlist_path(self.q.cfg, group.folder).stat().st_mtime_ns
        except OSError:
            allow = None
        return (top, group.trigger, group.requires_trigger, group.is_main, group.policy, allow,
                self.approved, tuple(self.q.team.members(group)))

    def _still_nothing(self, group: Group, seen: tuple) -> bool:
        """True if a group found with nothing for any agent still has nothing: same settings, and
        none of the messages since is addressed to anyone (read just those, not the backlog)."""
        before = self.nothing_for.get(group.id)
        if before is None or before[1:] != seen[1:]:
            return False
        if before[0] == seen[0]:
            return True
        names = self.q.team.members(group)
        new = list(Message.raw(sql.PENDING, group.jid, before[0]))
        if any(team_mod.addressee(m, names) for m in new):
            return False
        if new and next_batch(new, cap=self.q.cfg.prompt_cap, batch=self.q.cfg.prompt_batch, trigger=group.trigger,
                              requires_trigger=group.requires_trigger and not group.is_main,
                              allowed=groups_mod.senders_for(self.q.cfg, group),
                              owner=groups_mod.policy_of(self.q.cfg, group) == "ask")[0]:
            return False
        self.nothing_for[group.id] = seen
        return True

    def _pending_by_agent(self, group: Group, jobs: dict[AgentKey, LiveJob]) -> dict[str, AgentState]:
        """Each agent's pending messages: past its cursor (and its live job's turns), addressed to
        it or for it from its team. The lead comes first and is always there."""
        team = self.q.team
        names = team.members(group)
        cursors = {c.agent: c for c in Cursor.raw(sql.CURSORS, group.id)}
        if "" not in cursors:
            cursors[""] = Cursor.create(group=group, agent="", last_message_id=self.q.owner.lead_start(group))
        # Agents with team messages waiting, even one whose member file is gone (dismissed below).
        waiting = sql.column(sql.AGENTS_WAITING, group.jid, min(c.last_message_id for c in cursors.values()))
        agents = [""] + sorted(set(names) | (waiting - {""}))
        for agent in agents:
            if agent not in cursors:
                cursors[agent] = team.first_cursor(group, agent)
        upto = {}
        for agent in agents:
            job = jobs.get((group.id, agent))
            turns = job.row.last_turn if job is not None else None
            upto[agent] = max(cursors[agent].last_message_id, turns or 0)
        rows = list(Message.raw(sql.PENDING, group.jid, min(upto.values())))
        out: dict[str, list[Message]] = {a: [] for a in agents}
        for m in rows:
            agent = team_mod.addressee(m, names)
            if agent in out and m.id > upto[agent]:
                out[agent].append(m)
        for agent in [a for a in agents if a and a not in names and out[a]]:
            team.dismiss(group, agent, out.pop(agent)[-1].id)
        for agent, pending in out.items():
            for m in pending:
                if m.agent is not None and m.answers is not None:  # an answer: ready when no sibling is out
                    m.ready = not team.outstanding(group, agent, m.chain)
        return {agent: AgentState(pending, cursors[agent].retry_at) for agent, pending in out.items()}
