"""tasks: a scheduled task's runs, from the timer's fire to their end.

SUMMARY
    A timer's ``task_fire`` becomes a queued ``TaskRun`` (once per fire); plan() starts it
    in a job of the group's lead when nothing else is for the lead; the job's one turn
    answers into the task's chat; the run ends as success, skipped or error, or goes back
    to the queue to be tried again.

SYNOPSIS
    Tasks(q).on_fire(env)
    Tasks.start(group, run) -> Job
    Tasks.turn_done(job, turn, body) -> bool
    Tasks.skipped(job, reason)
    Tasks.finished(job, exit_code, error, stopped=False)
    Tasks.skip_for_budget(group, spent)

DESCRIPTION
    A run's state is written here alone: ``_begin`` (running, one attempt more),
    ``_requeue`` (queued again: for a retry after backoff, or uncounted when run-all
    stopped it, its budget was spent or the disk was full) and ``_settle``, the one
    place a run ends ("success", "skipped" by its pre-check or a spent budget, "error"
    once its attempts are used up) together with its task's record of it (a once task is
    then completed). The scheduler is nudged after each end (the task's next timer).

HOSTILE INPUT
    A fire names a task id only; its group, prompt and chat are read from the database.
    The turn's text is the agent's and goes to the task's chat as it is (the router
    removes ``<internal>`` notes).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from nanoclaw.core import model_choice
from nanoclaw.core import tasks as tasks_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.backoff import backoff
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Job, Session, Task, TaskRun, Turn, db
from nanoclaw.core.prompt import escape, strip_internal
from nanoclaw.core.protocol import Envelope, nudge
from nanoclaw.daemons.queue.turns import MODEL_REFUSED

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Tasks:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q

    def on_fire(self, env: Envelope) -> None:
        body = env.body
        task = Task.get_or_none(Task.id == body["task"])
        if task is None or task.status != "active":
            self.q.log.info("fired but is %s; ignored", task.status if task else "gone",
                            extra=log_fields(task=body["task"]))
            return
        with db.atomic("IMMEDIATE"):  # read then write: a deferred one could not upgrade (SQLITE_BUSY)
            due = body.get("due_at")
            existing = TaskRun.get_or_none(TaskRun.fire_key == env.name)
            if "due_at" not in body and existing is None:
                # A timer's light fire (tasks.fire_light): the due time and the next one are ours to set,
                # once, in the same transaction as the run.
                due = tasks_mod.advance(task, body["fired_at"])
            elif existing is not None:
                due = existing.due_at
            created = TaskRun.insert(task=task, fire_key=env.name, fired_at=body["fired_at"], due_at=due) \
                .on_conflict_ignore().execute()
        if created:
            late = body["fired_at"] - due if due else 0.0
            started = ""
            if due and "started_at" in body:
                started = f"; its process started {body['started_at'] - due:.3f}s after"
                if "python_at" in body:
                    started += f", Python ran {body['python_at'] - due:.3f}s after"
            self.q.log.info("fired (%.3fs after due%s)", late, started,
                            extra=log_fields(group=task.group.folder, task=task.id))

    def start(self, group: Group, run: TaskRun) -> Job:
        task = run.task
        session = Session.get_or_none(Session.group == group, Session.agent == "") if task.context_mode == "group" else None
        prompt = (f'<scheduled_task id="{task.id}" schedule="{escape(task.schedule_type)} '
                  f'{escape(task.schedule_value)}">{escape(task.prompt)}</scheduled_task>\n'
                  "This is a scheduled task, not a chat message; your answer is sent to the chat.")
        choice = model_choice.for_job(self.q.cfg, group.folder, task_model=task.model)
        with db.atomic("IMMEDIATE"):
            job = Job.create(group=group, task_run=run.id, model=choice.model)
            Turn.create(job=job, seq=0, first_message_id=0, last_message_id=0)
            self._begin(run, choice.model)
        if choice.refused:
            return self.q.turns.model_refused(job, choice)
        spec = {"job": job.id, "group": group.folder, "chat": task.chat, "is_main": group.is_main,
                "prompt": prompt, "session_id": session.session_id if session else None, "model": choice.model}
        if task.precheck:  # the runner runs it first; the agent starts only if it prints something
            spec["precheck"] = task.precheck
        self.q.put(self.q.runner_spool, "job", spec, then=lambda: nudge(self.q.cfg.socket("runner")))
        self.q.log.info("queued%s", " after its pre-check" if task.precheck else "",
                        extra=log_fields(group=group.folder, job=job.id, task=task.id, run=run.id))
        return job

    def skipped(self, job: Job, reason: str) -> None:
        """The run's pre-check said no: no agent ran. The run is recorded as skipped (with why);
        the task goes on as after any run (its next time was set when it fired)."""
        run = TaskRun.get_by_id(job.task_run)
        with db.atomic("IMMEDIATE"):
            job.status, job.finished_at = "done", time.time()
            job.save()
            Turn.delete().where(Turn.job == job).execute()  # no turn was ever handed to an agent
            self._settle(run, "skipped", result=reason[:4000], last_result=f"skipped: {reason[:500]}")
        self.q.log.info("skipped, no agent started: %s", reason[:200],
                        extra=log_fields(group=job.group.folder, job=job.id, task=run.task_id, run=run.id))
        nudge(self.q.cfg.socket("scheduler"))

    def turn_done(self, job: Job, turn: Turn, body: dict) -> bool:
        run = TaskRun.get_by_id(job.task_run)
        task = run.task
        self.q.turns.close(job)  # a task is one turn: free the slot for the group's chat
        if body.get("error") and not body["text"].strip():
            job.error = body["error"][:2000]
            job.save()
            return False
        text = strip_internal(body["text"])
        if text:
            self.q.router_spool.put("outbound", {"key": f"task:{run.id}", "chat": task.chat,
                                                 "text": body["text"], "kind": "task"})
        else:
            self.q.log.info("silent: nothing sent",
                            extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
        with db.atomic("IMMEDIATE"):
            turn.status, turn.done_at = "done", time.time()
            turn.save()
            self._settle(run, "success", result=text[:4000] if text else "(silent: nothing was sent)",
                         last_result="success")
            if task.context_mode == "group" and body.get("session_id"):
                Session.insert(group=job.group, agent="", session_id=body["session_id"], updated_at=time.time()) \
                    .on_conflict_replace().execute()
        self.q.log.info("succeeded", extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
        nudge(self.q.cfg.socket("scheduler"))
        return True

    def finished(self, job: Job, exit_code: int | None, error: str, stopped: bool = False) -> None:
        """A task job's container is gone: a run that did not succeed is tried again, or given up."""
        run = TaskRun.get_by_id(job.task_run)
        task = run.task
        failed = run.status != "success"
        if failed and stopped:  # run-all stopped: the run waits for the next start, no attempt counted
            with db.atomic("IMMEDIATE"):
                job.status, job.exit_code, job.finished_at = "stopped", exit_code, time.time()
                job.error = (job.error or error or "")[:2000]
                job.save()
                self._requeue(run, uncount=True, retry_at=0.0)
            self.q.log.info("stopped with nanoclaw run-all; runs at the next start",
                            extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
            return
        spent = usage_mod.exceeded(self.q.cfg, job.group.folder) if failed else None
        if failed and (spent is not None or self.q.holds.disk_low() is not None):
            # refused by the proxy, or the disk was full: the budget or the disk, not the task, failed
            with db.atomic("IMMEDIATE"):
                job.status, job.exit_code, job.finished_at = "failed", exit_code, time.time()
                job.error = (job.error or error or "")[:2000]
                job.save()
                self._requeue(run, uncount=True)  # skipped with the group's other due runs, or waits for space
            return
        give_up = failed and run.attempts >= self.q.cfg.max_attempts
        if give_up:
            # Durable in the router's spool before the run is settled (its key makes a repeat harmless).
            self.q.router_spool.put("outbound", {
                "key": f"task:{run.id}:failed", "chat": task.chat, "kind": "notice",
                "text": f"Scheduled task {task.id} failed {run.attempts} times"
                        + (f" ({job.error or error})" if (job.error or error).startswith(MODEL_REFUSED) else "")
                        + ("." if task.schedule_type == "once" else "; it will run again at its next time.")})
            nudge(self.q.cfg.socket("router"))
        with db.atomic("IMMEDIATE"):  # the job, its run and its task change together or not at all
            job.status = "failed" if failed else "done"
            job.exit_code, job.finished_at = exit_code, time.time()
            job.error = (job.error or error or "")[:2000]
            job.save()
            if not failed:
                return
            run.error = job.error or f"exit code {exit_code}"
            if give_up:
                self._settle(run, "error", last_result=f"error: {run.error[:500]}")
            else:
                self._requeue(run, retry_at=time.time() + backoff(run.attempts, self.q.cfg.backoff_base,
                                                                  self.q.cfg.backoff_max))
        if give_up:
            self.q.log.error("gave up: %s", run.error[:200],
                             extra=log_fields(group=job.group.folder, task=task.id, run=run.id))
        else:
            self.q.log.warning("failed (attempt %d/%d): %s", run.attempts, self.q.cfg.max_attempts, run.error[:200],
                               extra=log_fields(group=job.group.folder, task=task.id, run=run.id))

    def skip_for_budget(self, group: Group, spent: usage_mod.Exceeded) -> None:
        """Skip the group's due task runs: a spent budget is not a failure to retry."""
        why = f"skipped: {spent.text(group.name)}"
        runs = list(TaskRun.select().join(Task).where(Task.group == group, TaskRun.status == "queued"))
        with db.atomic("IMMEDIATE"):
            for run in runs:  # recorded as a pre-check's skip is, from when it fired (it never started)
                self._settle(run, "skipped", result=why[:2000], last_result=why[:500], last_run=run.fired_at)
        for run in runs:
            self.q.log.warning("%s", why, extra=log_fields(group=group.folder, task=run.task_id, run=run.id))
        self.q.holds.budget_notice(group, spent)
        nudge(self.q.cfg.socket("scheduler"))

    # -- a run's state: written here alone ------------------------------------------
    @staticmethod
    def _begin(run: TaskRun, model: str) -> None:
        """Its job is made: running on ``model``, one attempt more (call in the job's transaction)."""
        run.status, run.started_at, run.model = "running", time.time(), model
        run.attempts += 1
        run.save()

    @staticmethod
    def _requeue(run: TaskRun, *, uncount: bool = False, retry_at: float | None = None) -> None:
        """Back in the queue (call in a transaction): ``retry_at`` not before then; ``uncount``
        when the attempt was not the task's failure (stopped, a spent budget, a full disk)."""
        run.status = "queued"
        if uncount:
            run.attempts = max(0, run.attempts - 1)
        if retry_at is not None:
            run.retry_at = retry_at
        run.save()

    @staticmethod
    def _settle(run: TaskRun, status: str, *, last_result: str, result: str | None = None,
                last_run: float | None = None) -> None:
        """The run ends: ``status`` "success", "skipped" or "error", with what came of it; its task
        records it (``last_run``: when the run started, unless given), and a task that was to run
        once is completed. Call in a transaction."""
        run.status, run.finished_at = status, time.time()
        if result is not None:
            run.result = result
        run.save()
        task = run.task
        task.last_run, task.last_result = run.started_at if last_run is None else last_run, last_result
        if task.schedule_type == "once":
            task.status = "completed"
        task.save()
