"""The agent runner: the one process inside a group's container.

It takes prompts from ``/workspace/ipc/in`` (read-only here: the first from
the runner, later ones are follow-ups the queue drops in while this container
lives; it remembers which it has answered), runs each
as one turn of a warm Claude session (claude-agent-sdk driving its bundled
``claude`` CLI), and writes each turn's explicit ``result`` to
``/workspace/ipc/out``. A follow-up that arrives mid-turn waits in ``in/new``
until the turn ends, so no reply is cut short. It exits on a ``close`` file or
after ``NANOCLAW_IDLE_TIMEOUT`` seconds without work.

The container has no network. The CLI's ``ANTHROPIC_BASE_URL`` points at a
tiny forwarder here on 127.0.0.1 that relays to the host's credential proxy
through the Unix socket mounted at ``/run/nanoclaw-proxy/api.sock``; the real
credential is added on the host and never enters this container. A second
forwarder relays ``HTTP_PROXY``/``HTTPS_PROXY`` to ``web.sock`` beside it: the
host's egress proxy, which applies the group's policy (CONNECT keeps TLS end
to end). Both forwarders only move bytes; all HTTP is parsed on the host.

Tools the agent gets (an in-process MCP server) only *ask*: each writes a
request to ``out/`` and the host's ipc daemon decides whether it is allowed.

In a team, ``NANOCLAW_AGENT`` names the member this container runs (empty for
the group's lead). A member reads its instructions from its file in
``/workspace/group/agents/`` (mounted read-only: the host writes it), gets
the team tools (``list_agents``, ``delegate``) and ``send_message``, and
speaks in the chat under its own name; only the lead may ``create_agent``.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any


sys.path.insert(0, "/opt/nanoclaw")
from protocol import BadMessage, Spool, process_started  # noqa: E402

# Where a new container's first answer spends its time; sent once, with the first turn's usage.
STAGES: dict[str, float] = {"process": process_started() or 0.0, "python": time.time()}

import early_cli  # noqa: E402
from inotify_simple import INotify, flags  # noqa: E402


WORKSPACE = Path("/workspace")
IPC = WORKSPACE / "ipc"
PROXY_SOCKET = Path("/run/nanoclaw-proxy/api.sock")
WEB_SOCKET = Path("/run/nanoclaw-proxy/web.sock")
# This container's own loopback stays its own (the API forwarder, servers the agent starts);
# every other address, private ones included, goes to the host's proxy, which decides.
NO_PROXY = "localhost,127.0.0.1,::1"
JOB = int(os.environ.get("NANOCLAW_JOB", "0"))
GROUP = os.environ.get("NANOCLAW_GROUP", "")
IS_MAIN = os.environ.get("NANOCLAW_IS_MAIN") == "1"
IDLE_TIMEOUT = float(os.environ.get("NANOCLAW_IDLE_TIMEOUT", "600"))
MODEL = os.environ.get("NANOCLAW_MODEL", "")
AGENT = os.environ.get("NANOCLAW_AGENT", "")  # "" = the group's lead
TEAM_DIR = WORKSPACE / "group" / "agents"

inbox = Spool(IPC / "in")  # read-only: the host writes it, we only read
outbox = Spool(IPC / "out")  # ours: out/tmp and out/new
stderr_tail: deque[str] = deque(maxlen=40)


def log(msg: str) -> None:
    print(f"agent-runner: {msg}", file=sys.stderr, flush=True)


async def report(body: dict) -> None:
    """Write a turn's result, however long the disk refuses it (full, read-only): an answer
    already paid for is kept, not lost with this container. The host's time limit on the
    container bounds the wait; the write waits in a thread, so the CLI's pipes are still read."""
    said: list[str] = []

    def refused(exc: OSError) -> None:
        if not said:
            said.append(str(exc))
            log(f"the result of turn {body['turn']} cannot be written ({exc}); trying again until it is")

    await asyncio.to_thread(outbox.put_until_written, "result", body, on_refused=refused)
    if said:
        log(f"the result of turn {body['turn']} is written")


# -- the forwarders to the host's proxy sockets ----------------------------------------

async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def _forward(sock: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        ureader, uwriter = await asyncio.open_unix_connection(str(sock))
    except OSError as exc:
        log(f"host proxy unreachable at {sock}: {exc}")
        writer.close()
        return
    await asyncio.gather(_pipe(reader, uwriter), _pipe(ureader, writer))


async def start_forwarder(sock: Path = PROXY_SOCKET) -> str:
    """Relay a new port on 127.0.0.1 to one of the host's proxy sockets; returns its URL."""
    server = await asyncio.start_server(lambda r, w: _forward(sock, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


# -- the team ---------------------------------------------------------------------

def read_member(path: Path) -> dict[str, str]:
    """A member file's front matter (description, model, tools) and its instructions ("body")."""
    text = path.read_text()
    front: dict[str, str] = {}
    if text.startswith("---\n"):
        head, _, text = text[4:].partition("\n---")
        for line in head.splitlines():
            key, colon, value = line.partition(":")
            if colon:
                front[key.strip()] = value.strip()
    return {**front, "body": text.lstrip("-").strip()}


def team() -> dict[str, dict[str, str]]:
    members = {}
    for path in sorted(TEAM_DIR.glob("*.md")):
        try:
            members[path.stem] = read_member(path)
        except (OSError, UnicodeDecodeError):
            continue
    return members


def display(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").title()


# -- the agent --------------------------------------------------------------------

def member_prompt(me: dict[str, str]) -> str:
    return (f"You are {display(AGENT)} ({AGENT}), a member of the team of the group '{GROUP}': "
            f"{me.get('description', '')}. The group's lead agent and other members hand you tasks; "
            "they arrive wrapped in <messages>, from=\"agent:...\" naming who asked. People in the chat "
            f"may also address you directly as @{display(AGENT)}. Your final answer goes to the chat "
            f"under your name and back to whoever asked. /workspace/group is the team's shared "
            "folder.\n\nYour instructions:\n" + me.get("body", ""))


def system_append() -> str:
    if AGENT:
        try:
            me = read_member(TEAM_DIR / f"{AGENT}.md")
        except OSError:
            me = {}
        return member_prompt(me)
    parts = [f"You are running inside nanoclaw as the agent of the group '{GROUP}'"
             f"{' (the owner’s main admin channel)' if IS_MAIN else ''}. Your working directory "
             "/workspace/group is this group's folder and persists; /workspace/global holds shared "
             "memory. Messages arrive wrapped in <messages>; your final answer is sent to the chat. "
             "Put anything not meant for the chat inside <internal>…</internal>; an answer that is only "
             "such notes sends nothing, so when there is nothing worth saying (a scheduled check that "
             "found nothing new), stay silent that way. Files people send "
             "(photos, documents, voice notes) are saved in /workspace/group/inbox/ and named in their "
             "message as <attachment …/>: open images and PDFs with the Read tool to see them; a voice "
             "note is not transcribed, so say you cannot hear it rather than guess."]
    mounts = [m.split(":", 1) for m in os.environ.get("NANOCLAW_MOUNTS", "").split(",") if ":" in m]
    if mounts:
        parts.append("The owner has given you these folders of theirs: " + "; ".join(
            f"/workspace/extra/{name} ({'read-write' if mode == 'rw' else 'read-only'})" for name, mode in mounts)
            + ". Work on them as the owner asks; they are the owner's own files.")
    global_md = WORKSPACE / "global" / "CLAUDE.md"
    try:
        parts.append("Shared memory (/workspace/global/CLAUDE.md):\n" + global_md.read_text()[:20000])
    except OSError:
        pass
    return "\n\n".join(parts)


def proxy_env(web_proxy: str) -> dict[str, str]:
    """The web through the host: every tool (WebFetch, curl, pip, git, Python) reads one of
    these spellings; NO_PROXY keeps the API forwarder and the container's loopback direct."""
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = env[name.lower()] = web_proxy
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    return env


def settings(base_url: str, web_proxy: str, resume: str | None) -> early_cli.Settings:
    """What the CLI is told, as plain data: the early start and the SDK's options share it."""
    home = Path(os.environ.get("HOME", "/tmp/home"))
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        # The real credential is added by the host's proxy; the CLI needs some value to start.
        "ANTHROPIC_API_KEY": "placeholder-the-host-proxy-adds-the-real-credential",
        "CLAUDE_CONFIG_DIR": str(WORKSPACE / "session"),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "ENABLE_TOOL_SEARCH": "false",  # few tools: give them to the model directly
        "XDG_CACHE_HOME": "/tmp/cache",
        "CLAUDE_CODE_TMPDIR": "/tmp",
        **proxy_env(web_proxy),
    }
    if os.geteuid() == 0:
        env["IS_SANDBOX"] = "1"  # a misconfigured root container is still a sandbox
    tools = None
    if AGENT:  # a member limited to some tools gets those built-ins only (its nanoclaw tools always)
        try:
            named = read_member(TEAM_DIR / f"{AGENT}.md").get("tools", "").strip("[]")
        except OSError:
            named = ""
        if named.strip():
            tools = [t.strip() for t in named.split(",") if t.strip()]
    return early_cli.Settings(
        cwd=str(WORKSPACE / "group"), env=env, append=system_append(), resume=resume, model=MODEL or None,
        tools=tools, disallowed=["CronCreate", "CronDelete", "CronList", "ScheduleWakeup", "EnterWorktree",
                                 "ExitWorktree", "RemoteTrigger"])


async def start_cli_early(base_url: str, web_proxy: str) -> early_cli.EarlyCLI | None:
    """Start the CLI for the first prompt waiting in in/ (its session), before the SDK is
    imported; None if no prompt waits or the CLI cannot be started this way."""
    for path in inbox.unseen(set()):
        try:
            env = inbox.read(path)
        except BadMessage:
            continue
        if env.type != "prompt":
            return None
        try:
            return await early_cli.start(settings(base_url, web_proxy, env.body.get("session_id")))
        except Exception as exc:  # the SDK starts it later, as it always could
            log(f"could not start the CLI early: {exc}")
            return None
    return None


# -- the start: the forwarders and the CLI first, the SDK while the CLI starts -----------
# Nothing here waits for the CLI: it starts on the other core while Python imports the SDK
# (see early_cli.py). The event loop is made now so the CLI's pipes belong to it.
LOOP = asyncio.new_event_loop()
asyncio.set_event_loop(LOOP)
API_URL = LOOP.run_until_complete(start_forwarder(PROXY_SOCKET))
WEB_URL = LOOP.run_until_complete(start_forwarder(WEB_SOCKET))
EARLY = LOOP.run_until_complete(start_cli_early(API_URL, WEB_URL))
STAGES["cli_spawn"] = time.time()

from claude_agent_sdk import (  # noqa: E402
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultMessage,
    TextBlock,
    create_sdk_mcp_server,
    tool,
)

STAGES["sdk_imported"] = time.time()

# -- tools: requests to the host ----------------------------------------------------

def _ok(text: str) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}]}


def _request(kind: str, body: dict) -> None:
    outbox.put(kind, {"job": JOB, **body})


@tool("send_message", "Send a message to the chat right away (for progress or several messages). "
      "Your final answer is sent anyway; do not repeat it here.",
      {"type": "object", "properties": {
          "text": {"type": "string"},
          "target_group": {"type": "string", "description": "main group only: another group's folder"}},
       "required": ["text"]})
async def send_message(args: dict) -> dict:
    body = {"text": args["text"]}
    if args.get("target_group"):
        body["chat"] = args["target_group"]
    _request("send_message", body)
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
async def schedule_task(args: dict) -> dict:
    task = {"prompt": args["prompt"], "schedule_type": args["schedule_type"],
            "schedule_value": args["schedule_value"], "context_mode": args.get("context_mode") or "group",
            "target_group": args.get("target_group") or "", "precheck": args.get("precheck") or ""}
    if "model" in args:  # the host checks it (an exact name, one the owner allows)
        task["model"] = args["model"]
    _request("task_request", {"action": "schedule", "task": task})
    return _ok("Task request handed to the host; it validates the schedule and confirms in the chat.")


@tool("list_tasks", "List the scheduled tasks this group may see.", {"type": "object", "properties": {}})
async def list_tasks(args: dict) -> dict:
    snapshot = IPC / "in" / "tasks.json"
    try:
        tasks = json.loads(snapshot.read_text())
    except (OSError, ValueError):
        return _ok("No scheduled tasks are known.")
    return _ok(json.dumps(tasks, indent=1) if tasks else "No scheduled tasks.")


def _task_action(action: str) -> Any:
    @tool(f"{action}_task", f"{action.capitalize()} a scheduled task by id.",
          {"type": "object", "properties": {"task_id": {"type": "integer"}}, "required": ["task_id"]})
    async def handler(args: dict) -> dict:
        _request("task_request", {"action": action, "task": {"id": int(args["task_id"])}})
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
async def update_task(args: dict) -> dict:
    change = {k: args[k] for k in ("prompt", "schedule_type", "schedule_value") if args.get(k)}
    if isinstance(args.get("precheck"), str):
        change["precheck"] = args["precheck"]
    if "model" in args:
        change["model"] = args["model"]
    _request("task_request", {"action": "update", "task": {"id": int(args["task_id"]), **change}})
    return _ok(f"Request to change task {args['task_id']} handed to the host; it confirms in the chat.")


@tool("list_available_groups", "Main group only: the chats the assistant can see (WhatsApp groups it is in "
      "and registered groups), with names, ids and whether they are registered, to use with register_group.",
      {"type": "object", "properties": {}})
async def list_available_groups(args: dict) -> dict:
    try:
        chats = json.loads((IPC / "in" / "available_groups.json").read_text())
    except (OSError, ValueError):
        return _ok("The host has not listed any chats yet.")
    return _ok(json.dumps(chats, indent=1) if chats else "No chats are known.")


@tool("register_group", "Main group only: register a chat as a new group with its own agent.",
      {"type": "object", "properties": {
          "jid": {"type": "string"}, "name": {"type": "string"},
          "folder": {"type": "string", "description": "letters, digits, _ and -"},
          "trigger": {"type": "string", "description": "e.g. @Andy"}},
       "required": ["jid", "name", "folder"]})
async def register_group(args: dict) -> dict:
    _request("register_group", {"jid": args["jid"], "name": args["name"], "folder": args["folder"],
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
async def raise_budget(args: dict) -> dict:
    _request("raise_budget", {"group": args["group"], "period": args["period"], "amount": args["amount"],
                              "unit": args.get("unit") or "usd", "mode": args.get("mode") or "set"})
    return _ok("Budget change asked; the owner approves or denies it in this chat.")


@tool("list_agents", "List the members of this group's team: their names and what each is for.",
      {"type": "object", "properties": {}})
async def list_agents(args: dict) -> dict:
    members = {n: m for n, m in team().items() if n != AGENT}
    if not members:
        return _ok("This group has no team members" + ("." if AGENT else " yet; create_agent makes one."))
    return _ok("\n".join(f"- {name} ({display(name)}): {m.get('description', '')}" for name, m in members.items()))


@tool("delegate", "Hand a task to a member of the team (see list_agents). It works in its own container and "
      "its answer comes back to you later as a new message from it: end your turn now rather than wait. "
      "Say in the task everything the member needs; it does not see this conversation.",
      {"type": "object", "properties": {
          "agent": {"type": "string", "description": "the member's name"},
          "task": {"type": "string", "description": "what to do, with all the context needed"}},
       "required": ["agent", "task"]})
async def delegate(args: dict) -> dict:
    _request("delegate", {"agent": args["agent"], "task": args["task"]})
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
async def create_agent(args: dict) -> dict:
    body = {"name": args["name"], "description": args["description"], "instructions": args["instructions"]}
    if args.get("model"):
        body["model"] = args["model"]
    _request("create_agent", body)
    return _ok("Request handed to the host; it checks it and confirms in the chat.")


if AGENT:  # a member: talk, and work with the team; groups, tasks and new members are the lead's
    TOOLS = [send_message, list_agents, delegate]
else:
    TOOLS = [send_message, schedule_task, list_tasks, update_task, _task_action("pause"), _task_action("resume"),
             _task_action("cancel"), list_agents, create_agent, delegate] \
        + ([register_group, list_available_groups, raise_budget] if IS_MAIN else [])


def options(s: early_cli.Settings) -> ClaudeAgentOptions:
    """The SDK's options for ``s`` (the early CLI was started with the same values)."""
    return ClaudeAgentOptions(
        cwd=s.cwd,
        env=s.env,
        resume=s.resume,
        model=s.model,
        tools=s.tools,
        setting_sources=s.setting_sources,  # "project": the group's CLAUDE.md
        system_prompt={"type": "preset", "preset": "claude_code", "append": s.append},
        mcp_servers={s.mcp_server: create_sdk_mcp_server(s.mcp_server, tools=TOOLS)},
        permission_mode=s.permission_mode,
        disallowed_tools=s.disallowed,
        stderr=lambda line: stderr_tail.append(line),
    )


# How the CLI says a --resume id is no good (unknown, not a UUID, its transcript gone).
RESUME_FAILED = re.compile(r"--resume|no conversation found|session id", re.IGNORECASE)


class Agent:
    """A warm Claude session: connect once, then one ``turn`` per prompt."""

    def __init__(self, base_url: str, web_proxy: str, early: early_cli.EarlyCLI | None = None) -> None:
        self.base_url = base_url
        self.web_proxy = web_proxy
        self.early = early  # the CLI started before the SDK was imported, if any
        self.client: ClaudeSDKClient | None = None
        self.session_id: str | None = None

    async def _connect(self, resume: str | None) -> None:
        STAGES.setdefault("cli_spawn", time.time())
        s = settings(self.base_url, self.web_proxy, resume)
        opts = options(s)
        transport, early, self.early = None, self.early, None
        if early is not None:
            if early.matches(s, opts):
                transport = early.transport(stderr_tail.append)
            else:  # another session, or a command the SDK would not run: never a different answer
                log("the CLI started early does not match what the SDK would run; starting the SDK's own")
                await early.stop()
                STAGES.setdefault("cli_restart", time.time())
        self.client = ClaudeSDKClient(opts, transport=transport)
        await self.client.connect()  # the CLI started (or adopted), initialized, our MCP server listed
        STAGES.setdefault("cli_ready", time.time())

    async def turn(self, prompt: str, resume: str | None) -> dict:
        """Answer one prompt. A session that cannot be resumed (its files lost, an id the
        CLI does not know) must not fail the group for good: start a new one instead."""
        resuming = resume if self.client is None else None
        try:
            out, failure = await self._turn(prompt, resuming), None
        except Exception as exc:
            out, failure = None, exc
        failure = failure or (out or {}).get("error")
        if failure and resuming and RESUME_FAILED.search(str(failure)):
            log(f"cannot resume session {resuming} ({str(failure)[:200]}); starting a new session")
            await self.close()
            self.client = None
            return await self._turn(prompt, None)
        if out is None:
            raise failure  # type: ignore[misc]
        return out

    async def _turn(self, prompt: str, resume: str | None) -> dict:
        if self.client is None:
            await self._connect(resume)
        assert self.client is not None
        started = time.monotonic()
        STAGES.setdefault("query", time.time())
        await self.client.query(prompt)
        texts: list[str] = []
        result: ResultMessage | None = None
        async for message in self.client.receive_response():
            if isinstance(message, AssistantMessage):
                STAGES.setdefault("first_answer", time.time())
                texts = [b.text for b in message.content if isinstance(b, TextBlock)] or texts
            elif isinstance(message, ResultMessage):
                result = message
        if result is None:
            raise RuntimeError("the agent ended the turn without a result")
        self.session_id = result.session_id or self.session_id
        usage = {"cost_usd": result.total_cost_usd, "num_turns": result.num_turns,
                 "duration_s": round(time.monotonic() - started, 3), "usage": result.usage}
        if "result" not in STAGES:  # a new container's first turn: where its time went
            STAGES["result"] = time.time()
            usage["stages"] = dict(STAGES)
        text = result.result if isinstance(result.result, str) else "\n".join(texts)
        error = None
        if result.is_error:
            error = f"agent error ({result.subtype}): {(text or '')[:500]}"
            text = ""
        return {"text": text or "", "session_id": self.session_id, "usage": usage, "error": error}

    async def close(self) -> None:
        if self.early is not None:  # started, never used (the container was closed first)
            await self.early.stop()
            self.early = None
        if self.client is not None:
            await self.client.disconnect()


async def main() -> int:
    agent = Agent(API_URL, WEB_URL, EARLY)
    notify = INotify()
    notify.add_watch(str(inbox.new), flags.MOVED_TO | flags.CLOSE_WRITE)
    woke = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(notify.fd, lambda: (notify.read(timeout=0), woke.set()))
    last_work = time.monotonic()
    seen: set[str] = set()  # in/ is read-only: what we have handled is remembered here
    log(f"group={GROUP}{' agent=' + AGENT if AGENT else ''} job={JOB} ready; idle timeout {IDLE_TIMEOUT:.0f}s")
    try:
        while True:
            woke.clear()
            for path in inbox.unseen(seen):
                seen.add(path.name)
                try:
                    env = inbox.read(path)
                except BadMessage as exc:
                    log(f"ignoring {path.name}: {exc}")
                    continue
                if env.type == "close":
                    log("asked to close")
                    return 0
                if env.type != "prompt":
                    log(f"ignoring {path.name}: unexpected type {env.type!r}")
                    continue
                b = env.body
                try:
                    out = await agent.turn(b["prompt"], b.get("session_id"))
                except Exception as exc:  # the CLI died or the API failed: report, then let a fresh container retry
                    detail = " | ".join(list(stderr_tail)[-5:])
                    await report({"job": b["job"], "turn": b["turn"], "text": "",
                                  "error": f"{type(exc).__name__}: {exc} {detail}"[:2000]})
                    log(f"turn {b['turn']} failed: {exc}")
                    return 1
                await report({"job": b["job"], "turn": b["turn"], **out})
                log(f"turn {b['turn']} answered in {out['usage']['duration_s']}s")
                last_work = time.monotonic()
            remaining = IDLE_TIMEOUT - (time.monotonic() - last_work)
            if remaining <= 0:
                log("idle; exiting")
                return 0
            try:
                await asyncio.wait_for(woke.wait(), min(remaining, 5.0))
            except asyncio.TimeoutError:
                pass
    finally:
        await agent.close()


def run() -> int:
    """``main()`` on the loop the start made, then that loop's tasks ended as asyncio.run would."""
    try:
        return LOOP.run_until_complete(main())
    finally:
        pending = asyncio.all_tasks(LOOP)
        for task in pending:
            task.cancel()
        LOOP.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        LOOP.run_until_complete(LOOP.shutdown_asyncgens())
        LOOP.close()


if __name__ == "__main__":
    sys.exit(run())
