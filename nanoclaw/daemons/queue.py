"""queue: decides when each group's agent runs, and what it is told.

SUMMARY
    Turns stored messages (and fired tasks) into agent turns, one container
    per group's agent at a time (the lead, and each member of its team),
    under a global cap, with retries and backoff.

READS
    New ``message`` rows (the channel nudges it); ``spool/queue``:
    ``turn_result`` (from ipc), ``job_event`` (from the runner),
    ``task_fire`` (from a timer), ``budget_spent`` (from the proxy).

    Budgets (``core.usage``): a group whose budget is spent starts no job; its
    chat is told once per budget and period (the notice's key), its messages
    wait until the budget resumes or the owner raises it, and its scheduled
    task runs are skipped (``TaskRun.status`` "skipped", with the reason), not
    retried.

    A full disk (``core.faults``): while the state directory's disk is nearly
    full no job starts; a chat with work waiting is told once per episode, its
    messages (and due task runs) wait, and a job that failed meanwhile is not
    counted against its retries. An event whose handling the disk refused
    stays in ``cur/`` and is handled again at a later pass.

WRITES
    ``job`` files to ``spool/runner``; follow-up ``prompt`` and ``close`` files
    into a live container's ``ipc/<group>/in`` (host-only, the agent's view is
    read-only); ``outbound`` files to ``spool/router``; jobs, turns, cursors,
    sessions and task runs in the database.

    The owner's answers: ``approve N``/``deny N`` in the main chat are carried
    out here (core/approvals.py), answered in one line and never handed to the
    main agent; a request nobody answers expires at its time (the next expiry
    is one of ``work()``'s deadlines).

    Delivery rule: an agent's cursor is the last message whose turn finished
    *and* whose reply is durably queued for the router. Only then does it
    advance; a crash before that re-delivers, and the reply's key
    (``job:<id>:turn:<n>``) keeps the chat from hearing it twice.

    Quiet by default: a turn whose answer is empty once its ``<internal>`` notes are
    removed is silent: nothing goes to the router, the cursor moves on all the
    same, and the log says "silent". With ``burst_window`` set, a group's chat
    messages reach the agent only once the chat has been quiet that long (at most
    ``BURST_CAP`` windows after the first), so a burst is one turn; work() returns
    when that is, nothing polls.

    Teams: a delegation is a message for a member; a member's answer is sent
    to the chat under its name and, in the same transaction as its cursor,
    stored as a message for whoever asked (once per delegation: its
    ``channel_id`` is ``result:<delegation>``). An asker runs on its answers
    when none of its delegations in that chain is still out, so a lead that
    handed out two tasks reads both answers in one turn; it holds no slot
    while it waits.

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

from peewee import fn

from nanoclaw.core import approvals, faults
from nanoclaw.core import groups as groups_mod
from nanoclaw.core import model_choice
from nanoclaw.core import tasks as tasks_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.backoff import backoff
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import (
    AllowedSender,
    Cursor,
    Group,
    Job,
    Message,
    Request,
    Session,
    Task,
    TaskRun,
    Turn,
    db,
)
from nanoclaw.core.prompt import build_prompt, escape, next_batch, strip_internal
from nanoclaw.core.protocol import STAGE_NAME, Envelope, Spool, nudge, tell
from nanoclaw.core.skeleton import Daemon

ACTIVE = ("queued", "running")
AgentKey = tuple[int, str]  # (group id, agent): "" is the group's lead
STALE_QUEUED_SECONDS = 300.0  # a job the runner never confirmed starting
STALE_RUNNING_GRACE = 300.0  # a running job not reported ended this long past its container's time limit
SPACE_CHECK = 2.0  # seconds between looks at the disk while work waits for space
MODEL_REFUSED = "its model is refused: "  # a job's error when core/model_choice.py refused its model
BURST_CAP = 5  # a burst is handed over at most this many windows after its first message


class QueueDaemon(Daemon):
    name = "queue"

    def setup(self) -> None:
        self.inbox = Spool(self.cfg.spool_dir / "queue", max_bytes=self.cfg.max_spool_bytes).ensure()
        self.runner_spool = Spool(self.cfg.spool_dir / "runner").ensure()
        self.router_spool = Spool(self.cfg.spool_dir / "router").ensure()
        self.watch(self.inbox.new)
        self._teams: dict[str, tuple[int, list[str]]] = {}  # folder -> (agents/ mtime, member names)
        self._top = 0  # the newest message id the last scheduling pass saw
        self._expiry_seen = -1  # the newest request when requests' expiry was last looked at
        self._expiry_next: float | None = None  # when the next pending request expires
        self._task_groups: set[int] = set()  # groups with task runs queued, as of this pass
        self._approved: int | None = None  # the newest sender the owner approved, as of this pass
        self._nothing_for: dict[int, tuple] = {}  # group id -> what it looked like when nothing was for anyone
        self._told: set[str] = set()  # budget notices handed to the router by this process
        # Chat bursts being waited out: (group, agent) -> (first seen, newest message id, when seen).
        # In memory: after a restart a burst waits at most one cap again.
        self._bursts: dict[AgentKey, tuple[float, int, float]] = {}
        self._passes = 0
        self._disk_pass = -1  # the pass the disk was last looked at in
        self._disk_why: str | None = None  # why no agent starts (a full disk), as of that pass
        self._disk_episode = 0  # when the disk was found full, for the notices' keys
        self._disk_told: set[str] = set()
        self._last_low = 0.0  # when the disk was last seen full
        self._pending = self.inbox.leftovers()
        if self._pending:
            self.log.info("re-processing %d event(s) left in cur/", len(self._pending))

    # -- events -------------------------------------------------------------
    def work(self) -> float | None:
        self._passes += 1
        events = self._pending + self.inbox.claim_new()
        self._pending = []
        touched = False
        envs = self.inbox.take(events)
        for i, env in enumerate(envs):
            try:
                if env.type == "turn_result":
                    touched |= self._on_turn_result(env)
                elif env.type == "job_event":
                    self._on_job_event(env)
                elif env.type == "task_fire":
                    self._on_task_fire(env)
                elif env.type == "budget_spent":
                    self._on_budget_spent(env)
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
        # Requests nobody answered expire at their time: the next one's is a deadline like a
        # retry's, so nothing polls for it. Without a new request or a deadline passed there is
        # nothing to look at (answered requests only take deadlines away).
        newest = Request.select(fn.MAX(Request.id)).scalar() or 0
        if newest != self._expiry_seen or (self._expiry_next is not None and time.time() >= self._expiry_next):
            left = approvals.expire(self.cfg)
            self._expiry_seen, self._expiry_next = newest, None if left is None else time.time() + left
        expiry = None if self._expiry_next is None else max(0.0, self._expiry_next - time.time())
        due = self._schedule(Message.select(fn.MAX(Message.id)).scalar() or 0)
        return min((d for d in (expiry, due) if d is not None), default=None)

    def _on_turn_result(self, env: Envelope) -> bool:
        body = env.body
        job = Job.get_or_none(Job.id == body["job"])
        if job is None or job.group.folder != body["group"] or job.agent != body.get("agent", ""):
            # The group and agent come from the directory the file was found in: a container
            # naming another group's (or agent's) job is forging, not confused.
            self.inbox.reject(env.path, f"job {body['job']} does not belong to group {body['group']!r}"
                                        f" agent {body.get('agent', '')!r}")
            return False
        turn = Turn.get_or_none(Turn.job == job, Turn.seq == body["turn"])
        if turn is None:
            self.log.warning("turn=%s unknown turn; ignored", body["turn"], extra=log_fields(job=job.id))
            return False
        if turn.status == "done":
            return False  # re-processed after a crash: already applied
        group = job.group
        if job.task_run:
            return self._task_turn_done(job, turn, body)
        if body.get("error") and not body["text"].strip():
            self.log.warning("turn=%s agent error: %s", turn.seq, body["error"][:200],
                             extra=log_fields(group=group.folder, job=job.id))
            job.error = body["error"][:2000]
            job.save()
            self._close(job)  # a fresh container will retry the pending messages
            self._typing(group.jid, False)
            return False
        if strip_internal(body["text"]):
            # Durable in the router's spool before the cursor moves.
            out = {"key": f"job:{job.id}:turn:{turn.seq}", "chat": group.jid, "text": body["text"], "kind": "reply"}
            reply_to = self._reply_to(turn.last_message_id)
            if reply_to:
                out["reply_to"] = reply_to
            if job.agent:  # a member speaks in the chat under its own name
                out["sender"] = team_mod.display(job.agent)
            self.router_spool.put("outbound", out)
        else:
            self.log.info("turn=%s silent: nothing sent (the answer was empty or only internal notes)", turn.seq,
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
                self._answer(group, job.agent, turn.last_message_id, body["text"].strip())
        self.log.info("turn=%s answered up to message %s", turn.seq, turn.last_message_id,
                      extra=log_fields(group=group.folder, agent=job.agent or "lead", job=job.id,
                                   message=turn.last_message_id))
        self._log_stages(job, body)
        self._typing(group.jid, False)
        return True

    def _on_job_event(self, env: Envelope) -> None:
        body = env.body
        job = Job.get_or_none(Job.id == body["job"])
        if job is None:
            self.log.warning("job_event for an unknown job; ignored", extra=log_fields(job=body["job"]))
            return
        if body["event"] == "started":
            if job.status == "queued":
                job.status, job.started_at = "running", time.time()
                job.container = body.get("container", "")
                job.save()
                self.log.info("container started", extra=log_fields(group=job.group.folder, job=job.id))
        elif body["event"] == "exited":
            if job.status in ACTIVE:
                self._finish(job, body.get("exit_code"), body.get("error", ""), body.get("stopped", False))
        elif body["event"] == "skipped":
            if job.status in ACTIVE and job.task_run:
                self._task_skipped(job, body.get("reason") or "the pre-check said no")
        else:
            self.inbox.reject(env.path, f"unknown job event {body['event']!r}")

    def _finish(self, job: Job, exit_code: int | None, error: str, stopped: bool = False) -> None:
        """A job's container is gone: settle its turns, count a failure if it failed. One
        ``stopped`` (by `nanoclaw run-all` stopping) did not fail: its undone turns' messages
        wait for the next start, with no retry delay and no attempt counted."""
        if job.task_run:
            return self._task_finished(job, exit_code, error, stopped)
        turns = list(job.turns)
        undone = [t for t in turns if t.status != "done"]
        failed = not stopped and (exit_code not in (0, None) or bool(job.error) or bool(error)
                                  or (undone and len(undone) == len(turns)))
        group = job.group
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
            spent = usage_mod.exceeded(self.cfg, group.folder) if failed and undone else None
            disk = self._disk_low() if failed and undone and spent is None else None
            if spent is not None:
                # Refused by the proxy for a spent budget: not the agent's failure. The messages
                # wait (the schedule holds the group) instead of retrying into the wall.
                self.log.warning("stopped: budget spent; messages wait until %s",
                                 f"{spent.resumes:%Y-%m-%d %H:%M} {spent.tz}",
                                 extra=log_fields(group=group.folder, job=job.id))
            elif disk is not None:  # the same for a full disk: they wait for space (_schedule)
                self.log.warning("stopped: %s; messages wait for space", disk,
                                 extra=log_fields(group=group.folder, job=job.id))
            elif failed and undone:
                cursor.failures += 1
                if cursor.failures >= self.cfg.max_attempts:
                    self._give_up(job, cursor, max(t.last_message_id for t in undone))
                else:
                    delay = backoff(cursor.failures, self.cfg.backoff_base, self.cfg.backoff_max)
                    cursor.retry_at = time.time() + delay
                    self.log.warning("failed (attempt %d/%d, exit=%s): %s; retry in %.0fs", cursor.failures,
                                     self.cfg.max_attempts, exit_code,
                                     (job.error or "no result")[:200], delay,
                                     extra=log_fields(group=group.folder, job=job.id))
                cursor.save()
        self.log.info("finished status=%s exit=%s", job.status, exit_code,
                      extra=log_fields(group=group.folder, job=job.id))
        if undone:
            self._typing(group.jid, False)

    def _give_up(self, job: Job, cursor: Cursor, upto: int) -> None:
        """Retries are exhausted: tell the chat in one line and move past the messages
        (a member's askers are told too, so no one waits on it for ever)."""
        group = job.group
        why = f"the agent failed {cursor.failures} times"
        if job.error.startswith(("the container could not start", MODEL_REFUSED)):
            why = job.error.replace("the container", "my container", 1)
        who = f"{team_mod.display(job.agent)} could not answer" if job.agent else "Sorry, I could not answer that"
        self.router_spool.put("outbound", {
            "key": f"job:{job.id}:failed", "chat": group.jid, "kind": "notice",
            "text": f"{who}: {why}. Please try again later."})
        if job.agent:
            self._answer(group, job.agent, upto, f"({team_mod.display(job.agent)} could not answer: {why}.)",
                         forced=True)
        cursor.last_message_id = max(cursor.last_message_id, upto)
        cursor.failures, cursor.retry_at = 0, 0
        self.log.error("gave up after %d attempts; chat told", self.cfg.max_attempts,
                       extra=log_fields(group=group.folder, job=job.id))
        nudge(self.cfg.socket("router"))

    # -- scheduling ---------------------------------------------------------
    def _close(self, job: Job) -> None:
        if job.closing:
            return
        self.put(Spool(self.cfg.agent_ipc(job.group.folder, job.agent) / "in").ensure(), "close", {"job": job.id})
        job.closing = True
        job.save()
        self.log.info("asked to close", extra=log_fields(group=job.group.folder, job=job.id))

    def _schedule(self, top: int) -> float | None:
        """Start, feed or close agents' jobs as the messages and task runs now stored ask;
        ``top`` is the newest message id. Returns the seconds until the next thing is due."""
        now = time.time()
        next_due: float | None = None
        # Queries are materialised with list(): a SELECT still stepping holds a read
        # snapshot, and BEGIN IMMEDIATE on a stale snapshot fails at once (SQLITE_BUSY).
        for job in list(Job.select().where(Job.status == "queued", Job.created_at < now - STALE_QUEUED_SECONDS)):
            # Not while its file waits for the disk here, nor while the runner waits for space
            # (or did within the allowance): it is not lost, it is waiting.
            if self.held.waiting("job", "job", job.id) or self._disk_low() is not None \
                    or self._last_low > now - STALE_QUEUED_SECONDS:
                continue
            self._finish(job, None, "the runner never started it")
        # A group is never silenced for good by a job whose end never came (its report lost):
        # past its container's time limit, with room to spare, the job counts as failed.
        overdue = now - self.cfg.container.timeout - STALE_RUNNING_GRACE
        for job in list(Job.select().where(Job.status == "running", Job.started_at < overdue)):
            self.log.error("no end reported %.0fs after its time limit; counted as failed", STALE_RUNNING_GRACE,
                           extra=log_fields(group=job.group.folder, job=job.id))
            self._finish(job, None, "its end was never reported")
        active: dict[AgentKey, Job] = {(j.group_id, j.agent): j for j in Job.select().where(Job.status.in_(ACTIVE))}
        waiting: list[AgentKey] = []
        # Which chats have messages since the last pass, and which groups have task runs queued:
        # two queries for all groups, so a pass costs little for the groups nothing happened in.
        changed = {c for (c,) in Message.select(Message.chat).distinct().where(Message.id > self._top).tuples()}
        self._top = top
        self._task_groups = {g for (g,) in TaskRun.select(Task.group).join(Task)
                             .where(TaskRun.status == "queued").distinct().tuples()}
        self._approved = AllowedSender.select(fn.MAX(AllowedSender.id)).scalar()  # a sender the owner let in
        for group in list(Group.select()):
            # A group whose newest message was already looked at, with no job and nothing addressed
            # to any agent, need not be read again: its untriggered chatter only waits as context.
            # Without this every pass re-read it all, so each stored message cost O(backlog).
            seen = self._seen_signature(group, None if group.jid in changed else self._nothing_for.get(group.id))
            quiet = not any(k[0] == group.id for k in active) and self._still_nothing(group, seen)
            if isinstance(self._next_task_run(group, now), TaskRun) and \
                    (spent := usage_mod.exceeded(self.cfg, group.folder, now)) is not None:
                self._skip_tasks(group, spent)  # whether or not chat messages wait too
            by_agent = {"": []} if quiet else self._pending_by_agent(group, active)
            busy = False
            for agent, pending in by_agent.items():
                if group.is_main and not agent and pending:
                    pending = self._owner_answers(group, pending)
                key = (group.id, agent)
                job = active.get(key)
                if job is not None and job.status == "queued" and self._disk_low() is not None:
                    self._disk_notice(group)  # its job waits in the runner for space
                batch, prompt = self._batch(group, agent, pending) if pending else ([], "")
                busy = busy or bool(batch) or job is not None
                if not batch:
                    if not pending:
                        self._bursts.pop(key, None)
                    if agent:
                        continue  # scheduled tasks are the lead's
                    if job is not None:
                        # A warm container idling for follow-ups must not hold a due task back
                        # for its whole idle timeout: close it, the task starts next pass.
                        if isinstance(self._next_task_run(group, now), TaskRun) and self._idle(job):
                            self._close(job)
                        continue
                    # Nothing for the lead (chatter waits as context): a due task may run.
                    due = self._next_task_run(group, now)
                    if isinstance(due, TaskRun) and self._disk_low() is not None:
                        next_due = min(next_due or now + SPACE_CHECK, now + SPACE_CHECK)  # waits for space
                    elif isinstance(due, TaskRun):
                        if len(active) < self.cfg.max_concurrent:
                            active[key] = self._start_task_job(group, due)
                        else:
                            waiting.append(key)
                    elif due is not None:
                        next_due = min(next_due or due, due)
                    continue
                settled = self._burst_settles(key, pending, now)
                if settled is not None:  # the chat is still talking: hand it all over in one turn
                    next_due = min(next_due or settled, settled)
                    continue
                if job is not None:
                    # Not into a scheduled run's container: it may run on the task's model.
                    if job.status == "running" and not job.closing and not job.task_run:
                        self._follow_up(job, group, pending)
                        self._bursts.pop(key, None)
                    continue  # a queued or closing job: the messages wait for the next one
                cursor = Cursor.get(Cursor.group == group, Cursor.agent == agent)
                if cursor.retry_at > now:
                    next_due = min(next_due or cursor.retry_at, cursor.retry_at)
                    continue
                spent = usage_mod.exceeded(self.cfg, group.folder, now)
                if spent is not None:  # held: the chat is told once; a raise nudges us
                    self._budget_notice(group, spent)
                    resume = spent.resumes.timestamp()
                    next_due = min(next_due or resume, resume)
                    continue
                disk = self._disk_low()
                if disk is not None:  # held as for a spent budget: told once, looked at again soon
                    self._disk_notice(group)
                    next_due = min(next_due or now + SPACE_CHECK, now + SPACE_CHECK)
                    continue
                if len(active) >= self.cfg.max_concurrent:
                    waiting.append(key)
                    continue
                active[key] = self._start_job(group, agent, batch, prompt)
                self._bursts.pop(key, None)
            if busy or any(k[0] == group.id for k in active):
                self._nothing_for.pop(group.id, None)
            else:
                self._nothing_for[group.id] = seen
        if waiting:
            self._free_slots(active, len(waiting))
        return None if next_due is None else max(0.0, next_due - time.time())

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
        self.log.info("new container's first turn: %s", " ".join(parts),
                      extra=log_fields(group=job.group.folder, job=job.id))

    def _seen_signature(self, group: Group, unchanged: tuple | None) -> tuple:
        """What decides whether a group's pending messages hold anything for an agent, besides the
        messages: its newest message id first (``unchanged``'s when no message came since), then
        its trigger settings, allowlist and team."""
        top = unchanged[0] if unchanged else \
            Message.select(fn.MAX(Message.id)).where(Message.chat == group.jid).scalar() or 0
        try:
            allow = groups_mod.allowlist_path(self.cfg, group.folder).stat().st_mtime_ns
        except OSError:
            allow = None
        return (top, group.trigger, group.requires_trigger, group.is_main, group.policy, allow,
                self._approved, tuple(self._members(group)))

    def _still_nothing(self, group: Group, seen: tuple) -> bool:
        """True if a group found with nothing for any agent still has nothing: same settings, and
        none of the messages since is addressed to anyone (read just those, not the backlog)."""
        before = self._nothing_for.get(group.id)
        if before is None or before[1:] != seen[1:]:
            return False
        if before[0] == seen[0]:
            return True
        names = self._members(group)
        new = list(Message.select().where(Message.chat == group.jid, Message.id > before[0],
                                          Message.is_bot == False).order_by(Message.id))  # noqa: E712
        if any(team_mod.addressee(m, names) for m in new) or (new and self._batch(group, "", new)[0]):
            return False
        self._nothing_for[group.id] = seen
        return True

    def _owner_answers(self, main: Group, pending: list[Message]) -> list[Message]:
        """Carry out the owner's ``approve N``/``deny N`` among the main chat's pending messages
        (once each: core/approvals.py records the answer) and keep them from the main agent:
        nanoclaw answers them itself. Returns the messages that are for the agent."""
        rest = []
        for m in pending:
            done = approvals.handle_command(self.cfg, m, main)
            if not done:
                rest.append(m)
            if done != "now":
                continue
            self.log.info("is the owner's answer to a request; handled, not for the agent",
                          extra=log_fields(message=m.id))
            # a new group (or an allowed sender) has work now; the daemons that cache groups look again
            self.wake.set()
            for daemon in ("router", "ipc", "proxy", "channel"):
                nudge(self.cfg.socket(daemon))
        return rest

    # -- a full disk --------------------------------------------------------
    def _disk_low(self) -> str | None:
        """Why no agent should start now (the state directory's disk is nearly full), or None.
        Looked at once per pass."""
        if self._disk_pass == self._passes:
            return self._disk_why
        self._disk_pass = self._passes
        why = faults.low_space(self.cfg.state_dir)
        if why is not None:
            self._last_low = time.time()
            if self._disk_why is None:
                self._disk_episode = int(time.time())
                self.log.warning("%s: no agent starts until there is space; chats with work waiting are told", why)
        elif self._disk_why is not None:
            self.log.warning("space again: agents start")
        self._disk_why = why
        return why

    def _disk_notice(self, group: Group) -> None:
        """Tell a chat once per full-disk episode that its messages wait for space (a notice the
        disk refuses is kept and sent once it can be)."""
        key = f"disk:{self._disk_episode}:{group.folder}"
        if key in self._disk_told:
            return
        self._disk_told.add(key)
        self.put(self.router_spool, "outbound", {
            "key": key, "chat": group.jid, "kind": "notice",
            "text": f"The server's disk is full: messages to {group.name} wait, and are answered once "
                    "space is freed."}, then=lambda: nudge(self.cfg.socket("router")))
        self.log.warning("waits for disk space; chat told", extra=log_fields(group=group.folder))

    # -- budgets ------------------------------------------------------------
    def _on_budget_spent(self, env: Envelope) -> None:
        """The proxy refused a call for a spent budget: tell the chat (once)."""
        group = Group.get_or_none(Group.folder == env.body.get("group"))
        if group is None:
            return
        spent = usage_mod.exceeded(self.cfg, group.folder)
        if spent is not None:
            self._budget_notice(group, spent)

    def _budget_notice(self, group: Group, spent: usage_mod.Exceeded) -> None:
        """One notice per budget and period: the outbox key makes a repeat (another process,
        a restart) harmless; the set spares the router's spool the repeats of this one."""
        if spent.key in self._told:
            return
        self.put(self.router_spool, "outbound", {"key": spent.key, "chat": group.jid, "kind": "notice",
                                                 "text": spent.text(group.name) + "."},
                 then=lambda: nudge(self.cfg.socket("router")))
        self._told.add(spent.key)
        self.log.warning("budget spent (%s per %s); chat told", spent.limit.unit, spent.limit.period,
                         extra=log_fields(group=group.folder))

    def _skip_tasks(self, group: Group, spent: usage_mod.Exceeded) -> None:
        """Skip the group's due task runs: a spent budget is not a failure to retry."""
        why = f"skipped: {spent.text(group.name)}"
        runs = list(TaskRun.select().join(Task).where(Task.group == group, TaskRun.status == "queued"))
        with db.atomic("IMMEDIATE"):
            for run in runs:
                task = run.task
                run.status, run.finished_at, run.result = "skipped", time.time(), why[:2000]  # as a pre-check's
                run.save()
                task.last_run, task.last_result = run.fired_at, why[:500]
                if task.schedule_type == "once":
                    task.status = "completed"
                task.save()
        for run in runs:
            self.log.warning("%s", why, extra=log_fields(group=group.folder, task=run.task_id, run=run.id))
        self._budget_notice(group, spent)
        nudge(self.cfg.socket("scheduler"))

    def _burst_settles(self, key: AgentKey, pending: list[Message], now: float) -> float | None:
        """When the chat messages pending for an agent may go to it, if not now.

        With ``burst_window`` set, they wait until no new one has come for a window, or
        ``BURST_CAP`` windows after the first of them, whichever is sooner. Arrival is when
        this queue first saw a message (the channel nudges it on each), not the time the
        chat network stamped on it. Team messages never wait, nor do they start a burst.
        """
        window = self.cfg.burst_window
        newest = max((m.id for m in pending if m.agent is None), default=0)
        if window <= 0 or not newest:
            self._bursts.pop(key, None)
            return None
        first, seen_id, seen_at = self._bursts.get(key, (now, 0, now))
        if newest != seen_id:
            seen_at = now
        self._bursts[key] = (first, newest, seen_at)
        ready = min(seen_at + window, first + BURST_CAP * window)
        return None if now >= ready else ready

    # -- teams --------------------------------------------------------------
    def _members(self, group: Group) -> list[str]:
        """The names of a group's team (cached until its ``agents/`` folder changes)."""
        try:
            mtime = (self.cfg.groups_dir / group.folder / team_mod.AGENTS).stat().st_mtime_ns
        except OSError:
            return []
        cached = self._teams.get(group.folder)
        if cached is None or cached[0] != mtime:
            cached = self._teams[group.folder] = (mtime, [m.name for m in team_mod.members(self.cfg, group.folder)])
        return cached[1]

    def _pending_by_agent(self, group: Group, active: dict[AgentKey, Job]) -> dict[str, list[Message]]:
        """Each agent's pending messages: past its cursor (and its live job's turns), addressed to
        it or for it from its team. The lead comes first and is always there."""
        names = self._members(group)
        cursors = {c.agent: c for c in Cursor.select().where(Cursor.group == group)}
        if "" not in cursors:
            cursors[""] = Cursor.create(group=group, agent="")
        # Agents with team messages waiting, even one whose member file is gone (settled below).
        waiting = {a for (a,) in Message.select(Message.agent).distinct().where(
            Message.chat == group.jid, Message.agent.is_null(False),
            Message.id > min(c.last_message_id for c in cursors.values())).tuples()}
        agents = [""] + sorted(set(names) | (waiting - {""}))
        for agent in agents:
            if agent not in cursors:
                cursors[agent] = self._new_cursor(group, agent)
        upto = {}
        for agent in agents:
            job = active.get((group.id, agent))
            upto[agent] = max([cursors[agent].last_message_id] + ([t.last_message_id for t in job.turns] if job else []))
        rows = list(Message.select().where(Message.chat == group.jid, Message.id > min(upto.values()),
                                           Message.is_bot == False)  # noqa: E712
                    .order_by(Message.id))
        out: dict[str, list[Message]] = {a: [] for a in agents}
        for m in rows:
            agent = team_mod.addressee(m, names)
            if agent in out and m.id > upto[agent]:
                out[agent].append(m)
        gone = [a for a in agents if a and a not in names and out[a]]
        for agent in gone:  # a member removed with work still for it: its askers hear why, nobody waits
            with db.atomic("IMMEDIATE"):
                last = out.pop(agent)[-1].id
                self._answer(group, agent, last, f"({team_mod.display(agent)} is no longer on the team.)",
                             forced=True)
                Cursor.update(last_message_id=last).where(Cursor.group == group, Cursor.agent == agent).execute()
            self.log.warning("has work but no member file; its askers were told",
                             extra=log_fields(group=group.folder, agent=agent))
        for agent, pending in out.items():
            for m in pending:
                if m.agent is not None and m.answers is not None:  # an answer: ready when no sibling is out
                    m.ready = not self._outstanding(group, agent, m.chain)
        return out

    def _new_cursor(self, group: Group, agent: str) -> Cursor:
        """A member's first cursor: where the lead's is (what the group's agent already dealt with
        is not for a member that joined later), or before its first delegation if that is older."""
        lead = Cursor.get(Cursor.group == group, Cursor.agent == "").last_message_id
        first = Message.select(fn.MIN(Message.id)).where(Message.chat == group.jid, Message.agent == agent).scalar()
        return Cursor.create(group=group, agent=agent, last_message_id=min(lead, first - 1) if first else lead)

    @staticmethod
    def _delegations(group: Group) -> Any:
        """The group's delegations (team messages that answer nothing) with no answer yet."""
        answered = Message.select(Message.answers).where(Message.chat == group.jid, Message.answers.is_null(False))
        return Message.select().where(Message.chat == group.jid, Message.agent.is_null(False),
                                      Message.answers.is_null(), Message.id.not_in(answered))

    def _outstanding(self, group: Group, asker: str, chain: int) -> bool:
        """Whether ``asker`` still waits on a delegation it made in ``chain``."""
        return self._delegations(group).where(Message.sender == team_mod.sender(asker),
                                              Message.chain == chain).exists()

    def _answer(self, group: Group, agent: str, upto: int, text: str, forced: bool = False) -> None:
        """Store a member's answer for those who asked it (call in a transaction).

        The delegations to ``agent`` up to message ``upto`` that have no answer get this one,
        unless the member still waits on a delegation it made after that one arrived (work it
        handed on for it: its later turn, reading that answer, answers for it). Holding only
        for *later* delegations means no two agents can wait on each other. ``forced`` (it
        failed, or left the team) answers every one of them.
        """
        owed = list(self._delegations(group).where(Message.agent == agent, Message.id <= upto).order_by(Message.id))
        mine: dict[int, int] = {}  # chain -> the latest delegation the member still waits on
        if owed and not forced:
            for chain, latest in (self._delegations(group).select(Message.chain, fn.MAX(Message.id))
                                  .where(Message.sender == team_mod.sender(agent))
                                  .group_by(Message.chain).tuples()):
                mine[chain] = latest
        for d in owed:
            if mine.get(d.chain, 0) > d.id:
                continue
            asker = d.sender.removeprefix("agent:")
            Message.insert(chat=group.jid, sender=team_mod.sender(agent), sender_name=team_mod.display(agent),
                           text=text or f"({team_mod.display(agent)} finished without an answer.)",
                           timestamp=time.time(), channel_id=f"result:{d.id}",
                           agent="" if asker == "lead" else asker, chain=d.chain, depth=max(0, d.depth - 1),
                           answers=d.id).on_conflict_ignore().execute()
            self.log.info("answered delegation=%s for %s chain=%s", d.id, asker, d.chain,
                          extra=log_fields(group=group.folder, agent=agent))

    @staticmethod
    def _reply_to(message_id: int) -> int | None:
        """What a reply answers in the chat: the message itself, or for team-internal input the
        human message its chain started from."""
        m = Message.get_or_none(Message.id == message_id)
        if m is None or m.agent is None:
            return message_id
        return m.chain if m.chain and m.chain > 0 else None

    def _batch(self, group: Group, agent: str, pending: list[Message]) -> tuple[list[Message], str]:
        """The messages the next prompt covers and that prompt; ([], "") if none is for the agent.

        Every message addressed to the agent reaches it (in several turns when
        there are more than ``prompt_batch``); only older context is capped. A
        prompt that would not fit a spool file covers fewer messages.
        """
        allowed = groups_mod.senders_for(self.cfg, group)  # the group's policy: open, allowlist or ask
        owner = groups_mod.policy_of(self.cfg, group) == "ask"  # the owner never asks themselves
        size = self.cfg.prompt_batch
        # A member's pending messages were all addressed to it ("@Researcher ..." or its team's).
        requires_trigger = group.requires_trigger and not group.is_main and not agent
        while True:
            batch, shown = next_batch(pending, cap=self.cfg.prompt_cap, batch=size, trigger=group.trigger,
                                      requires_trigger=requires_trigger, allowed=allowed, owner=owner)
            if not batch:
                return [], ""
            prompt = build_prompt(batch, cap=shown, tz=self.cfg.tz)
            if len(prompt.encode()) <= self.cfg.max_spool_bytes // 2 or size == 1:
                return batch, prompt
            size = max(1, size // 2)

    def _start_job(self, group: Group, agent: str, batch: list[Message], prompt: str) -> Job:
        session = Session.get_or_none(Session.group == group, Session.agent == agent)
        choice = model_choice.for_job(self.cfg, group.folder, agent)
        with db.atomic("IMMEDIATE"):
            job = Job.create(group=group, agent=agent, model=choice.model)
            Turn.create(job=job, seq=0, first_message_id=batch[0].id, last_message_id=batch[-1].id)
        if choice.refused:
            return self._model_refused(job, choice)
        # A file the disk refuses is kept and handed over later; the job stays queued till then.
        self.put(self.runner_spool, "job", {"job": job.id, "group": group.folder, "chat": group.jid,
                                            "is_main": group.is_main and not agent, "prompt": prompt,
                                            "session_id": session.session_id if session else None, "agent": agent,
                                            "model": choice.model},
                 then=lambda: nudge(self.cfg.socket("runner")))
        self._typing(group.jid, True)
        self.log.info("queued messages=%d..%d", batch[0].id, batch[-1].id,
                      extra=log_fields(group=group.folder, agent=agent or "lead", job=job.id))
        return job

    def _follow_up(self, job: Job, group: Group, pending: list[Message]) -> None:
        """Deliver new messages into the group's live container instead of starting another:
        as many turns as it takes for every message addressed to the agent."""
        inbox = Spool(self.cfg.agent_ipc(group.folder, job.agent) / "in").ensure()
        seq = job.turns.select(fn.MAX(Turn.seq)).scalar() or 0
        while True:
            batch, prompt = self._batch(group, job.agent, pending)
            if not batch:
                break
            seq += 1
            Turn.create(job=job, seq=seq, first_message_id=batch[0].id, last_message_id=batch[-1].id)
            # Not synced: a power cut that could lose it ends the container too (see Spool.put).
            self.put(inbox, "prompt", {"job": job.id, "turn": seq, "prompt": prompt, "session_id": None},
                     durable=False)
            self.log.info("turn=%s follow-up delivered messages=%d..%d", seq, batch[0].id, batch[-1].id,
                          extra=log_fields(group=group.folder, job=job.id))
            pending = pending[len(batch):]
        self._typing(group.jid, True)

    def _typing(self, chat: str, on: bool) -> None:
        """Tell the channel an agent is working on (or done with) a chat: cosmetic,
        fire-and-forget, so it can neither block nor fail the job."""
        tell(self.cfg.socket("channel"), "typing", chat=chat, on=on)

    @staticmethod
    def _idle(job: Job) -> bool:
        """A live container that has answered every turn and is only waiting."""
        return job.status == "running" and not job.closing and \
            not job.turns.where(Turn.status != "done").exists()

    def _free_slots(self, active: dict[AgentKey, Job], wanted: int) -> None:
        """Ask idle containers to exit so waiting groups get a slot."""
        for job in active.values():
            if wanted <= 0:
                break
            if self._idle(job):
                self._close(job)
                wanted -= 1

    # -- scheduled tasks ----------------------------------------------------
    def _on_task_fire(self, env: Envelope) -> None:
        body = env.body
        task = Task.get_or_none(Task.id == body["task"])
        if task is None or task.status != "active":
            self.log.info("fired but is %s; ignored", task.status if task else "gone",
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
            self.log.info("fired (%.3fs after due%s)", late, started,
                          extra=log_fields(group=task.group.folder, task=task.id))

    def _next_task_run(self, group: Group, now: float) -> TaskRun | float | None:
        """The group's next task run to start now, or when one becomes due (backoff)."""
        if group.id not in self._task_groups:
            return None
        run = (TaskRun.select().join(Task).where(Task.group == group, TaskRun.status == "queued")
               .order_by(TaskRun.id).first())
        if run is None:
            return None
        return run if run.retry_at <= now else run.retry_at

    def _start_task_job(self, group: Group, run: TaskRun) -> Job:
        task = run.task
        session = Session.get_or_none(Session.group == group, Session.agent == "") if task.context_mode == "group" else None
        prompt = (f'<scheduled_task id="{task.id}" schedule="{escape(task.schedule_type)} '
                  f'{escape(task.schedule_value)}">{escape(task.prompt)}</scheduled_task>\n'
                  "This is a scheduled task, not a chat message; your answer is sent to the chat.")
        choice = model_choice.for_job(self.cfg, group.folder, task_model=task.model)
        with db.atomic("IMMEDIATE"):
            job = Job.create(group=group, task_run=run.id, model=choice.model)
            Turn.create(job=job, seq=0, first_message_id=0, last_message_id=0)
            run.status, run.started_at, run.model = "running", time.time(), choice.model
            run.attempts += 1
            run.save()
        if choice.refused:
            return self._model_refused(job, choice)
        spec = {"job": job.id, "group": group.folder, "chat": task.chat, "is_main": group.is_main,
                "prompt": prompt, "session_id": session.session_id if session else None, "model": choice.model}
        if task.precheck:  # the runner runs it first; the agent starts only if it prints something
            spec["precheck"] = task.precheck
        self.put(self.runner_spool, "job", spec, then=lambda: nudge(self.cfg.socket("runner")))
        self.log.info("queued%s", " after its pre-check" if task.precheck else "",
                      extra=log_fields(group=group.folder, job=job.id, task=task.id, run=run.id))
        return job

    def _model_refused(self, job: Job, choice: model_choice.Choice) -> Job:
        """The model chosen for a job may not be used ([usage] allowed_models): nothing starts;
        the job fails as a container that cannot start does, with the line as its error, which
        the chat is given when the retries are spent."""
        self.log.error("not started: %s", choice.refused, extra=log_fields(group=job.group.folder, job=job.id))
        self._finish(job, None, MODEL_REFUSED + choice.refused)
        return job

    def _task_skipped(self, job: Job, reason: str) -> None:
        """The run's pre-check said no: no agent ran. The run is recorded as skipped (with why);
        the task goes on as after any run (its next time was set when it fired)."""
        run = TaskRun.get_by_id(job.task_run)
        task = run.task
        now = time.time()
        with db.atomic("IMMEDIATE"):
            job.status, job.finished_at = "done", now
            job.save()
            Turn.delete().where(Turn.job == job).execute()  # no turn was ever handed to an agent
            run.status, run.finished_at, run.result = "skipped", now, reason[:4000]
            run.save()
            task.last_run, task.last_result = run.started_at, f"skipped: {reason[:500]}"
            if task.schedule_type == "once":
                task.status = "completed"
            task.save()
        self.log.info("skipped, no agent started: %s", reason[:200],
                      extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
        nudge(self.cfg.socket("scheduler"))

    def _task_turn_done(self, job: Job, turn: Turn, body: dict) -> bool:
        run = TaskRun.get_by_id(job.task_run)
        task = run.task
        self._close(job)  # a task is one turn: free the slot for the group's chat
        if body.get("error") and not body["text"].strip():
            job.error = body["error"][:2000]
            job.save()
            return False
        text = strip_internal(body["text"])
        if text:
            self.router_spool.put("outbound", {"key": f"task:{run.id}", "chat": task.chat,
                                               "text": body["text"], "kind": "task"})
        else:
            self.log.info("silent: nothing sent",
                          extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
        with db.atomic("IMMEDIATE"):
            turn.status, turn.done_at = "done", time.time()
            turn.save()
            run.status, run.finished_at = "success", time.time()
            run.result = text[:4000] if text else "(silent: nothing was sent)"
            run.save()
            task.last_run, task.last_result = run.started_at, "success"
            if task.schedule_type == "once":
                task.status = "completed"
            task.save()
            if task.context_mode == "group" and body.get("session_id"):
                Session.insert(group=job.group, agent="", session_id=body["session_id"], updated_at=time.time()) \
                    .on_conflict_replace().execute()
        self.log.info("succeeded", extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
        nudge(self.cfg.socket("scheduler"))
        return True

    def _task_finished(self, job: Job, exit_code: int | None, error: str, stopped: bool = False) -> None:
        run = TaskRun.get_by_id(job.task_run)
        task = run.task
        failed = run.status != "success"
        if failed and stopped:  # run-all stopped: the run waits for the next start, no attempt counted
            with db.atomic("IMMEDIATE"):
                job.status, job.exit_code, job.finished_at = "stopped", exit_code, time.time()
                job.error = (job.error or error or "")[:2000]
                job.save()
                run.status, run.attempts, run.retry_at = "queued", max(0, run.attempts - 1), 0
                run.save()
            self.log.info("stopped with nanoclaw run-all; runs at the next start",
                          extra=log_fields(group=job.group.folder, job=job.id, task=task.id, run=run.id))
            return
        spent = usage_mod.exceeded(self.cfg, job.group.folder) if failed else None
        if failed and (spent is not None or self._disk_low() is not None):
            # refused by the proxy, or the disk was full: the budget or the disk, not the task, failed
            with db.atomic("IMMEDIATE"):
                job.status, job.exit_code, job.finished_at = "failed", exit_code, time.time()
                job.error = (job.error or error or "")[:2000]
                job.save()
                run.status = "queued"  # skipped with the group's other due runs, or waits for space
                run.attempts = max(0, run.attempts - 1)  # not counted
                run.save()
            return
        give_up = failed and run.attempts >= self.cfg.max_attempts
        if give_up:
            # Durable in the router's spool before the run is settled (its key makes a repeat harmless).
            self.router_spool.put("outbound", {
                "key": f"task:{run.id}:failed", "chat": task.chat, "kind": "notice",
                "text": f"Scheduled task {task.id} failed {run.attempts} times"
                        + (f" ({job.error or error})" if (job.error or error).startswith(MODEL_REFUSED) else "")
                        + ("." if task.schedule_type == "once" else "; it will run again at its next time.")})
            nudge(self.cfg.socket("router"))
        with db.atomic("IMMEDIATE"):  # the job, its run and its task change together or not at all
            job.status = "failed" if failed else "done"
            job.exit_code, job.finished_at = exit_code, time.time()
            job.error = (job.error or error or "")[:2000]
            job.save()
            if not failed:
                return
            run.error = job.error or f"exit code {exit_code}"
            if not give_up:
                run.status = "queued"
                run.retry_at = time.time() + backoff(run.attempts, self.cfg.backoff_base, self.cfg.backoff_max)
            else:
                run.status, run.finished_at = "error", time.time()
                task.last_run, task.last_result = run.started_at, f"error: {run.error[:500]}"
                if task.schedule_type == "once":
                    task.status = "completed"
                task.save()
            run.save()
        if give_up:
            self.log.error("gave up: %s", run.error[:200],
                           extra=log_fields(group=job.group.folder, task=task.id, run=run.id))
        else:
            self.log.warning("failed (attempt %d/%d): %s", run.attempts, self.cfg.max_attempts, run.error[:200],
                             extra=log_fields(group=job.group.folder, task=task.id, run=run.id))

    def status(self) -> str:
        running = Job.select().where(Job.status == "running").count()
        queued = Job.select().where(Job.status == "queued").count()
        failing = Cursor.select().where(Cursor.failures > 0).count()
        return (f"{Group.select().count()} groups, {running} running, {queued} queued"
                + (f", {failing} failing" if failing else "")
                + (f", {len(self._bursts)} chat(s) waiting for a burst to end" if self._bursts else "")
                + (f"; no agent starts, {faults.MARK}: {self._disk_why}" if self._disk_why else ""))


main = QueueDaemon.main
