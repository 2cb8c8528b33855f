"""ipc: reads what agents ask for, and decides if they may.

SUMMARY
    Claims each group's ``ipc/<group>/out`` requests and results (and each
    team member's, ``ipc/<group>/agents/<name>/out``); passes turn results to
    the queue and authorised messages to the router; stores delegations;
    refuses the rest into ``bad/`` with a logged reason.

READS
    ``ipc/<group>/out/new`` of every registered group and of its members'
    directories (the containers' own spools); the database (jobs, groups,
    tasks, the team's messages).

WRITES
    ``turn_result`` to ``spool/queue``; what a turn is doing (``progress``, cleaned) to
    the queue's socket; ``outbound`` to ``spool/router``; tasks
    (through ``core.tasks``), groups (``register_group``, main only), budget
    requests (``raise_budget``, the main group's lead only: the owner approves them), member
    files (``create_agent``, a lead only, through ``core.team``) and
    delegation messages (within the team caps); ``spool/ipc/<group>[/agents/<name>]/{cur,bad}``
    on the host's side. A request whose handling the disk refused (full, read-only) stays in
    ``cur/`` and is handled again at a later pass; what it does is keyed, so never twice.

PRIVILEGE
    The service user; no network.

HOSTILE INPUT
    Everything it reads from ``out/``: the group a request speaks for is the
    directory it was found in, never what the file says; files are claimed by
    renaming the entry through directory descriptors (``safefs``), so a link
    is moved and refused as a link, never followed; a non-main group may only
    message its own chat and manage its own tasks (a task's pre-check is shell
    text stored as such: only the runner runs it, in a confined container of
    the group the task is for); only the main group's lead (the owner's own
    chat) may ask for a budget change, and only the owner grants it. The agent a request speaks
    for is the directory too: a team member may message its own chat and
    delegate within its team, nothing else (no groups, tasks, members, or
    other chats).
"""

from __future__ import annotations

import hashlib
import os
import time

from nanoclaw.core import budget_requests
from nanoclaw.core import progress as progress_mod
from nanoclaw.core import groups as groups_mod
from nanoclaw.core import model_choice
from nanoclaw.core import tasks as tasks_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.groups import FOLDER_RE
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Job, Message, Turn, db
from nanoclaw.core.protocol import STAGE_NAME, Envelope, Spool, nudge, tell
from nanoclaw.core.schedules import ScheduleError
from nanoclaw.core.skeleton import Daemon


def delegation_key(asker: str, answering: int, target: str, task: str) -> str:
    """A delegation's id: who asked, answering which input, whom, what. A turn that runs again
    on the same input (its container was lost after it delegated, before its answer was in)
    asks the same again, and that is stored once: the member does not do the work twice."""
    digest = hashlib.sha256(task.encode()).hexdigest()[:16]
    return f"delegate:{asker or 'lead'}:{answering}:{target}:{digest}"


class IpcDaemon(Daemon):
    name = "ipc"

    def setup(self) -> None:
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        self.router_spool = Spool(self.cfg.spool_dir / "router").ensure()
        self.spools: dict[str, Spool] = {}
        self._kept: dict[str, list] = {}  # spool name -> claimed files to handle again (the disk refused)
        self._first_pass = True

    def _spool(self, folder: str, agent: str = "") -> Spool:
        key = f"{folder}/{agent}" if agent else folder
        spool = self.spools.get(key)
        if spool is None:
            # The container writes out/{tmp,new}; cur/ and bad/ stay on the host's side.
            host = self.cfg.spool_dir / "ipc" / folder / ("agents/" + agent if agent else "")
            spool = Spool(host, exposed=self.cfg.agent_ipc(folder, agent) / "out",
                          max_bytes=self.cfg.max_spool_bytes, name=f"ipc/{key}").ensure()
            self.spools[key] = spool
            self.watch(spool.new)
        return spool

    def _agents(self, folder: str) -> list[str]:
        """The lead ("") and every member that has an IPC directory (the runner makes them; the
        names are the host's own, under a directory no container sees)."""
        try:
            names = os.listdir(self.cfg.agent_ipc(folder) / "agents")
        except OSError:
            names = []
        return [""] + sorted(n for n in names if FOLDER_RE.fullmatch(n))

    def work(self) -> float | None:
        targets: set[str] = set()
        for group in list(Group.select()):  # materialised: no read cursor open across writes
            for agent in self._agents(group.folder):
                targets |= self._drain(group, agent)
        self._first_pass = False
        for daemon in sorted(targets & {"queue", "router"}):
            nudge(self.cfg.socket(daemon))
        return None

    def _drain(self, group: Group, agent: str) -> set[str]:
        """Handle what one agent's container has asked; returns the daemons to nudge."""
        spool = self._spool(group.folder, agent)
        paths = spool.leftovers() if self._first_pass else self._kept.pop(spool.name, [])
        targets = set()
        envs = spool.take(paths + spool.claim_new())
        for i, env in enumerate(envs):
            try:
                target = self._dispatch(group, agent, spool, env)
            except Exception as exc:
                if self.refused(exc):  # kept in cur/, this one and those after it, for a later pass
                    self._kept[spool.name] = [e.path for e in envs[i:] if e.path is not None]
                    break
                self.log.exception("request %s failed", env.name,
                                   extra=log_fields(group=group.folder, agent=agent or "lead"))
                spool.reject(env.path, f"processing failed: {exc}")
                continue
            if target is None:
                continue  # refused: already moved to bad/
            targets.add(target)
            spool.done(env.path)
        return targets

    def _dispatch(self, group: Group, agent: str, spool: Spool, env: Envelope) -> str | None:
        body = env.body
        who = f"group={group.folder}" + (f" agent={agent}" if agent else "")
        if env.type not in ("result", "progress", "send_message", "register_group", "task_request", "delegate",
                            "create_agent", "raise_budget"):
            spool.reject(env.path, f"{who}: request type {env.type!r} is not supported")
            return None
        job = Job.get_or_none(Job.id == body["job"])
        if job is None or job.group_id != group.id:
            spool.reject(env.path, f"{who}: job {body['job']} is not this group's")
            return None
        if job.agent != agent:  # the lead's job named from a member's directory, or the reverse
            spool.reject(env.path, f"{who}: job {body['job']} is not this agent's")
            return None
        if agent and env.type in ("register_group", "task_request", "create_agent", "raise_budget"):
            spool.reject(env.path, f"{who}: a team member may not {env.type.replace('_', ' ')}; that is the lead's")
            return None
        if env.type == "progress":
            return self._progress(group, agent, job, spool, env)
        if env.type == "register_group":
            return self._register_group(group, spool, env)
        if env.type == "raise_budget":
            return self._raise_budget(group, spool, env)
        if env.type == "task_request":
            return self._task_request(group, spool, env)
        if env.type == "create_agent":
            return self._create_agent(group, spool, env)
        if env.type == "delegate":
            return self._delegate(group, agent, job, spool, env)
        if env.type == "result":
            result = {"group": group.folder, "agent": agent, "job": job.id, "turn": body["turn"], "text": body["text"],
                      "session_id": body.get("session_id"), "error": body.get("error")}
            stages = (body.get("usage") or {}).get("stages") if isinstance(body.get("usage"), dict) else None
            if isinstance(stages, dict):  # a new container's clock readings: plain names, numbers, a few
                result["usage"] = {"stages": {k: float(v) for k, v in list(stages.items())[:16]
                                              if isinstance(k, str) and STAGE_NAME.fullmatch(k)
                                              and (isinstance(v, float) or type(v) is int and abs(v) < 1 << 53)}}
            self.queue_spool.put("turn_result", result, name=env.name)
            return "queue"
        chat = body.get("chat") or group.jid
        if chat != group.jid:
            if not group.is_main or agent:
                spool.reject(env.path, f"{who}: may only message its own chat, not {chat!r}")
                return None
            target = Group.get_or_none((Group.jid == chat) | (Group.folder == chat))
            if target is None:
                spool.reject(env.path, f"group={group.folder}: no registered chat {chat!r}")
                return None
            chat = target.jid
        if not body["text"].strip():
            spool.reject(env.path, f"group={group.folder}: empty message")
            return None
        key = f"ipc:{group.folder}:{agent}:{env.name}" if agent else f"ipc:{group.folder}:{env.name}"
        self.router_spool.put("outbound", {"key": key, "chat": chat, "text": body["text"], "kind": "message",
                                           "sender": team_mod.display(agent) if agent else ""}, name=env.name)
        self.log.info("send_message", extra=log_fields(group=group.folder, agent=agent, job=job.id, chat=chat))
        return "router"

    def _progress(self, group: Group, agent: str, job: Job, spool: Spool, env: Envelope) -> str | None:
        """What a turn is doing (core/progress.py), checked and cleaned here, told to the queue,
        which knows the turn's chat and message. Cosmetic: a lost line is only a stale status."""
        said = progress_mod.from_agent(env.body)
        if said is None:
            spool.reject(env.path, f"group={group.folder}: not a progress report")
            return None
        state, tool, detail = said
        tell(self.cfg.socket("queue"), "progress", group=group.folder, agent=agent, job=job.id,
             turn=env.body["turn"], state=state, tool=tool, detail=detail)
        return "progress"  # told already: nobody to nudge

    # -- teams --------------------------------------------------------------
    def _create_agent(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        """A lead's new (or changed) team member, checked here and written by the host."""
        body = env.body
        tools = body.get("tools") or []
        try:
            try:  # the member's model is an agent's argument: an exact name, and an allowed one
                model = model_choice.check(self.cfg, body.get("model") or "", "the member's model")
            except model_choice.ModelError as exc:
                raise team_mod.TeamError(str(exc)) from None
            member = team_mod.write(self.cfg, group.folder, team_mod.Member(
                name=body["name"], description=" ".join(body["description"].split()),
                instructions=body["instructions"], model=model,
                tools=tuple(str(t) for t in tools)))
        except team_mod.TeamError as exc:
            spool.reject(env.path, f"group={group.folder}: create_agent refused: {exc}")
            self._notice(group, f"ipc:{group.folder}:{env.name}:refused", f"Team member not created: {exc}")
            return None
        self.log.info("created team member", extra=log_fields(group=group.folder, agent=member.name))
        self._notice(group, f"ipc:{group.folder}:{env.name}:ok",
                     f"New team member: {member.display} ({member.description}).")
        return "router"

    def _delegate(self, group: Group, agent: str, job: Job, spool: Spool, env: Envelope) -> str | None:
        """Store a delegation as a message for the member, within the team's caps.

        The chain is the human message (or scheduled run) the asking turn started from; depth
        counts delegations within delegations. At a cap the delegation is refused and the chat
        is told once per chain.
        """
        body, who = env.body, f"group={group.folder} agent={agent or 'lead'}"
        target = body["agent"]
        if target == agent or team_mod.member(self.cfg, group.folder, target) is None:
            spool.reject(env.path, f"{who}: delegate refused: no other team member {target!r} in this group")
            self._notice(group, f"ipc:{group.folder}:{agent}:{env.name}:refused",
                         f"{team_mod.display(agent) if agent else 'The lead'} asked for {target!r}, "
                         f"who is not on this group's team (nanoclaw agents list {group.folder}).")
            return None
        if not body["task"].strip():
            spool.reject(env.path, f"{who}: delegate refused: an empty task")
            return None
        if not self._live(job):  # an old job's turn would start a chain afresh, at depth 0
            spool.reject(env.path, f"{who}: delegate refused: job {job.id} is an old one; a chain goes on from "
                                   "the agent's latest job only")
            return None
        chain, depth, answering = self._chain_of(job)
        team = self.cfg.team
        count = Message.select().where(Message.chat == group.jid, Message.chain == chain,
                                       Message.agent.is_null(False), Message.answers.is_null()).count()
        limit = None
        if depth + 1 > team.max_depth:
            limit = f"more than {team.max_depth} delegations deep"
        elif count >= team.max_delegations:
            limit = f"more than {team.max_delegations} delegations for one request"
        if limit:
            spool.reject(env.path, f"{who}: delegate to {target} refused: chain {chain} would go {limit}")
            self._notice(group, f"team:{group.folder}:chain:{chain}:limit",
                         f"The team stopped handing work on: that would be {limit} ([team] limits). "
                         "The answers so far stand.")
            return None
        with db.atomic("IMMEDIATE"):
            Message.insert(chat=group.jid, sender=team_mod.sender(agent),
                           sender_name=team_mod.display(agent) if agent else self.cfg.assistant_name,
                           text=body["task"], timestamp=time.time(),
                           channel_id=delegation_key(agent, answering, target, body["task"]), agent=target, chain=chain,
                           depth=depth + 1).on_conflict_ignore().execute()
        self.log.info("delegated to %s chain=%s depth=%d", target, chain, depth + 1,
                      extra=log_fields(group=group.folder, agent=agent or "lead", job=job.id))
        return "queue"

    @staticmethod
    def _live(job: Job) -> bool:
        """Whether ``job`` is its agent's latest (its container's, or, if that has just exited,
        the one whose requests are still being read). A chain is read from that job only, so an
        agent cannot name one of its old jobs to begin again from depth 0."""
        return not Job.select().where(Job.group == job.group_id, Job.agent == job.agent, Job.id > job.id).exists()

    @staticmethod
    def _chain_of(job: Job) -> tuple[int, int, int]:
        """(chain, depth, input) of what the job's latest turn answers: a human message starts a
        chain of its own (depth 0); a team message carries its chain; a scheduled run is -run.
        ``input`` is the turn's last message (-run for a scheduled one)."""
        if job.task_run:
            return -job.task_run, 0, -job.task_run
        turn = job.turns.order_by(Turn.seq.desc()).first()
        m = Message.get_or_none(Message.id == turn.last_message_id) if turn else None
        if m is None:
            return 0, 0, 0
        if m.agent is None:
            return m.id, 0, m.id
        return m.chain or 0, m.depth, m.id

    def _notice(self, group: Group, key: str, text: str) -> None:
        # Kept if the disk refuses it: the request it answers may already be in bad/ or done.
        self.put(self.router_spool, "outbound", {"key": key, "chat": group.jid, "text": text, "kind": "notice"},
                 then=lambda: nudge(self.cfg.socket("router")))

    def _task_request(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        """Create or change a task on an agent's behalf, and tell the chat what happened."""
        body, spec = env.body, env.body["task"]
        try:
            if body["action"] == "schedule":
                target = None
                if spec.get("target_group"):
                    target = Group.get_or_none(Group.folder == spec["target_group"])
                    if target is None:
                        raise tasks_mod.TaskError(f"no group {spec['target_group']!r}")
                # A pre-check is shell for a confined container of the target group (runner/precheck.py),
                # never run on the host: checked for shape here, not for what it does.
                task = tasks_mod.create(self.cfg, group, str(spec.get("prompt", "")), str(spec.get("schedule_type", "")),
                                        str(spec.get("schedule_value", "")),
                                        context_mode=str(spec.get("context_mode") or "group"),
                                        target=target, created_by=group.folder,
                                        precheck=spec.get("precheck") or "",
                                        model=spec.get("model", ""))  # hostile: checked as any name
                text = f"Scheduled: {tasks_mod.describe(task)}."
            elif body["action"] == "update":
                if not isinstance(spec.get("id"), int):
                    raise tasks_mod.TaskError("a task id is required")
                given = {k: spec[k] for k in ("prompt", "schedule_type", "schedule_value")  # not `fields`: the
                         if isinstance(spec.get(k), str) and spec[k]}                     # log's, below
                task = tasks_mod.update(self.cfg, tasks_mod.find(spec["id"], group), prompt=given.get("prompt"),
                                        kind=given.get("schedule_type"), value=given.get("schedule_value"),
                                        precheck=spec.get("precheck"),  # "" removes it
                                        model=spec.get("model"))  # None keeps it; checked as any name
                text = f"Updated: {tasks_mod.describe(task)}."
            elif body["action"] in ("pause", "resume", "cancel"):
                if not isinstance(spec.get("id"), int):
                    raise tasks_mod.TaskError("a task id is required")
                task = tasks_mod.change(tasks_mod.find(spec["id"], group), body["action"])
                text = f"Task {task.id} is now {task.status}."
            else:
                raise tasks_mod.TaskError(f"unknown task action {body['action']!r}")
        except (tasks_mod.TaskError, ScheduleError) as exc:
            spool.reject(env.path, f"group={group.folder}: task {body['action']} refused: {exc}")
            self._notice(group, f"ipc:{group.folder}:{env.name}:refused", f"Task request refused: {exc}")
            return None
        self.log.info("%s", body["action"], extra=log_fields(group=group.folder, task=task.id))
        self._notice(group, f"ipc:{group.folder}:{env.name}:ok", text)  # the task is made: never made twice
        nudge(self.cfg.socket("scheduler"))
        return "router"

    def _raise_budget(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        """Main only (the directory it was found in, never what it says): the main agent asks for
        a budget change, which becomes a request the owner approves in the main chat
        (core/budget_requests.py); nothing changes before that. Any other group's request is
        refused and logged."""
        body = env.body
        if not group.is_main:
            spool.reject(env.path, f"group={group.folder}: only the main group may change a budget")
            return None
        try:
            ref = str(body.get("group") or "")
            if ref in ("all", usage_mod.ALL):
                scope = usage_mod.ALL
            else:
                target = Group.get_or_none((Group.folder == ref) | (Group.name == ref))
                if target is None:
                    raise usage_mod.BudgetError(f"no group {ref!r}")
                scope = target.folder
            unit = str(body.get("unit") or "usd")
            amount = body.get("amount")
            if isinstance(amount, bool) or not isinstance(amount, (int, float)):
                raise usage_mod.BudgetError("the amount must be a number")
            amount = usage_mod.parse_amount(str(amount), tokens=unit == "tokens")
            req = budget_requests.ask(self.cfg, group, scope, str(body.get("period") or "day"), unit, amount,
                                      add=body.get("mode") == "add")
        except usage_mod.BudgetError as exc:
            spool.reject(env.path, f"group={group.folder}: raise_budget refused: {exc}")
            self._notice(group, f"ipc:{group.folder}:{env.name}:refused", f"Budget not changed: {exc}")
            return None
        self.log.info("a budget change for %s waits for the owner's answer", scope,
                      extra=log_fields(group=group.folder, request=req.id))
        return "router"  # the card

    def _register_group(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        """Main only: an agent may add a group, never make one main or touch existing ones."""
        body = env.body
        if not group.is_main:
            spool.reject(env.path, f"group={group.folder}: only the main group may register groups")
            return None
        try:
            groups_mod.add_group(self.cfg, body["folder"], name=body["name"], jid=groups_mod.validate_jid(body["jid"]),
                                 trigger=body["trigger"] or None, is_main=False)
        except groups_mod.GroupError as exc:
            spool.reject(env.path, f"group={group.folder}: register_group refused: {exc}")
            return None
        self.log.info("registered group folder=%s jid=%s", body["folder"], body["jid"],
                      extra=log_fields(group=group.folder))
        nudge(self.cfg.socket("channel"))  # the main agent's list of chats now shows it registered
        return "queue"

    def status(self) -> str:
        return f"watching {len(self.spools)} group(s)"


main = IpcDaemon.main
