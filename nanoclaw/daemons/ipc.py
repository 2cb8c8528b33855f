"""ipc: reads what agents ask for, and decides if they may.

SUMMARY
    Claims each group's ``ipc/<group>/out`` requests and results; passes turn
    results to the queue and authorised messages to the router; refuses the
    rest into ``bad/`` with a logged reason.

READS
    ``ipc/<group>/out/new`` of every registered group (the container's own
    spool); the database (jobs, groups, tasks).

WRITES
    ``turn_result`` to ``spool/queue``; ``outbound`` to ``spool/router``; tasks
    (through ``core.tasks``) and groups (``register_group``, main only);
    ``spool/ipc/<group>/{cur,bad}`` on the host's side.

PRIVILEGE
    The service user; no network.

HOSTILE INPUT
    Everything it reads from ``out/``: the group a request speaks for is the
    directory it was found in, never what the file says; files are claimed by
    renaming the entry through directory descriptors (``safefs``), so a link
    is moved and refused as a link, never followed; a non-main group may only
    message its own chat and manage its own tasks.
"""

from __future__ import annotations

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import tasks as tasks_mod
from nanoclaw.core.models import Group, Job
from nanoclaw.core.protocol import Envelope, Spool, nudge
from nanoclaw.core.schedules import ScheduleError
from nanoclaw.core.skeleton import Daemon


class IpcDaemon(Daemon):
    name = "ipc"

    def setup(self) -> None:
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        self.router_spool = Spool(self.cfg.spool_dir / "router").ensure()
        self.spools: dict[str, Spool] = {}
        self._first_pass = True

    def _spool(self, folder: str) -> Spool:
        spool = self.spools.get(folder)
        if spool is None:
            # The container writes out/{tmp,new}; cur/ and bad/ stay on the host's side.
            spool = Spool(self.cfg.spool_dir / "ipc" / folder, exposed=self.cfg.ipc_dir / folder / "out",
                          max_bytes=self.cfg.max_spool_bytes, name=f"ipc/{folder}").ensure()
            self.spools[folder] = spool
            self.watch(spool.new)
        return spool

    def work(self) -> float | None:
        nudge_queue = nudge_router = False
        for group in list(Group.select()):  # materialised: no read cursor open across writes
            spool = self._spool(group.folder)
            paths = spool.leftovers() if self._first_pass else []
            for env in spool.take(paths + spool.claim_new()):
                try:
                    target = self._dispatch(group, spool, env)
                except Exception as exc:
                    self.log.exception("group=%s request %s failed", group.folder, env.name)
                    spool.reject(env.path, f"processing failed: {exc}")
                    continue
                if target is None:
                    continue  # refused: already moved to bad/
                nudge_queue |= target == "queue"
                nudge_router |= target == "router"
                spool.done(env.path)
        self._first_pass = False
        if nudge_queue:
            nudge(self.cfg.socket("queue"))
        if nudge_router:
            nudge(self.cfg.socket("router"))
        return None

    def _dispatch(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        body = env.body
        if env.type not in ("result", "send_message", "register_group", "task_request"):
            spool.reject(env.path, f"group={group.folder}: request type {env.type!r} is not supported")
            return None
        job = Job.get_or_none(Job.id == body["job"])
        if job is None or job.group_id != group.id:
            spool.reject(env.path, f"group={group.folder}: job {body['job']} is not this group's")
            return None
        if env.type == "register_group":
            return self._register_group(group, spool, env)
        if env.type == "task_request":
            return self._task_request(group, spool, env)
        if env.type == "result":
            self.queue_spool.put("turn_result", {
                "group": group.folder, "job": job.id, "turn": body["turn"], "text": body["text"],
                "session_id": body.get("session_id"), "error": body.get("error")}, name=env.name)
            return "queue"
        chat = body.get("chat") or group.jid
        if chat != group.jid:
            if not group.is_main:
                spool.reject(env.path, f"group={group.folder}: may only message its own chat, "
                                       f"not {chat!r}")
                return None
            target = Group.get_or_none((Group.jid == chat) | (Group.folder == chat))
            if target is None:
                spool.reject(env.path, f"group={group.folder}: no registered chat {chat!r}")
                return None
            chat = target.jid
        if not body["text"].strip():
            spool.reject(env.path, f"group={group.folder}: empty message")
            return None
        self.router_spool.put("outbound", {"key": f"ipc:{group.folder}:{env.name}", "chat": chat,
                                           "text": body["text"], "kind": "message"}, name=env.name)
        self.log.info("group=%s job=%s send_message to chat=%s", group.folder, job.id, chat)
        return "router"

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
                task = tasks_mod.create(self.cfg, group, str(spec.get("prompt", "")), str(spec.get("schedule_type", "")),
                                        str(spec.get("schedule_value", "")),
                                        context_mode=str(spec.get("context_mode") or "group"),
                                        target=target, created_by=group.folder)
                text = f"Scheduled: {tasks_mod.describe(task)}."
            elif body["action"] == "update":
                if not isinstance(spec.get("id"), int):
                    raise tasks_mod.TaskError("a task id is required")
                fields = {k: spec[k] for k in ("prompt", "schedule_type", "schedule_value")
                          if isinstance(spec.get(k), str) and spec[k]}
                task = tasks_mod.update(tasks_mod.find(spec["id"], group), prompt=fields.get("prompt"),
                                        kind=fields.get("schedule_type"), value=fields.get("schedule_value"))
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
            self.router_spool.put("outbound", {"key": f"ipc:{group.folder}:{env.name}:refused", "chat": group.jid,
                                               "text": f"Task request refused: {exc}", "kind": "notice"})
            nudge(self.cfg.socket("router"))
            return None
        self.log.info("group=%s task=%s %s", group.folder, task.id, body["action"])
        self.router_spool.put("outbound", {"key": f"ipc:{group.folder}:{env.name}:ok", "chat": group.jid,
                                           "text": text, "kind": "notice"})
        nudge(self.cfg.socket("scheduler"))
        return "router"

    def _register_group(self, group: Group, spool: Spool, env: Envelope) -> str | None:
        """Main only: an agent may add a group, never make one main or touch existing ones."""
        body = env.body
        if not group.is_main:
            spool.reject(env.path, f"group={group.folder}: only the main group may register groups")
            return None
        try:
            groups_mod.add_group(self.cfg, body["folder"], name=body["name"], jid=body["jid"],
                                 trigger=body["trigger"] or None, is_main=False)
        except groups_mod.GroupError as exc:
            spool.reject(env.path, f"group={group.folder}: register_group refused: {exc}")
            return None
        self.log.info("group=%s registered group folder=%s jid=%s", group.folder, body["folder"], body["jid"])
        nudge(self.cfg.socket("channel"))  # the main agent's list of chats now shows it registered
        return "queue"

    def status(self) -> str:
        return f"watching {len(self.spools)} group(s)"


main = IpcDaemon.main
