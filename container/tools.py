"""The agent's nanoclaw tools (an in-process MCP server): each only *asks* the host.

SYNOPSIS
    for_container(ctx) -> [Tool]     the tools this container's agent gets
    Tool(name, description, schema, handler)   handler(ctx, args) -> MCP result

DESCRIPTION
    A tool writes a request to ``out/`` (``send_message``, ``task_request``,
    ``register_group``, ``raise_budget``, ``delegate``, ``create_agent``) or
    reads what the host left in the read-only ``in/`` (the tasks, the chats,
    the team). The host's ipc daemon decides whether a request is allowed, for
    the group the request was found in: nothing here is trusted, and nothing
    here needs to be. A team member gets ``send_message`` and the team's
    tools; the rest are the lead's, and the main group's lead gets the owner's
    tools on top.

    The tools are plain data here, so this module loads before the SDK; the
    session makes them the SDK's (``session.options``).

READS
    ``/workspace/ipc/in/tasks.json`` and ``available_groups.json`` (the
    host's snapshots), the member files (``team.py``).

WRITES
    Requests in ``/workspace/ipc/out`` (tmp, fsync, rename), one per call.

HOSTILE INPUT
    Every argument: the model chooses them (a prompt can steer it). They are
    passed on as data, never acted on here; the host's ipc daemon parses and
    checks each request for the group whose ``out/`` it was found in.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import team
from context import Context

Handler = Callable[[Context, dict], Awaitable[dict]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    schema: dict[str, Any]  # JSON schema of the arguments; the CLI checks them before the handler runs
    handler: Handler


def tool(name: str, description: str, schema: dict[str, Any]) -> Callable[[Handler], Tool]:
    return lambda handler: Tool(name, description, schema, handler)


def _ok(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def _request(ctx: Context, kind: str, body: dict) -> None:
    ctx.outbox.put(kind, {"job": ctx.job, **body})


@tool("send_message", "Send a message to the chat right away (for progress or several messages). "
      "Your final answer is sent anyway; do not repeat it here.",
      {"type": "object", "properties": {
          "text": {"type": "string"},
          "target_group": {"type": "string", "description": "main group only: another group's folder"}},
       "required": ["text"]})
async def send_message(ctx: Context, args: dict) -> dict:
    body = {"text": args["text"]}
    if args.get("target_group"):
        body["chat"] = args["target_group"]
    _request(ctx, "send_message", body)
    return _ok("Message handed to the host for delivery.")


PRECHECK_HELP = ("optional: a shell command run before each run, without you (no API cost), in a "
                 "container of this image with no network that sees /workspace/group read-only, for a "
                 "minute at most (by default). The run happens only if it exits 0 and prints something; what it "
                 "printed is then added to the task's prompt. E.g. 'test -s inbox/new.txt && cat "
                 "inbox/new.txt'.")


MODEL_HELP = ("optional: the exact model id its runs use (e.g. a small one for a simple daily digest), "
              "one the owner allows; left out: the owner's choice for scheduled tasks")


@tool("schedule_task", "Schedule a recurring or one-time task that runs a prompt later as this group's agent.",
      {"type": "object", "properties": {
          "prompt": {"type": "string", "description": "what to do when the task runs"},
          "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
          "schedule_value": {"type": "string",
                             "description": "cron: '0 9 * * *'; interval: '30m', '2h', '3600s'; "
                                            "once: local ISO time '2026-12-01T09:00'"},
          "context_mode": {"type": "string", "enum": ["group", "isolated"],
                           "description": "group: continue this group's session; isolated: fresh session"},
          "target_group": {"type": "string", "description": "main group only: schedule for another group"},
          "precheck": {"type": "string", "description": PRECHECK_HELP},
          "model": {"type": "string", "description": MODEL_HELP}},
       "required": ["prompt", "schedule_type", "schedule_value"]})
async def schedule_task(ctx: Context, args: dict) -> dict:
    task = {"prompt": args["prompt"], "schedule_type": args["schedule_type"],
            "schedule_value": args["schedule_value"], "context_mode": args.get("context_mode") or "group",
            "target_group": args.get("target_group") or "", "precheck": args.get("precheck") or ""}
    if "model" in args:  # the host checks it (an exact name, one the owner allows)
        task["model"] = args["model"]
    _request(ctx, "task_request", {"action": "schedule", "task": task})
    return _ok("Task request handed to the host; it validates the schedule and confirms in the chat.")


@tool("list_tasks", "List the scheduled tasks this group may see.", {"type": "object", "properties": {}})
async def list_tasks(ctx: Context, args: dict) -> dict:
    snapshot = ctx.ipc / "in" / "tasks.json"
    try:
        tasks = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return _ok("No scheduled tasks are known.")
    return _ok(json.dumps(tasks, indent=1) if tasks else "No scheduled tasks.")


def _task_action(action: str) -> Tool:
    @tool(f"{action}_task", f"{action.capitalize()} a scheduled task by id.",
          {"type": "object", "properties": {"task_id": {"type": "integer"}}, "required": ["task_id"]})
    async def handler(ctx: Context, args: dict) -> dict:
        _request(ctx, "task_request", {"action": action, "task": {"id": int(args["task_id"])}})
        return _ok(f"Request to {action} task {args['task_id']} handed to the host.")
    return handler


@tool("update_task", "Change a scheduled task's prompt, its schedule (give both type and value), its "
      "pre-check and/or its model.",
      {"type": "object", "properties": {
          "task_id": {"type": "integer"},
          "prompt": {"type": "string", "description": "the new prompt (leave out to keep it)"},
          "schedule_type": {"type": "string", "enum": ["cron", "interval", "once"]},
          "schedule_value": {"type": "string", "description": "as for schedule_task"},
          "precheck": {"type": "string", "description": "a new pre-check (see schedule_task); \"\" removes it"},
          "model": {"type": "string", "description": "a new model (see schedule_task); \"default\" goes back "
                                                     "to the owner's choice"}},
       "required": ["task_id"]})
async def update_task(ctx: Context, args: dict) -> dict:
    change = {k: args[k] for k in ("prompt", "schedule_type", "schedule_value") if args.get(k)}
    if isinstance(args.get("precheck"), str):
        change["precheck"] = args["precheck"]
    if "model" in args:
        change["model"] = args["model"]
    _request(ctx, "task_request", {"action": "update", "task": {"id": int(args["task_id"]), **change}})
    return _ok(f"Request to change task {args['task_id']} handed to the host; it confirms in the chat.")


@tool("list_available_groups", "Main group only: the chats the assistant can see (WhatsApp groups it is in "
      "and registered groups), with names, ids and whether they are registered, to use with register_group.",
      {"type": "object", "properties": {}})
async def list_available_groups(ctx: Context, args: dict) -> dict:
    try:
        chats = json.loads((ctx.ipc / "in" / "available_groups.json").read_text())
    except (OSError, ValueError):
        return _ok("The host has not listed any chats yet.")
    return _ok(json.dumps(chats, indent=1) if chats else "No chats are known.")


@tool("register_group", "Main group only: register a chat as a new group with its own agent.",
      {"type": "object", "properties": {
          "jid": {"type": "string"}, "name": {"type": "string"},
          "folder": {"type": "string", "description": "letters, digits, _ and -"},
          "trigger": {"type": "string", "description": "e.g. @Andy"}},
       "required": ["jid", "name", "folder"]})
async def register_group(ctx: Context, args: dict) -> dict:
    _request(ctx, "register_group", {"jid": args["jid"], "name": args["name"], "folder": args["folder"],
                                     "trigger": args.get("trigger") or ""})
    return _ok("Registration request handed to the host.")


@tool("raise_budget", "Main group only, and only when the owner asks: ask for a change of a group's spending "
      "budget (or that of all groups together). The host shows the owner a card in this chat; the change is made "
      "only when the owner answers `approve N`.",
      {"type": "object", "properties": {
          "group": {"type": "string", "description": "the group's folder or name, or 'all'"},
          "period": {"type": "string", "enum": ["day", "month"]},
          "amount": {"type": "number", "description": "USD, or tokens with unit 'tokens'"},
          "unit": {"type": "string", "enum": ["usd", "tokens"]},
          "mode": {"type": "string", "enum": ["set", "add"],
                   "description": "set: the new budget (default); add: on top of the one in force"}},
       "required": ["group", "period", "amount"]})
async def raise_budget(ctx: Context, args: dict) -> dict:
    _request(ctx, "raise_budget", {"group": args["group"], "period": args["period"], "amount": args["amount"],
                                   "unit": args.get("unit") or "usd", "mode": args.get("mode") or "set"})
    return _ok("Budget change asked; the owner approves or denies it in this chat.")


@tool("list_agents", "List the members of this group's team: their names and what each is for.",
      {"type": "object", "properties": {}})
async def list_agents(ctx: Context, args: dict) -> dict:
    members = {n: m for n, m in team.members(ctx).items() if n != ctx.agent}
    if not members:
        return _ok("This group has no team members" + ("." if ctx.agent else " yet; create_agent makes one."))
    return _ok("\n".join(f"- {name} ({m.display}): {m.description}" for name, m in members.items()))


@tool("delegate", "Hand a task to a member of the team (see list_agents). It works in its own container and "
      "its answer comes back to you later as a new message from it: end your turn now rather than wait. "
      "Say in the task everything the member needs; it does not see this conversation.",
      {"type": "object", "properties": {
          "agent": {"type": "string", "description": "the member's name"},
          "task": {"type": "string", "description": "what to do, with all the context needed"}},
       "required": ["agent", "task"]})
async def delegate(ctx: Context, args: dict) -> dict:
    _request(ctx, "delegate", {"agent": args["agent"], "task": args["task"]})
    return _ok(f"Handed to {args['agent']}; its answer will come to you as a new message. "
               "End your turn now; do not wait for it.")


@tool("create_agent", "Add a member to this group's team (or replace one): a specialised agent with its own "
      "container and memory that you can delegate to.",
      {"type": "object", "properties": {
          "name": {"type": "string", "description": "lower-case, letters, digits, - and _ (e.g. researcher)"},
          "description": {"type": "string", "description": "what it is for, in one line"},
          "instructions": {"type": "string", "description": "its standing instructions"},
          "model": {"type": "string", "description": "optional: a model name for it"}},
       "required": ["name", "description", "instructions"]})
async def create_agent(ctx: Context, args: dict) -> dict:
    body = {"name": args["name"], "description": args["description"], "instructions": args["instructions"]}
    if args.get("model"):
        body["model"] = args["model"]
    _request(ctx, "create_agent", body)
    return _ok("Request handed to the host; it checks it and confirms in the chat.")


def for_container(ctx: Context) -> list[Tool]:
    if ctx.agent:  # a member: talk, and work with the team; groups, tasks and new members are the lead's
        return [send_message, list_agents, delegate]
    return [send_message, schedule_task, list_tasks, update_task, _task_action("pause"), _task_action("resume"),
            _task_action("cancel"), list_agents, create_agent, delegate] \
        + ([register_group, list_available_groups, raise_budget] if ctx.is_main else [])
