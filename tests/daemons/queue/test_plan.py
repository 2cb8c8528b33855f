"""The queue's decision of what runs next (nanoclaw/daemons/queue/plan.py), row by row.

plan() is a pure function of plain data: no database, no disk, no clock (``now`` is
given). Each row is a state and the actions (and the next deadline) it must give; the
daemon around it (reading the database, applying the actions) is tested through the
real daemons elsewhere (tests/e2e/test_pipeline.py, test_team.py and test_queue.py here,
tests/core/test_tasks.py, tests/daemons/runner/test_precheck.py, ...).
"""

from __future__ import annotations

from datetime import datetime
from types import SimpleNamespace

import pytest

from nanoclaw.core.prompt import build_prompt
from nanoclaw.core.usage import Exceeded, Limit
from nanoclaw.daemons.queue.pending import BURST_CAP
from nanoclaw.daemons.queue.plan import (
    SPACE_CHECK,
    AgentState,
    BudgetNotice,
    Close,
    DiskNotice,
    DueTask,
    FollowUp,
    GroupState,
    LiveJob,
    OwnerAnswer,
    Park,
    Plan,
    Rules,
    SkipTasks,
    Start,
    StartTask,
    State,
    plan,
)

NOW = 1_800_000_000.0
WINDOW = 10.0


def msg(id: int, text: str = "@Andy hi", sender: str = "alice@x", **kw) -> SimpleNamespace:
    """A stored message as plan reads one (a row's attributes)."""
    fields = dict(id=id, text=text, sender=sender, sender_name="", timestamp=NOW - 60, from_me=False,
                  is_bot=False, agent=None, answers=None, chain=None, media=None)
    fields.update(kw)
    return SimpleNamespace(**fields)


def answer(id: int, asker: str = "", *, ready: bool, chain: int = 1) -> SimpleNamespace:
    """A member's answer for ``asker``: ready when the asker has no delegation out in its chain."""
    return msg(id, "found it", sender="agent:researcher", agent=asker, answers=id - 1, chain=chain, ready=ready)


def group(id: int = 1, pending: list | None = None, *, main: bool = False, requires_trigger: bool | None = None,
          allowed: set[str] | None = None, ask: bool = False, retry_at: float = 0.0, members: dict | None = None,
          task: DueTask | None = None, spent: Exceeded | None = None) -> GroupState:
    agents = {"": AgentState(list(pending or []), retry_at)}
    agents.update({name: AgentState(list(p)) for name, p in (members or {}).items()})
    return GroupState(id, f"g{id}", main, "@Andy", (not main) if requires_trigger is None else requires_trigger,
                      allowed, ask, agents, task, spent)


def job(id: int, group: int = 1, agent: str = "", status: str = "running", *, idle: bool = False,
        closing: bool = False, task: bool = False, idle_since: float = 0.0) -> LiveJob:
    return LiveJob(id, group, agent, status, closing, idle, task, idle_since)


def state(*groups: GroupState, jobs: tuple[LiveJob, ...] = (), disk_low: bool = False, bursts: dict | None = None,
          **rules) -> State:
    return State(list(groups), {(j.group, j.agent): j for j in jobs}, disk_low, dict(bursts or {}), Rules(**rules))


def spent(resumes: float = NOW + 3600) -> Exceeded:
    return Exceeded("g1", Limit("g1", "day", "usd", 1.0, "config"), 1.5, datetime.fromtimestamp(resumes), "UTC")


def shown(p: Plan) -> list[tuple]:
    """The actions as short tuples: what each is and the ids it is about."""
    out = []
    for a in p.actions:
        match a:
            case Start():
                out.append(("start", a.group.id, a.agent, [m.id for m in a.batch]))
            case FollowUp():
                out.append(("follow_up", a.job.id, [[m.id for m in batch] for batch, _ in a.turns]))
            case StartTask():
                out.append(("task", a.group.id, a.task.run))
            case Close():
                out.append(("close", a.job.id))
            case Park():
                out.append(("park", a.job.id))
            case SkipTasks():
                out.append(("skip_tasks", a.group.id))
            case BudgetNotice():
                out.append(("budget_notice", a.group.id))
            case DiskNotice():
                out.append(("disk_notice", a.group.id))
            case OwnerAnswer():
                out.append(("owner_answer", a.message.id))
            case _:
                raise AssertionError(f"unknown action {a!r}")
    return out


# (what the row shows, the state, the actions, when the next pass is due (None: nothing waits))
ROWS = [
    # -- the cursor, pending messages and the trigger ------------------------------------------
    ("nothing pending, nothing runs",
     state(group()), [], None),
    ("a message with the trigger starts the group's agent",
     state(group(pending=[msg(5)])), [("start", 1, "", [5])], None),
    ("chatter without the trigger only waits as context",
     state(group(pending=[msg(5, "lunch?"), msg(6, "sure")])), [], None),
    ("the context before the trigger goes with it",
     state(group(pending=[msg(5, "lunch?"), msg(6, "@Andy where?")])), [("start", 1, "", [5, 6])], None),
    ("the trigger is a whole word at the start, any case",
     state(group(pending=[msg(5, "@andybot hi"), msg(6, "hi @Andy")])), [], None),
    ("the main group needs no trigger",
     state(group(pending=[msg(5, "hello")], main=True)), [("start", 1, "", [5])], None),
    ("a group set to need none answers everything",
     state(group(pending=[msg(5, "hello")], requires_trigger=False)), [("start", 1, "", [5])], None),
    ("our own messages never wake an agent",
     state(group(pending=[msg(5, is_bot=True)])), [], None),
    ("a sender outside the allowlist does not wake it",
     state(group(pending=[msg(5, sender="mallory@x")], allowed={"alice@x"})), [], None),
    ("a sender on it does",
     state(group(pending=[msg(5)], allowed={"alice@x"})), [("start", 1, "", [5])], None),
    ("in an ask group the owner's own message always wakes it",
     state(group(pending=[msg(5, sender="me@x", from_me=True)], allowed=set(), ask=True)),
     [("start", 1, "", [5])], None),
    ("... in an allowlist group only if the owner is on the list",
     state(group(pending=[msg(5, sender="me@x", from_me=True)], allowed=set())), [], None),
    ("more messages for the agent than prompt_batch: the first turn takes prompt_batch",
     state(group(pending=[msg(i) for i in range(5, 10)]), prompt_batch=2), [("start", 1, "", [5, 6])], None),
    ("old context is capped in the prompt, never left out of the batch",
     state(group(pending=[msg(i, "chat") for i in range(1, 5)] + [msg(5)]), prompt_cap=1),
     [("start", 1, "", [1, 2, 3, 4, 5])], None),

    # -- the owner's answers in the main chat -----------------------------------------------------
    ("the owner's approve N is nanoclaw's to answer, not the main agent's",
     state(group(pending=[msg(5, "approve 3", sender="me@x", from_me=True)], main=True)),
     [("owner_answer", 5)], None),
    ("... and the rest still goes to the agent",
     state(group(pending=[msg(5, "deny 3", from_me=True), msg(6, "and hello")], main=True)),
     [("owner_answer", 5), ("start", 1, "", [6])], None),
    ("a sender the main chat does not admit cannot answer: its text is for the agent's context",
     state(group(pending=[msg(5, "approve 3", sender="stranger@x")], main=True, allowed={"me@x"})), [], None),
    ("a bot's approve is never the owner's",
     state(group(pending=[msg(5, "approve 3", is_bot=True, from_me=True)], main=True)), [], None),
    ("approve N in another group is just a message",
     state(group(pending=[msg(5, "@Andy approve 3", from_me=True)])), [("start", 1, "", [5])], None),

    # -- the concurrency cap, and idle containers closed for a waiting group ------------------------
    ("at the cap a group waits, and an idle container is asked to exit for it",
     state(group(1, [msg(5)]), group(2), group(3), group(4),
           jobs=(job(11, 2, idle=True), job(12, 3), job(13, 4, idle=True))),
     [("close", 11)], None),
    ("one idle container per waiting group",
     state(group(1, [msg(5)]), group(2, [msg(6)]), group(3), group(4), group(5),
           jobs=(job(11, 3, idle=True), job(12, 4, idle=True), job(13, 5, idle=True))),
     [("close", 11), ("close", 12)], None),
    ("a busy, queued or closing container is never asked",
     state(group(1, [msg(5)]), group(2), group(3), group(4),
           jobs=(job(11, 2), job(12, 3, "queued"), job(13, 4, closing=True))),
     [], None),
    ("under the cap groups start in order until it is reached",
     state(group(1, [msg(5)]), group(2, [msg(6)]), group(3, [msg(7)]), max_concurrent=2),
     [("start", 1, "", [5]), ("start", 2, "", [6])], None),

    # -- follow-ups into a warm container ---------------------------------------------------------
    ("a running container takes new messages as a follow-up turn",
     state(group(pending=[msg(5)]), jobs=(job(11, idle=True),)), [("follow_up", 11, [[5]])], None),
    ("as many turns as it takes for every message addressed to it",
     state(group(pending=[msg(i) for i in range(5, 10)]), jobs=(job(11),), prompt_batch=2),
     [("follow_up", 11, [[5, 6], [7, 8], [9]])], None),
    ("a container given turns in this pass is not idle: not closed for a waiting group",
     state(group(1, [msg(5)]), group(2, [msg(6)]), jobs=(job(11, idle=True),), max_concurrent=1),
     [("follow_up", 11, [[5]])], None),
    ("a queued container: the messages wait for its start, no second job",
     state(group(pending=[msg(5)]), jobs=(job(11, status="queued"),)), [], None),
    ("a closing container: they wait for the next one",
     state(group(pending=[msg(5)]), jobs=(job(11, closing=True),)), [], None),
    ("a scheduled run's container: they wait for its end (it may run on the task's own model)",
     state(group(pending=[msg(5)]), jobs=(job(11, task=True),)), [], None),

    # -- bursts ------------------------------------------------------------------------------------
    ("with burst_window a first message waits one window",
     state(group(pending=[msg(5)]), burst_window=WINDOW), [], NOW + WINDOW),
    ("a new message in the window starts it again",
     state(group(pending=[msg(5), msg(6)]), burst_window=WINDOW, bursts={(1, ""): (NOW - 8, 5, NOW - 8)}),
     [], NOW + WINDOW),
    ("a quiet window: the whole burst goes in one turn",
     state(group(pending=[msg(5), msg(6)]), burst_window=WINDOW, bursts={(1, ""): (NOW - 15, 6, NOW - 10)}),
     [("start", 1, "", [5, 6])], None),
    ("a chat that never stops is handed over BURST_CAP windows after its first message",
     state(group(pending=[msg(5), msg(9)]), burst_window=WINDOW,
           bursts={(1, ""): (NOW - BURST_CAP * WINDOW, 8, NOW - 1)}),
     [("start", 1, "", [5, 9])], None),
    ("team messages never wait for a burst",
     state(group(members={"researcher": [msg(5, "look it up", sender="agent:lead", agent="researcher", chain=5)]}),
           burst_window=WINDOW),
     [("start", 1, "researcher", [5])], None),
    ("a burst waits for a warm container too, then goes in as one follow-up",
     state(group(pending=[msg(5)]), jobs=(job(11),), burst_window=WINDOW), [], NOW + WINDOW),

    # -- team members and outstanding delegations ---------------------------------------------------
    ("a message for a member starts the member's own container",
     state(group(members={"researcher": [msg(5, "@Researcher flights?")]})),
     [("start", 1, "researcher", [5])], None),
    ("lead and member run side by side",
     state(group(pending=[msg(5)], members={"researcher": [msg(6, "@Researcher flights?")]})),
     [("start", 1, "", [5]), ("start", 1, "researcher", [6])], None),
    ("an answer whose asker still has a delegation out in its chain waits",
     state(group(pending=[answer(6, ready=False)])), [], None),
    ("the last answer in: the asker reads them together",
     state(group(pending=[answer(6, ready=True), answer(8, ready=True)])), [("start", 1, "", [6, 8])], None),
    ("a ready answer behind one that is not waits with it",
     state(group(pending=[msg(5), answer(6, ready=False), msg(7)])), [("start", 1, "", [5])], None),
    ("a member's busy container takes its next delegation as a follow-up",
     state(group(members={"researcher": [msg(5, "more", sender="agent:lead", agent="researcher", chain=5)]}),
           jobs=(job(11, agent="researcher"),)),
     [("follow_up", 11, [[5]])], None),

    # -- scheduled task runs ------------------------------------------------------------------------
    ("a due task run starts when nothing is for the lead",
     state(group(task=DueTask(7))), [("task", 1, 7)], None),
    ("... also beside untriggered chatter",
     state(group(pending=[msg(5, "lunch?")], task=DueTask(7))), [("task", 1, 7)], None),
    ("chat messages for the lead go first; the task waits for the lead's container",
     state(group(pending=[msg(5)], task=DueTask(7))), [("start", 1, "", [5])], None),
    ("a warm lead idling for follow-ups is closed so a due task need not wait its idle timeout",
     state(group(task=DueTask(7)), jobs=(job(11, idle=True),)), [("close", 11)], None),
    ("a busy lead: the task waits",
     state(group(task=DueTask(7)), jobs=(job(11),)), [], None),
    ("a run waiting for its retry (backoff) is due at its time",
     state(group(task=DueTask(7, retry_at=NOW + 30))), [], NOW + 30),
    ("at the cap a due task waits like a chat, and frees an idle slot",
     state(group(1, task=DueTask(7)), group(2), jobs=(job(11, 2, idle=True),), max_concurrent=1),
     [("close", 11)], None),
    ("members run no tasks",
     state(group(members={"researcher": []}, task=DueTask(7)), jobs=(job(11, agent="researcher", idle=True),)),
     [("task", 1, 7)], None),

    # -- idle containers paused (park_after: the idle time, where [container] paused_memory_mib > 0) --
    ("a chat job idle its time is parked (the runner pauses its container)",
     state(group(), jobs=(job(11, idle=True, idle_since=NOW - 60),), park_after=60.0), [("park", 11)], None),
    ("... not before: the pass is due when it is",
     state(group(), jobs=(job(11, idle=True, idle_since=NOW - 10),), park_after=60.0), [], NOW + 50),
    ("... a member's too",
     state(group(members={"researcher": []}), jobs=(job(11, agent="researcher", idle=True, idle_since=NOW - 61),),
           park_after=60.0), [("park", 11)], None),
    ("... not a busy one, a closing one, nor a scheduled run's (it is closed after its turn)",
     state(group(1), group(2), group(3), jobs=(job(11, 1, idle_since=NOW - 99), job(12, 2, closing=True),
                                               job(13, 3, idle=True, task=True, idle_since=NOW - 99)),
           park_after=60.0), [], None),
    ("... nor where containers are not paused (they exit on their own)",
     state(group(), jobs=(job(11, idle=True, idle_since=NOW - 600),)), [], None),
    ("a job given follow-ups is not parked in the same pass",
     state(group(pending=[msg(5)]), jobs=(job(11, idle=True, idle_since=NOW - 99),), park_after=60.0),
     [("follow_up", 11, [[5]])], None),
    ("at the cap an idle container making room is parked rather than closed",
     state(group(1, [msg(5)]), group(2), jobs=(job(11, 2, idle=True, idle_since=NOW - 1),), max_concurrent=1,
           park_after=60.0), [("park", 11)], None),
    ("a due task parks the idle lead rather than closing it",
     state(group(task=DueTask(7)), jobs=(job(11, idle=True, idle_since=NOW - 1),), park_after=60.0),
     [("park", 11)], None),

    # -- retry backoff ------------------------------------------------------------------------------
    ("an agent that failed waits for its retry time",
     state(group(pending=[msg(5)], retry_at=NOW + 40)), [], NOW + 40),
    ("its retry due: it starts",
     state(group(pending=[msg(5)], retry_at=NOW - 1)), [("start", 1, "", [5])], None),
    ("the earliest of several deadlines is the next pass",
     state(group(1, [msg(5)], retry_at=NOW + 40), group(2, task=DueTask(8, retry_at=NOW + 20))), [], NOW + 20),

    # -- a spent budget ------------------------------------------------------------------------------
    ("a spent budget: no job, the chat is told, it resumes when the budget does",
     state(group(pending=[msg(5)], spent=spent(NOW + 3600))), [("budget_notice", 1)], NOW + 3600),
    ("... its due task runs are skipped, not retried",
     state(group(task=DueTask(7), spent=spent())), [("skip_tasks", 1)], None),
    ("... both at once",
     state(group(pending=[msg(5)], task=DueTask(7), spent=spent(NOW + 60))),
     [("skip_tasks", 1), ("budget_notice", 1)], NOW + 60),
    ("... a warm container still takes follow-ups (the proxy refuses its calls)",
     state(group(pending=[msg(5)], spent=spent()), jobs=(job(11),)), [("follow_up", 11, [[5]])], None),
    ("... a run waiting for its retry is not skipped yet",
     state(group(task=DueTask(7, retry_at=NOW + 30), spent=spent())), [], NOW + 30),

    # -- a full disk ---------------------------------------------------------------------------------
    ("a full disk: no job, the chat is told, the disk looked at again soon",
     state(group(pending=[msg(5)]), disk_low=True), [("disk_notice", 1)], NOW + SPACE_CHECK),
    ("a job still queued in the runner waits for space: its chat is told (once)",
     state(group(pending=[msg(5)]), jobs=(job(11, status="queued"),), disk_low=True), [("disk_notice", 1)], None),
    ("a due task run waits for space without a notice",
     state(group(task=DueTask(7)), disk_low=True), [], NOW + SPACE_CHECK),
    ("a warm container still takes follow-ups",
     state(group(pending=[msg(5)]), jobs=(job(11),), disk_low=True), [("follow_up", 11, [[5]])], None),
    ("a spent budget is told before a full disk",
     state(group(pending=[msg(5)], spent=spent(NOW + 60)), disk_low=True), [("budget_notice", 1)], NOW + 60),
]


@pytest.mark.parametrize(("what", "given", "actions", "due"), ROWS, ids=[r[0] for r in ROWS])
def test_plan(what, given, actions, due):
    decided = plan(given, NOW)
    assert shown(decided) == actions
    assert decided.next_due == due


def test_plan_reads_no_clock_and_changes_nothing_it_was_given():
    """The same state at the same time gives the same plan; the state is left as it was."""
    given = state(group(1, [msg(5)], task=DueTask(7)), group(2, [msg(6)]), burst_window=WINDOW,
                  bursts={(2, ""): (NOW - 30, 6, NOW - 30)})
    before = repr(given)
    first, second = plan(given, NOW), plan(given, NOW)
    assert shown(first) == shown(second) == [("start", 2, "", [6])]
    assert first.bursts == second.bursts == {(1, ""): (NOW, 5, NOW)} and first.next_due == NOW + WINDOW
    assert repr(given) == before
    later = State(given.groups, given.jobs, given.disk_low, first.bursts, given.rules)
    assert shown(plan(later, NOW + WINDOW)) == [("start", 1, "", [5])]  # its window has passed


def test_groups_with_nothing_to_do_are_marked_for_the_reader():
    decided = plan(state(group(1, [msg(5, "chat")]), group(2, [msg(6)]), group(3), group(4), jobs=(job(11, 4),)), NOW)
    assert decided.idle == {1, 3}


def test_a_prompt_too_big_for_a_spool_file_covers_fewer_messages():
    """Halved until it fits (4 messages, then 2, then 1)."""
    big = [msg(i, "@Andy " + "x" * 300) for i in range(5, 9)]
    two = len(build_prompt(big[:2], cap=10, tz="UTC").encode())
    [start] = plan(state(group(pending=big), prompt_bytes=two, prompt_batch=4), NOW).actions
    assert [m.id for m in start.batch] == [5, 6] and len(start.prompt.encode()) == two
    [start] = plan(state(group(pending=big), prompt_bytes=two - 1, prompt_batch=4), NOW).actions
    assert [m.id for m in start.batch] == [5]
