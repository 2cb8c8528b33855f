"""turns: a chat job's life: started, fed, answered, ended.

SUMMARY
    A job is one agent container (the lead's or a member's); each prompt handed to it
    is a turn covering a range of messages. A turn's result moves the agent's cursor;
    the job's end settles its unanswered turns, counting a failure against the cursor's
    retries.

SYNOPSIS
    Turns(q).start(group, agent, batch, prompt) -> Job
    Turns.follow_up(job, group, turns)
    Turns.close(job)
    Turns.park(job)
    Turns.on_result(env) -> bool
    Turns.on_job_event(env)
    Turns.finish(job, exit_code, error, stopped=False)
    Turns.model_refused(job, choice) -> Job
    Turns.settle_stale(now)

DESCRIPTION
    Delivery rule: an agent's cursor is the last message whose turn finished *and* whose
    reply is durably queued for the router. Only then does it advance; a crash before
    that re-delivers, and the reply's key (``job:<id>:turn:<n>``) keeps the chat from
    hearing it twice. A turn whose answer is empty once its ``<internal>`` notes are
    removed is silent: nothing goes to the router, the cursor moves on all the same.

    A member's answer is sent to the chat under its name and, in the same transaction as
    its cursor, stored for whoever asked (team.py). A failed job is retried with
    backoff; when its retries are used up the chat is told in one line and the cursor
    moves past the messages. A job the runner never confirmed starting, or whose end was
    never reported long past its container's time limit, is counted as failed, so no
    group is silenced for good by a lost report.

    A turn the owner stopped (``stopped_at``, stopped.py) is silent whatever its agent
    reports. If its container was killed for it (stop.py), the job's end counts the
    stopped turns answered and no failure; later turns' messages wait for the next job.

HOSTILE INPUT
    ``turn_result`` texts and session ids come from agents (through ipc, which put the
    group there from the directory the file was found in); a result naming another
    group's (or agent's) job is refused.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from peewee import fn

from nanoclaw.core import model_choice
from nanoclaw.daemons.queue import stopped as stop_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.backoff import backoff
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Cursor, Group, Job, Message, Session, Turn, db
from nanoclaw.core.prompt import strip_internal
from nanoclaw.core.protocol import STAGE_NAME, Envelope, Spool, nudge
from nanoclaw.daemons.queue import sql

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon

ACTIVE = ("queued", "running")
STALE_QUEUED_SECONDS = 300.0  # a job the runner never confirmed starting
STALE_RUNNING_GRACE = 300.0  # a running job not reported ended this long past its container's time limit
MODEL_REFUSED = "its model is refused: "  # a job's error when core/model_choice.py refused its model


class Turns:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q

    # -- handing work over --------------------------------------------------
    def start(self, group: Group, agent: str, batch: list[Message], prompt: str) -> Job:
        session = Session.get_or_none(Session.group == group, Session.agent == agent)
        choice = model_choice.for_job(self.q.cfg, group.folder, agent)
        with db.atomic("IMMEDIATE"):
            job = Job.create(group=group, agent=agent, model=choice.model)
            turn = Turn.create(job=job, seq=0, first_message_id=batch[0].id, last_message_id=batch[-1].id)
        if choice.refused:
            return self.model_refused(job, choice)
        # A file the disk refuses is kept and handed over later; the job stays queued till then.
        self.q.put(self.q.runner_spool, "job", {"job": job.id, "group": group.folder, "chat": group.jid,
                                                "is_main": group.is_main and not agent, "prompt": prompt,
                                                "session_id": session.session_id if session else None,
                                                "agent": agent, "model": choice.model},
                   then=lambda: nudge(self.q.cfg.socket("runner")))
        self.q.progress.accepted(job, [turn])
        self.q.log.info("queued messages=%d..%d", batch[0].id, batch[-1].id,
                        extra=log_fields(group=group.folder, agent=agent or "lead", job=job.id))
        return job

    def follow_up(self, job: Job, group: Group, turns: list[tuple[list[Message], str]]) -> None:
        """Deliver new messages into the group's live container instead of starting another:
        one turn per (messages, prompt)."""
        inbox = Spool(self.q.cfg.agent_ipc(group.folder, job.agent) / "in").ensure()
        seq = sql.scalar(sql.LAST_TURN, job.id) or 0
        made = []
        for batch, prompt in turns:
            seq += 1
            made.append(Turn.create(job=job, seq=seq, first_message_id=batch[0].id, last_message_id=batch[-1].id))
            # Not synced: a power cut that could lose it ends the container too (see Spool.put).
            self.q.put(inbox, "prompt", {"job": job.id, "turn": seq, "prompt": prompt, "session_id": None},
                       durable=False)
            self.q.log.info("turn=%s follow-up delivered messages=%d..%d", seq, batch[0].id, batch[-1].id,
                            extra=log_fields(group=group.folder, job=job.id))
        self.q.progress.accepted(job, made)

    def close(self, job: Job) -> None:
        """Ask a live container to exit (once)."""
        if job.closing:
            return
        self.q.put(Spool(self.q.cfg.agent_ipc(job.group.folder, job.agent) / "in").ensure(), "close",
                   {"job": job.id})
        job.closing = True
        job.save()
        self.q.log.info("asked to close", extra=log_fields(group=job.group.folder, job=job.id))

    def park(self, job: Job) -> None:
        """Its container has been idle its time: the runner pauses it (or closes it). Closing
        from now: the messages that come meanwhile wait for the next job, which the runner may
        hand the paused container."""
        if job.closing:
            return
        self.q.put(self.q.runner_spool, "park", {"job": job.id}, then=lambda: nudge(self.q.cfg.socket("runner")))
        job.closing = True
        job.save()
        self.q.log.info("idle: asked the runner to pause it", extra=log_fields(group=job.group.folder, job=job.id))

    # -- what comes back ----------------------------------------------------
    def on_result(self, env: Envelope) -> bool:
        """A turn's result: its reply to the router, then the cursor. True if the router has
        something new."""
        body = env.body
        job = Job.get_or_none(Job.id == body["job"])
        if job is None or job.group.folder != body["group"] or job.agent != body.get("agent", ""):
            # The group and agent come from the directory the file was found in: a container
            # naming another group's (or agent's) job is forging, not confused.
            self.q.inbox.reject(env.path, f"job {body['job']} does not belong to group {body['group']!r}"
                                          f" agent {body.get('agent', '')!r}")
            return False
        turn = Turn.get_or_none(Turn.job == job, Turn.seq == body["turn"])
        if turn is None:
            self.q.log.warning("turn=%s unknown turn; ignored", body["turn"], extra=log_fields(job=job.id))
            return False
        if turn.status == "done":
            return False  # re-processed after a crash: already applied
        if turn.stopped_at:  # the owner stopped it (stopped.py): whatever the agent says, it is silent
            body = {**body, "text": "", "error": None}
        group = job.group
        if job.task_run:
            return self.q.tasks.turn_done(job, turn, body)
        if body.get("error") and not body["text"].strip():
            self.q.log.warning("turn=%s agent error: %s", turn.seq, body["error"][:200],
                               extra=log_fields(group=group.folder, job=job.id))
            job.error = body["error"][:2000]
            job.save()
            self.close(job)  # a fresh container will retry the pending messages
            self.q.progress.ended(job, [turn], gave_up=False)
            return False
        spoke = bool(strip_internal(body["text"]))
        if spoke:
            # Told before the reply is handed on: the router wakes on the file at once, and a
            # "replied" that came after the reply would show "sending the reply" (or keep the
            # reaction) for a reply already out.
            self.q.progress.answered(job, turn, spoke=True)
            # Durable in the router's spool before the cursor moves.
            out = {"key": f"job:{job.id}:turn:{turn.seq}", "chat": group.jid, "text": body["text"], "kind": "reply"}
            reply_to = _reply_to(turn.last_message_id)
            if reply_to:
                out["reply_to"] = reply_to
            if job.agent:  # a member speaks in the chat under its own name
                out["sender"] = team_mod.display(job.agent)
            self.q.router_spool.put("outbound", out)
        else:
            self.q.log.info("turn=%s silent: nothing sent (the answer was empty or only internal notes)", turn.seq,
                            extra=log_fields(group=group.folder, agent=job.agent or "lead", job=job.id))
        with db.atomic("IMMEDIATE"):
            turn.status, turn.done_at = "done", time.time()
            turn.save()
            Cursor.update(last_message_id=fn.MAX(Cursor.last_message_id, turn.last_message_id),
                          failures=0, retry_at=0).where(Cursor.group == group, Cursor.agent == job.agent).execute()
            if body.get("session_id"):
                Session.insert(group=group, agent=job.agent, session_id=body["session_id"],
                               updated_at=time.time()).on_conflict_replace().execute()
            if job.agent:
                self.q.team.answer(group, job.agent, turn.last_message_id, body["text"].strip())
        self.q.log.info("turn=%s answered up to message %s", turn.seq, turn.last_message_id,
                        extra=log_fields(group=group.folder, agent=job.agent or "lead", job=job.id,
                                         message=turn.last_message_id))
        self._log_stages(job, body)
        if not spoke:
            self.q.progress.answered(job, turn, spoke=False)
        return True

    def on_job_event(self, env: Envelope) -> None:
        body = env.body
        job = Job.get_or_none(Job.id == body["job"])
        if job is None:
            self.q.log.warning("job_event for an unknown job; ignored", extra=log_fields(job=body["job"]))
            return
        if body["event"] == "started":
            if job.status == "queued":
                job.status, job.started_at = "running", time.time()
                job.container = body.get("container", "")
                job.save()
                self.q.log.info("container started", extra=log_fields(group=job.group.folder, job=job.id))
        elif body["event"] == "exited":
            if job.status in ACTIVE:
                self.finish(job, body.get("exit_code"), body.get("error", ""), body.get("stopped", False))
        elif body["event"] == "skipped":
            if job.status in ACTIVE and job.task_run:
                self.q.tasks.skipped(job, body.get("reason") or "the pre-check said no")
        else:
            self.q.inbox.reject(env.path, f"unknown job event {body['event']!r}")

    def finish(self, job: Job, exit_code: int | None, error: str, stopped: bool = False) -> None:
        """A job's container is gone: settle its turns, count a failure if it failed. One
        ``stopped`` (by `nanoclaw run-all` stopping) did not fail: its undone turns' messages
        wait for the next start, with no retry delay and no attempt counted."""
        if job.task_run:
            return self.q.tasks.finished(job, exit_code, error, stopped)
        turns = list(job.turns)
        undone = [t for t in turns if t.status != "done"]
        if any(t.stopped_at for t in undone):  # the owner's stop killed it: its stopped turns are answered
            with db.atomic("IMMEDIATE"):
                left, stopped = stop_mod.settle(job, undone), True
            for turn in undone:
                if turn not in left:  # answered by the stop: no reply, its reaction and typing go
                    self.q.progress.answered(job, turn, spoke=False)
            undone = left
        failed = not stopped and (exit_code not in (0, None) or bool(job.error) or bool(error)
                                  or (undone and len(undone) == len(turns)))
        group = job.group
        gave_up = False
        with db.atomic("IMMEDIATE"):
            job.status = "failed" if failed and undone else "stopped" if stopped and undone else "done"
            job.exit_code, job.finished_at = exit_code, time.time()
            job.error = (job.error or error or "")[:2000]
            job.save()
            # Undone turns' messages stay pending (the cursor never passed them):
            # forget the turns so the next job picks the messages up again.
            for t in undone:
                t.delete_instance()
            cursor = Cursor.get(Cursor.group == group, Cursor.agent == job.agent)
            spent = usage_mod.exceeded(self.q.cfg, group.folder) if failed and undone else None
            disk = self.q.holds.disk_low() if failed and undone and spent is None else None
            if spent is not None:
                # Refused by the proxy for a spent budget: not the agent's failure. The messages
                # wait (plan holds the group) instead of retrying into the wall.
                self.q.log.warning("stopped: budget spent; messages wait until %s",
                                   f"{spent.resumes:%Y-%m-%d %H:%M} {spent.tz}",
                                   extra=log_fields(group=group.folder, job=job.id))
            elif disk is not None:  # the same for a full disk: they wait for space
                self.q.log.warning("stopped: %s; messages wait for space", disk,
                                   extra=log_fields(group=group.folder, job=job.id))
            elif failed and undone:
                cursor.failures += 1
                if cursor.failures >= self.q.cfg.max_attempts:
                    self._give_up(job, cursor, max(t.last_message_id for t in undone))
                    gave_up = True
                else:
                    delay = backoff(cursor.failures, self.q.cfg.backoff_base, self.q.cfg.backoff_max)
                    cursor.retry_at = time.time() + delay
                    self.q.log.warning("failed (attempt %d/%d, exit=%s): %s; retry in %.0fs", cursor.failures,
                                       self.q.cfg.max_attempts, exit_code,
                                       (job.error or "no result")[:200], delay,
                                       extra=log_fields(group=group.folder, job=job.id))
                cursor.save()
        self.q.log.info("finished status=%s exit=%s", job.status, exit_code,
                        extra=log_fields(group=group.folder, job=job.id))
        if undone:  # they wait for another container (a retry, a budget, the disk), or failed
            self.q.progress.ended(job, undone, gave_up)

    def _give_up(self, job: Job, cursor: Cursor, upto: int) -> None:
        """Retries are exhausted: tell the chat in one line and move past the messages
        (a member's askers are told too, so no one waits on it for ever)."""
        group = job.group
        why = f"the agent failed {cursor.failures} times"
        if job.error.startswith(("the container could not start", MODEL_REFUSED)):
            why = job.error.replace("the container", "my container", 1)
        who = f"{team_mod.display(job.agent)} could not answer" if job.agent else "Sorry, I could not answer that"
        self.q.router_spool.put("outbound", {
            "key": f"job:{job.id}:failed", "chat": group.jid, "kind": "notice",
            "text": f"{who}: {why}. Please try again later."})
        if job.agent:
            self.q.team.answer(group, job.agent, upto, f"({team_mod.display(job.agent)} could not answer: {why}.)",
                               forced=True)
        cursor.last_message_id = max(cursor.last_message_id, upto)
        cursor.failures, cursor.retry_at = 0, 0
        self.q.log.error("gave up after %d attempts; chat told", self.q.cfg.max_attempts,
                         extra=log_fields(group=group.folder, job=job.id))
        nudge(self.q.cfg.socket("router"))

    def model_refused(self, job: Job, choice: model_choice.Choice) -> Job:
        """The model chosen for a job may not be used ([usage] allowed_models): nothing starts;
        the job fails as a container that cannot start does, with the line as its error, which
        the chat is given when the retries are spent."""
        self.q.log.error("not started: %s", choice.refused, extra=log_fields(group=job.group.folder, job=job.id))
        self.finish(job, None, MODEL_REFUSED + choice.refused)
        return job

    def settle_stale(self, now: float) -> None:
        """Jobs whose start or end never came are counted as failed (see the description)."""
        q = self.q
        for job in list(Job.raw(sql.STALE_JOBS.format(column="created_at"), "queued", now - STALE_QUEUED_SECONDS)):
            # Not while its file waits for the disk here, nor while the runner waits for space
            # (or did within the allowance): it is not lost, it is waiting.
            if q.held.waiting("job", "job", job.id) or q.holds.disk_low() is not None \
                    or q.holds.last_low > now - STALE_QUEUED_SECONDS:
                continue
            self.finish(job, None, "the runner never started it")
        # A group is never silenced for good by a job whose end never came (its report lost):
        # past its container's time limit, with room to spare, the job counts as failed.
        overdue = now - q.cfg.container.timeout - STALE_RUNNING_GRACE
        for job in list(Job.raw(sql.STALE_JOBS.format(column="started_at"), "running", overdue)):
            q.log.error("no end reported %.0fs after its time limit; counted as failed", STALE_RUNNING_GRACE,
                        extra=log_fields(group=job.group.folder, job=job.id))
            self.finish(job, None, "its end was never reported")

    def _log_stages(self, job: Job, body: dict) -> None:
        """A new container's first turn says where its time went (the agent runner's clock
        readings): one line from the job's creation on, for ``bench/agent_latency.py`` and
        for an owner asking why a first answer was slow. The numbers are the agent's: only
        finite numbers in order are shown."""
        stages = (body.get("usage") or {}).get("stages")
        if not isinstance(stages, dict) or not 0 < len(stages) <= 16:
            return
        points = [("job", job.created_at)] + [(k, float(v)) for k, v in stages.items()
                                               if isinstance(k, str) and STAGE_NAME.fullmatch(k)
                                               and isinstance(v, (int, float)) and 0 < v < 1e11]
        parts = [f"{b[0]}+{(b[1] - a[1]) * 1000:.0f}ms" for a, b in zip(points, points[1:], strict=False)]
        self.q.log.info("new container's first turn: %s", " ".join(parts),
                        extra=log_fields(group=job.group.folder, job=job.id))


def _reply_to(message_id: int) -> int | None:
    """What a reply answers in the chat: the message itself, or for team-internal input the
    human message its chain started from."""
    m = Message.get_or_none(Message.id == message_id)
    if m is None or m.agent is None:
        return message_id
    return m.chain if m.chain and m.chain > 0 else None
