"""progress: what each turn is doing, told to the channel for the chat to show.

SYNOPSIS
    Progress(q).accepted(job, turns)        the turns will be answered
    Progress.on_agent(req) -> reply          ipc's word: a turn began, a tool began or ended
    Progress.answered(job, turn, spoke)      its reply is being queued (or it had nothing to say)
    Progress.ended(job, turns, gave_up)      its container ended first: it waits, or it failed

DESCRIPTION
    The states are core/progress.py's. Each goes to the channel as one fire-and-forget
    ``progress`` line (chat, the message the turn answers, who works on it, since when,
    the tool and what it was given): the channel turns them into a WhatsApp reaction and
    "typing…", or a terminal's status line. A ``seq`` (the clock in nanoseconds) lets the
    channel drop a line that overtook a newer one. ``replied`` is told just before the
    reply goes to the router's spool, so the channel has it before the reply can arrive
    (the chat shows "sending the reply", the reaction waits for the reply, never the other
    way round).

    The message a turn answers is its newest one (in a burst, the last); a member's turn
    answers the human message its chain started from. Scheduled runs have none and are
    not shown.

HOSTILE INPUT
    ipc's ``progress`` lines carry what a container reported, already cleaned and bounded
    there; the group and agent are the directory ipc found it in, and a turn that is not
    that job's running one is ignored.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nanoclaw.core import progress as progress_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core.models import Job, Message, Turn
from nanoclaw.core.protocol import tell

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon

KEEP = 256  # turns whose start time is remembered (one per running turn is enough)


class Progress:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self._since: dict[tuple[int, int], float] = {}  # (job, turn) -> when it began working

    def accepted(self, job: Job, turns: list[Turn]) -> None:
        for turn in turns:
            self._tell(job, turn, "accepted")

    def on_agent(self, req: dict) -> dict:
        job = Job.get_or_none(Job.id == req.get("job")) if isinstance(req.get("job"), int) else None
        said = progress_mod.from_agent(req)
        if job is None or said is None or job.status not in ("queued", "running") \
                or job.group.folder != req.get("group") or job.agent != req.get("agent"):
            return {"ok": False, "error": "no such running job"}
        turn = Turn.get_or_none(Turn.job == job, Turn.seq == req.get("turn"))
        if turn is None or turn.status == "done":
            return {"ok": False, "error": "no such running turn"}
        state, tool, detail = said
        self._since.setdefault((job.id, turn.seq), time.time())
        while len(self._since) > KEEP:
            self._since.pop(next(iter(self._since)))
        self._tell(job, turn, state, tool=tool, detail=detail)
        return {"ok": True}

    def answered(self, job: Job, turn: Turn, spoke: bool) -> None:
        self._tell(job, turn, "replied" if spoke else "silent")
        self._since.pop((job.id, turn.seq), None)

    def ended(self, job: Job, turns: list[Turn], gave_up: bool) -> None:
        for turn in turns:
            self._tell(job, turn, "failed" if gave_up else "waiting")
            self._since.pop((job.id, turn.seq), None)

    def _tell(self, job: Job, turn: Turn, state: str, tool: str = "", detail: str = "") -> None:
        if job.task_run:
            return  # a scheduled run answers no one's message
        group = job.group
        tell(self.q.cfg.socket("channel"), "progress", chat=group.jid, seq=time.time_ns(), state=state,
             job=job.id, turn=turn.seq, message=answers(turn.last_message_id),
             who=team_mod.display(job.agent) if job.agent else self.q.cfg.assistant_name,
             since=self._since.get((job.id, turn.seq), 0.0), tool=tool, kind=progress_mod.kind_of(tool) if tool else "",
             detail=detail)


def answers(message_id: int) -> int | None:
    """The human message a turn answers: its own newest, or for team-internal input the one
    its chain started from (None for a scheduled run's chain)."""
    m = Message.get_or_none(Message.id == message_id)
    if m is None or m.is_bot:
        return None
    if m.agent is None:
        return m.id
    return m.chain if m.chain and m.chain > 0 else None
