"""A warm Claude session: claude-agent-sdk driving the claude CLI, one turn per prompt.

SYNOPSIS
    Session(ctx, base_url, web_proxy, early, stages)
    await session.turn(prompt, resume, progress) -> {text, session_id, usage, error}
    await session.close()
    options(ctx, settings, on_stderr) -> ClaudeAgentOptions

DESCRIPTION
    Importing this module imports the SDK (most of a new container's start):
    the runner imports it only once the CLI has been started early
    (``early_cli.py``), and the first connect adopts that CLI if the SDK would
    have run exactly the same command. The first turn resumes the group's
    session; if the CLI cannot resume it (its files lost, an id it does not
    know) the turn is answered in a new session rather than failing the group
    for good. ``progress(state, tool, input)`` hears what the turn is doing (it
    began, a tool began, a tool ended): the runner reports it to the host.
    ``stages`` collects the clock readings of a new container's first turn; they
    go back with its usage.

READS / WRITES
    The CLI's stdout (the SDK's messages) and stderr (kept, its last lines,
    for a failed turn's error); its prompts on the CLI's stdin. The CLI keeps
    the session in ``/workspace/session`` itself.

HOSTILE INPUT
    The model's answer and the CLI's output: passed back as text in the
    turn's result, which the host checks and bounds.
"""

from __future__ import annotations

import functools
import re
import time
from collections import deque
from collections.abc import Callable

from claude_agent_sdk import (
    AssistantMessage,
    ClaudeAgentOptions,
    ClaudeSDKClient,
    ResultMessage,
    TextBlock,
    ToolResultBlock,
    ToolUseBlock,
    UserMessage,
    create_sdk_mcp_server,
    tool,
)

import early_cli
import tools
from context import Context, log
from settings import settings

Progress = Callable[..., None] | None  # (state, tool="", input=None)

# How the CLI says a --resume id is no good (unknown, not a UUID, its transcript gone).
RESUME_FAILED = re.compile(r"--resume|no conversation found|session id", re.IGNORECASE)


def options(ctx: Context, s: early_cli.Settings, on_stderr) -> ClaudeAgentOptions:
    """The SDK's options for ``s`` (the early CLI was started with the same values)."""
    mcp_tools = [tool(t.name, t.description, t.schema)(functools.partial(t.handler, ctx))
                 for t in tools.for_container(ctx)]
    return ClaudeAgentOptions(
        cwd=s.cwd,
        env=s.env,
        resume=s.resume,
        model=s.model,
        tools=s.tools,
        setting_sources=s.setting_sources,  # "project": the group's CLAUDE.md
        system_prompt={"type": "preset", "preset": "claude_code", "append": s.append},
        mcp_servers={s.mcp_server: create_sdk_mcp_server(s.mcp_server, tools=mcp_tools)},
        permission_mode=s.permission_mode,
        disallowed_tools=s.disallowed,
        stderr=on_stderr,
    )


class Session:
    """Connect once, then one ``turn`` per prompt."""

    def __init__(self, ctx: Context, base_url: str, web_proxy: str, early: early_cli.EarlyCLI | None,
                 stages: dict[str, float]) -> None:
        self.ctx = ctx
        self.base_url = base_url
        self.web_proxy = web_proxy
        self.early = early  # the CLI started before the SDK was imported, if any
        self.stages = stages
        self.stderr_tail: deque[str] = deque(maxlen=40)  # the CLI's last words, for a failed turn's error
        self.client: ClaudeSDKClient | None = None
        self.session_id: str | None = None

    async def _connect(self, resume: str | None) -> None:
        self.stages.setdefault("cli_spawn", time.time())
        s = settings(self.ctx, self.base_url, self.web_proxy, resume)
        opts = options(self.ctx, s, self.stderr_tail.append)
        transport, early, self.early = None, self.early, None
        if early is not None:
            if early.matches(s, opts):
                transport = early.transport(self.stderr_tail.append)
            else:  # another session, or a command the SDK would not run: never a different answer
                log("the CLI started early does not match what the SDK would run; starting the SDK's own")
                await early.stop()
                self.stages.setdefault("cli_restart", time.time())
        self.client = ClaudeSDKClient(opts, transport=transport)
        await self.client.connect()  # the CLI started (or adopted), initialized, our MCP server listed
        self.stages.setdefault("cli_ready", time.time())

    async def turn(self, prompt: str, resume: str | None, progress: Progress = None) -> dict:
        """Answer one prompt. A session that cannot be resumed (its files lost, an id the
        CLI does not know) must not fail the group for good: start a new one instead."""
        resuming = resume if self.client is None else None
        try:
            out, failure = await self._turn(prompt, resuming, progress), None
        except Exception as exc:
            out, failure = None, exc
        failure = failure or (out or {}).get("error")
        if failure and resuming and RESUME_FAILED.search(str(failure)):
            log(f"cannot resume session {resuming} ({str(failure)[:200]}); starting a new session")
            await self.close()
            self.client = None
            return await self._turn(prompt, None, progress)
        if out is None:
            raise failure  # type: ignore[misc]
        return out

    async def _turn(self, prompt: str, resume: str | None, progress: Progress = None) -> dict:
        said = progress or (lambda state, tool="", given=None: None)
        if self.client is None:
            await self._connect(resume)
        assert self.client is not None
        started = time.monotonic()
        self.stages.setdefault("query", time.time())
        await self.client.query(prompt)
        said("working")
        texts: list[str] = []
        result: ResultMessage | None = None
        async for message in self.client.receive_response():
            if isinstance(message, AssistantMessage):
                self.stages.setdefault("first_answer", time.time())
                texts = [b.text for b in message.content if isinstance(b, TextBlock)] or texts
                for block in message.content:
                    if isinstance(block, ToolUseBlock):  # the CLI runs it next
                        said("tool", block.name, block.input)
            elif isinstance(message, UserMessage) and isinstance(message.content, list) \
                    and any(isinstance(b, ToolResultBlock) for b in message.content):
                said("working")  # a tool ended: the model thinks again
            elif isinstance(message, ResultMessage):
                result = message
        if result is None:
            raise RuntimeError("the agent ended the turn without a result")
        self.session_id = result.session_id or self.session_id
        usage = {"cost_usd": result.total_cost_usd, "num_turns": result.num_turns,
                 "duration_s": round(time.monotonic() - started, 3), "usage": result.usage}
        if "result" not in self.stages:  # a new container's first turn: where its time went
            self.stages["result"] = time.time()
            usage["stages"] = dict(self.stages)
        text = result.result if isinstance(result.result, str) else "\n".join(texts)
        error = None
        if result.is_error:
            error = f"agent error ({result.subtype}): {(text or '')[:500]}"
            text = ""
        return {"text": text or "", "session_id": self.session_id, "usage": usage, "error": error}

    async def interrupt(self) -> None:
        """The owner's stop (interrupt.py): the SDK's interrupt ends the running turn."""
        if self.client is not None:
            await self.client.interrupt()

    async def close(self) -> None:
        if self.early is not None:  # started, never used (the container was closed first)
            await self.early.stop()
            self.early = None
        if self.client is not None:
            await self.client.disconnect()
