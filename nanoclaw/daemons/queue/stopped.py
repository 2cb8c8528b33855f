"""stopped: the owner's stop of a group's running turn (and its members'), the queue's rules.

Only the owner stops anything: ``stop [GROUP]`` in the main chat (carried out by the queue,
never handed to an agent; daemons/queue/owner_chat.py) or ``nanoclaw stop GROUP`` (which asks the
queue on its socket). For each running job of the group (its lead's and each member's
container), the turn it is working on (the oldest not answered) gets ``stopped_at`` in
the database, and a ``stop`` file naming the job and turn goes into the agent's ``in/``:
host-only, mounted read-only in the container, so no agent can forge, redirect or remove
one. There the agent runner's watch (container/interrupt.py) calls the SDK's interrupt:
the turn ends, the container stays warm with its session, and the prompts already queued
for it (later turns) are answered as usual.

What the host does with a stopped turn is decided by its own record (``stopped_at``), never
by what the agent reports: the turn's result is taken as silent (nothing reaches the chat,
the cursor moves past its messages). If the turn has not ended :data:`KILL_AFTER` seconds
later, the queue asks the runner to kill the container (:func:`overdue`); the job's end
then settles the stopped turns as answered (:func:`settle`), and any later turns' messages
wait for the next container, counted as no failure.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core.config import Config
from nanoclaw.core.models import Cursor, Group, Job, Turn, db
from nanoclaw.core.protocol import Spool

KILL_AFTER = 4.0  # seconds an interrupted turn has to end before its container is killed


@dataclass
class Stopped:
    """What a stop did: the line for the owner, and the jobs whose turn was stopped."""

    text: str
    jobs: list[int]


def _who(job: Job) -> str:
    return team_mod.display(job.agent) if job.agent else "the lead"


def request(cfg: Config, group: Group, now: float | None = None) -> Stopped:
    """Stop the running turns of ``group``'s agents (the owner's word, already checked)."""
    now = time.time() if now is None else now
    stopped: list[tuple[Job, Turn]] = []
    starting = []
    with db.atomic("IMMEDIATE"):
        for job in list(Job.select().where(Job.group == group, Job.status.in_(("queued", "running")))
                        .order_by(Job.agent)):
            turn = (job.turns.where(Turn.status != "done", Turn.stopped_at.is_null())
                    .order_by(Turn.seq).first())
            if turn is None:
                continue  # idle, waiting for follow-ups: nothing to stop
            if job.status == "queued":
                starting.append(job)  # its container is not up yet: its in/ is cleared at the start
                continue
            Turn.update(stopped_at=now).where(Turn.id == turn.id).execute()
            stopped.append((job, turn))
    for job, turn in stopped:
        # Not synced, as a prompt is not: a power cut that loses it ends the container too.
        Spool(cfg.agent_ipc(group.folder, job.agent) / "in").ensure().put(
            "stop", {"job": job.id, "turn": turn.seq}, durable=False)
    if stopped:
        members = [team_mod.display(j.agent) for j, _ in stopped if j.agent]
        lead = any(not j.agent for j, _ in stopped)
        what = " and ".join(([f"{group.folder}'s turn"] if lead else [])
                            + ([f"the turn of {', '.join(members)}"] if members else []))
        text = f"Stopped {what}; the session is kept"
        if starting:
            text += f" ({', '.join(_who(j) for j in starting)} still starting: say stop again in a moment)"
        return Stopped(text + ".", [j.id for j, _ in stopped])
    if starting:
        return Stopped(f"{group.folder}'s agent is still starting; say stop again in a moment.", [])
    return Stopped(f"Nothing is running in {group.folder}.", [])


def find(ref: str) -> Group:
    """The group a stop names: a folder, name or chat id (GroupError with one line if none)."""
    return groups_mod.find_group(ref)


def overdue(job_id: int) -> bool:
    """Whether a job whose turn was stopped still works on it (its container should go)."""
    job = Job.get_or_none(Job.id == job_id)
    if job is None or job.status != "running":
        return False
    return job.turns.where(Turn.status != "done", Turn.stopped_at.is_null(False)).exists()


def settle(job: Job, undone: list[Turn]) -> list[Turn]:
    """A job ended with turns not answered (call in the transaction that settles it): those the
    owner stopped count as answered, silently (the cursor moves past their messages), and
    the rest are returned (their messages wait for the next container)."""
    stopped = [t for t in undone if t.stopped_at]
    if not stopped:
        return undone
    now = time.time()
    Turn.update(status="done", done_at=now).where(Turn.id.in_([t.id for t in stopped])).execute()
    upto = max(t.last_message_id for t in stopped)
    if not job.task_run:
        Cursor.update(last_message_id=upto).where(Cursor.group == job.group, Cursor.agent == job.agent,
                                                   Cursor.last_message_id < upto).execute()
    return [t for t in undone if not t.stopped_at]
