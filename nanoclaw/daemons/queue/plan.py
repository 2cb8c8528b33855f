"""plan: what the queue does next, decided from plain data.

SUMMARY
    The queue's pass in three steps: read the database into a ``State``
    (``state.py``), decide here, apply the actions (``__init__.py``). Nothing
    here reads the database, the disk or the clock: ``now`` is passed in, so
    the rules can be tested row by row without a database
    (``tests/daemons/queue/test_plan.py``). Which of an agent's pending
    messages a turn covers (owner's commands, voice notes, bursts, a prompt's
    size) is decided by ``pending.py``, likewise pure.

SYNOPSIS
    plan(state: State, now: float) -> Plan

DESCRIPTION
    For each group, for each of its agents (the lead first, then its team):

    - Its pending messages are those past its cursor and past its live job's
      turns. In the main chat the owner's ``approve N``/``deny N``, ``stop
      [GROUP]``, ``status`` and ``revoke NAME`` are taken out
      (``OwnerAnswer``): nanoclaw answers them, never the main agent.
    - A prompt covers the first message addressed to the agent (the trigger
      where the group needs one, an allowed sender, a team answer that is
      ready: ``core.prompt``) and what follows, up to ``prompt_batch``; older
      context is capped. Nothing addressed: nothing runs, the chatter waits.
    - A voice note still being transcribed holds the turn that would cover it (and what
      came after it) until its transcript or its failure is there, at most
      ``Rules.voice_wait`` (``voice.py`` gives it up then).
    - With ``burst_window`` set, chat messages wait until the chat has been
      quiet a window (at most ``BURST_CAP`` windows after the first).
    - A live, running container that is not closing takes the messages as
      follow-up turns; a queued or closing one makes them wait for the next,
      and so does a scheduled run's (it may run on the task's own model).
    - Otherwise a new job starts, unless its cursor waits for a retry
      (backoff), the group's budget is spent (the chat is told once), the
      disk is full (told once, looked at again in ``SPACE_CHECK``), or the
      global cap is reached (the group waits, and idle containers are asked
      to close to make room).
    - Where idle containers are paused (``Rules.park_after``: the idle time, 0 where
      they exit on their own), a chat job idle that long is parked (``Park``): the
      runner pauses its container or closes it; a container asked to make room is
      parked too rather than closed.
    - With nothing for the lead, its due task run starts (or waits: for its
      retry time, for space, for a slot). A lead idling in a warm container
      is closed so that a due task does not wait its whole idle timeout. A
      spent budget skips the group's due task runs instead.

    ``Plan.next_due`` is when something waited for becomes due (``work()``
    sleeps until then); ``Plan.bursts`` the bursts still being waited out;
    ``Plan.idle`` the groups found with nothing to do (the reader need not
    read them again until something changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nanoclaw.daemons.queue.pending import (
    burst_settles,
    next_prompt,
    owner_answers,
    turns,
    until_heard,
)

AgentKey = tuple[int, str]  # (group id, agent): "" is the group's lead
Burst = tuple[float, int, float]  # (first seen, newest message id, when that was seen)
SPACE_CHECK = 2.0  # seconds between looks at the disk while work waits for space


@dataclass(frozen=True)
class Rules:
    """What the configuration says about running agents."""

    max_concurrent: int = 3
    burst_window: float = 0.0
    prompt_cap: int = 10
    prompt_batch: int = 50
    prompt_bytes: int = 512 * 1024  # a prompt must fit a spool file (half of max_spool_bytes)
    tz: str = "UTC"
    voice_wait: float = 0.0  # seconds a turn waits for a voice note's transcript (0: never)
    park_after: float = 0.0  # seconds idle before a chat job's container is paused; 0: it exits itself


@dataclass
class LiveJob:
    """A job whose container is queued or running."""

    id: int
    group: int
    agent: str = ""
    status: str = "running"  # queued: the runner has not said it started
    closing: bool = False  # asked to exit
    idle: bool = False  # running, not closing, every turn answered: only waiting
    task: bool = False  # a scheduled run's: chat messages are never fed into it
    idle_since: float = 0.0  # when its last turn was answered (or it started)
    row: Any = None  # the database row, for the applier


@dataclass
class DueTask:
    """The group's next queued task run (for its lead)."""

    run: int
    retry_at: float = 0.0  # not before (backoff after a failed attempt)
    row: Any = None


@dataclass
class AgentState:
    pending: list = field(default_factory=list)  # messages (rows or alike), oldest first
    retry_at: float = 0.0  # its cursor's backoff: no new job before


@dataclass
class GroupState:
    id: int
    folder: str = ""
    is_main: bool = False
    trigger: str = "@Andy"
    requires_trigger: bool = True
    allowed: set[str] | None = None  # who may wake its agents; None: anyone
    owner_asks: bool = False  # policy "ask": the owner's own messages always wake
    agents: dict[str, AgentState] = field(default_factory=lambda: {"": AgentState()})  # lead first
    task: DueTask | None = None
    spent: Any = None  # core.usage.Exceeded while a budget of the group is used up
    row: Any = None


@dataclass
class State:
    groups: list[GroupState]
    jobs: dict[AgentKey, LiveJob] = field(default_factory=dict)  # every live job, oldest first
    disk_low: bool = False  # the state directory's disk is nearly full
    bursts: dict[AgentKey, Burst] = field(default_factory=dict)
    rules: Rules = field(default_factory=Rules)
    group_refs: frozenset[str] = frozenset()  # the words that name a group (for the owner's "stop GROUP")


# -- actions ------------------------------------------------------------------------

@dataclass(frozen=True)
class Start:
    """A new container for ``agent``, its first turn covering ``batch``."""
    group: GroupState
    agent: str
    batch: list
    prompt: str


@dataclass(frozen=True)
class FollowUp:
    """Turns for a live container: (messages, prompt) each."""
    group: GroupState
    job: LiveJob
    turns: list


@dataclass(frozen=True)
class StartTask:
    group: GroupState
    task: DueTask


@dataclass(frozen=True)
class Close:
    """Ask a live container to exit (a due task waits, or a slot is wanted)."""
    job: LiveJob


@dataclass(frozen=True)
class Park:
    """The job's container has been idle its time: the runner pauses it (or closes it)."""
    job: LiveJob


@dataclass(frozen=True)
class SkipTasks:
    """The group's due task runs are skipped: its budget is spent."""
    group: GroupState
    spent: Any


@dataclass(frozen=True)
class BudgetNotice:
    group: GroupState
    spent: Any


@dataclass(frozen=True)
class DiskNotice:
    group: GroupState


@dataclass(frozen=True)
class OwnerAnswer:
    """The owner's ``approve N``/``deny N`` (or ``stop``, ``status``, ``revoke``) in the main
    chat, to be carried out (once)."""
    group: GroupState
    message: Any


@dataclass
class Plan:
    actions: list = field(default_factory=list)
    next_due: float | None = None
    bursts: dict[AgentKey, Burst] = field(default_factory=dict)
    idle: set[int] = field(default_factory=set)

    def due(self, at: float) -> None:
        self.next_due = at if self.next_due is None else min(self.next_due, at)


def plan(state: State, now: float) -> Plan:
    """Decide the pass: see the module's description."""
    rules = state.rules
    out = Plan(bursts=dict(state.bursts))
    active: dict[AgentKey, LiveJob | None] = dict(state.jobs)  # None: started by this plan
    fed: set[int] = set()  # jobs given turns or asked to close by this plan: not idle any more
    waiting: list[AgentKey] = []
    told_disk: set[int] = set()

    def disk_notice(g: GroupState) -> None:
        if g.id not in told_disk:
            told_disk.add(g.id)
            out.actions.append(DiskNotice(g))

    for g in state.groups:
        task = g.task
        if task is not None and task.retry_at <= now and g.spent is not None:
            out.actions.append(SkipTasks(g, g.spent))  # whether or not chat messages wait too
            task = None
        busy = False
        for agent, a in g.agents.items():
            pending = a.pending
            if g.is_main and not agent and pending:
                answers, pending = owner_answers(g, pending, state.group_refs)
                out.actions += [OwnerAnswer(g, m) for m in answers]
            pending, held_until = until_heard(pending, rules.voice_wait)
            if held_until is not None:  # a voice note not transcribed yet: the turn waits for it
                out.due(held_until)
            key = (g.id, agent)
            job = active.get(key)
            if job is not None and job.status == "queued" and state.disk_low:
                disk_notice(g)  # its job waits in the runner for space
            batch, prompt = next_prompt(g, agent, pending, rules) if pending else ([], "")
            busy = busy or bool(batch) or key in active
            if not batch:
                if not pending:
                    out.bursts.pop(key, None)
                if agent:
                    continue  # scheduled tasks are the lead's
                runnable = task is not None and task.retry_at <= now
                if key in active:
                    # A warm container idling for follow-ups must not hold a due task back
                    # for its whole idle timeout: close it, the task starts next pass.
                    if runnable and job is not None and job.idle and job.id not in fed:
                        out.actions.append(_retire(job, rules))
                        fed.add(job.id)
                    continue
                # Nothing for the lead (chatter waits as context): a due task may run.
                if runnable and state.disk_low:
                    out.due(now + SPACE_CHECK)  # waits for space
                elif runnable:
                    if len(active) < rules.max_concurrent:
                        out.actions.append(StartTask(g, task))
                        active[key] = None
                    else:
                        waiting.append(key)
                elif task is not None:
                    out.due(task.retry_at)
                continue
            settled = burst_settles(out.bursts, key, pending, now, rules.burst_window)
            if settled is not None:  # the chat is still talking: hand it all over in one turn
                out.due(settled)
                continue
            if key in active:
                # Not into a scheduled run's container: it may run on the task's model.
                if job is not None and job.status == "running" and not job.closing and not job.task:
                    out.actions.append(FollowUp(g, job, turns(g, agent, pending, rules)))
                    fed.add(job.id)
                    out.bursts.pop(key, None)
                continue  # a queued or closing job: the messages wait for the next one
            if a.retry_at > now:
                out.due(a.retry_at)
                continue
            if g.spent is not None:  # held: the chat is told once; a raise nudges the queue
                out.actions.append(BudgetNotice(g, g.spent))
                out.due(g.spent.resumes.timestamp())
                continue
            if state.disk_low:  # held as for a spent budget: told once, looked at again soon
                disk_notice(g)
                out.due(now + SPACE_CHECK)
                continue
            if len(active) >= rules.max_concurrent:
                waiting.append(key)
                continue
            out.actions.append(Start(g, agent, batch, prompt))
            active[key] = None
            out.bursts.pop(key, None)
        if not busy and not any(k[0] == g.id for k in active):
            out.idle.add(g.id)
    # Ask idle containers to exit so waiting groups get a slot.
    wanted = len(waiting)
    for job in active.values():
        if wanted <= 0:
            break
        if job is not None and job.idle and job.id not in fed:
            out.actions.append(_retire(job, rules))
            fed.add(job.id)
            wanted -= 1
    if rules.park_after > 0:  # chat jobs idle their time: paused (the runner decides)
        for job in state.jobs.values():
            if job.idle and not job.task and job.id not in fed:
                if now >= job.idle_since + rules.park_after:
                    out.actions.append(Park(job))
                    fed.add(job.id)
                else:
                    out.due(job.idle_since + rules.park_after)
    return out


def _retire(job: LiveJob, rules: Rules) -> Close | Park:
    """An idle job asked to make room: parked where containers are paused, else closed."""
    return Park(job) if rules.park_after > 0 and not job.task else Close(job)
