"""The claude CLI, started while claude-agent-sdk is still being imported.

A new container's first answer used to wait for two slow things in a row:
importing the SDK (about 450 ms here, most of it the ``mcp`` package's pydantic
models) and then the CLI's own start (about 300 ms before it answers
``initialize``). They need not wait for each other: the CLI is a separate
program whose command line is known before the SDK is loaded. So the runner
starts it first (:func:`start`), imports the SDK meanwhile, and hands the
running process to the SDK as its transport (:meth:`EarlyCLI.transport`, the
SDK's public ``Transport`` interface).

The command must be exactly the one the SDK would run for the same options.
:func:`command` builds it for the options the runner uses (:class:`Settings`),
and :meth:`EarlyCLI.matches` compares it with the SDK's own once the SDK is
loaded. If they differ (a newer SDK, an option set on one side only) the early
process is stopped and the SDK starts its own, as before: a slower first
answer, never a different one. The environment follows the SDK's recipe
(:func:`environment`); ``tests/container/test_early_cli.py`` checks both against the SDK.

READS / WRITES
    The SDK's package directory (its version and bundled CLI); the CLI's
    pipes once started. No files.

HOSTILE INPUT
    The CLI's output, as in ``session.py``: each line bounded
    (``MAX_MESSAGE``); a JSON object is passed on to the SDK, anything else
    skipped.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from importlib.util import find_spec
from pathlib import Path
from typing import Any

MAX_MESSAGE = 1024 * 1024  # the SDK's own bound on one message from the CLI
STOP_WAIT = 5.0  # seconds the CLI gets to exit on closed input, then on SIGTERM


@dataclass
class Settings:
    """What the runner tells the CLI: plain data, so it is known before the SDK is loaded.
    ``session.options()`` turns the same values into the SDK's options."""
    cwd: str
    env: dict[str, str]
    append: str  # appended to the claude_code system prompt
    resume: str | None = None
    model: str | None = None
    tools: list[str] | None = None  # built-in tools allowed; None: all
    disallowed: list[str] = field(default_factory=list)
    setting_sources: list[str] = field(default_factory=lambda: ["project"])
    permission_mode: str = "bypassPermissions"
    mcp_server: str = "nanoclaw"  # the runner's in-process MCP server


def sdk_dir() -> Path | None:
    """The installed SDK's directory, found without importing it."""
    spec = find_spec("claude_agent_sdk")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def command(s: Settings, cli: str) -> list[str]:
    """The CLI's command line, flag for flag in the order the SDK builds it."""
    cmd = [cli, "--output-format", "stream-json", "--verbose", "--append-system-prompt", s.append]
    if s.tools is not None:
        cmd += ["--tools", ",".join(s.tools)]
    if s.disallowed:
        cmd += ["--disallowedTools", ",".join(s.disallowed)]
    if s.model:
        cmd += ["--model", s.model]
    cmd += ["--permission-mode", s.permission_mode]
    if s.resume:
        cmd.append(f"--resume={s.resume}")
    cmd += ["--mcp-config", json.dumps({"mcpServers": {s.mcp_server: {"type": "sdk", "name": s.mcp_server}}})]
    cmd.append(f"--setting-sources={','.join(s.setting_sources)}")
    cmd += ["--input-format", "stream-json"]
    return cmd


def environment(s: Settings, sdk_version: str) -> dict[str, str]:
    """The CLI's environment, as the SDK's subprocess transport makes it."""
    env = {k: v for k, v in os.environ.items() if k != "CLAUDECODE"}
    env["CLAUDE_CODE_ENTRYPOINT"] = "sdk-py"
    env.update(s.env)
    env["CLAUDE_AGENT_SDK_VERSION"] = sdk_version
    env.pop("CLAUDE_AGENT_SDK_DERIVED_CLIENT_APP", None)  # the runner is a script: no app to name
    if not any(k.upper() == "CLAUDE_CODE_SDK_READS_SESSION_STATE" for k in env):
        env["CLAUDE_CODE_SDK_READS_SESSION_STATE"] = "1"
    env["PWD"] = s.cwd
    return env


def sdk_version(where: Path) -> str:
    """The SDK's version from its ``_version.py``, read rather than imported."""
    found = re.search(r'__version__\s*=\s*"([^"]+)"', (where / "_version.py").read_text())
    if not found:
        raise ValueError("no __version__ in the SDK's _version.py")
    return found.group(1)


async def start(s: Settings) -> EarlyCLI | None:
    """Start the bundled CLI for ``s``; None where there is no bundled CLI to start (the SDK
    then finds and starts one itself)."""
    where = sdk_dir()
    if where is None or not os.access(where / "_bundled" / "claude", os.X_OK):
        return None
    cmd = command(s, str(where / "_bundled" / "claude"))
    proc = await asyncio.create_subprocess_exec(
        *cmd, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        cwd=s.cwd, env=environment(s, sdk_version(where)), limit=MAX_MESSAGE)
    return EarlyCLI(s, cmd, proc)


class EarlyCLI:
    """A CLI process started before the SDK; adopted by the first client, or stopped."""

    def __init__(self, settings: Settings, cmd: list[str], proc: asyncio.subprocess.Process) -> None:
        self.settings = settings
        self.cmd = cmd
        self.proc = proc

    def matches(self, settings: Settings, options: Any) -> bool:
        """Whether the SDK, given ``options`` (made from ``settings``), would run exactly this
        command. The SDK's command comes from its subprocess transport (not a public
        interface: if that changes, the answer is no and the SDK starts its own CLI)."""
        if settings != self.settings:
            return False
        try:
            from claude_agent_sdk._internal.transport.subprocess_cli import SubprocessCLITransport
            theirs = SubprocessCLITransport(prompt="", options=options)
            theirs._cli_path = self.cmd[0]
            return theirs._build_command() == self.cmd
        except Exception:
            return False

    async def stop(self) -> None:
        """Stop it unused (its command was not the SDK's, or the container is closing)."""
        await _stop(self.proc)

    def transport(self, on_stderr: Callable[[str], None]) -> Any:
        """The running process as the SDK's ``Transport`` (imported here: by now the SDK is)."""
        from claude_agent_sdk import Transport

        proc = self.proc
        tail: deque[str] = deque(maxlen=5)

        def stderr_line(line: str) -> None:
            tail.append(line)
            on_stderr(line)

        class Adopted(Transport):
            def __init__(self) -> None:
                self._lock = asyncio.Lock()
                self._closed = False
                self._stderr = asyncio.ensure_future(_lines(proc.stderr, stderr_line))

            async def connect(self) -> None:
                if proc.returncode is not None:
                    raise RuntimeError(f"the claude CLI exited (code {proc.returncode}) before it was used")

            async def write(self, data: str) -> None:
                async with self._lock:
                    if self._closed or proc.returncode is not None or proc.stdin is None:
                        raise RuntimeError(f"the claude CLI is not running (exit code {proc.returncode})")
                    proc.stdin.write(data.encode())
                    await proc.stdin.drain()

            def read_messages(self) -> AsyncIterator[dict[str, Any]]:
                return _messages(proc, tail)

            async def close(self) -> None:
                self._closed = True
                await _stop(proc)
                self._stderr.cancel()

            def is_ready(self) -> bool:
                return not self._closed and proc.returncode is None

            async def end_input(self) -> None:
                async with self._lock:
                    if proc.stdin is not None and not proc.stdin.is_closing():
                        proc.stdin.close()

        return Adopted()


async def _messages(proc: asyncio.subprocess.Process, tail: deque[str]) -> AsyncIterator[dict[str, Any]]:
    """The CLI's stdout, one JSON message per line. Lines that are not JSON objects (some
    CLI builds print debug lines there) are skipped; a message over MAX_MESSAGE is an error,
    as in the SDK. At the end, an exit code other than 0 is an error that says so, with the
    last lines the CLI wrote to stderr."""
    assert proc.stdout is not None
    while True:
        try:
            line = await proc.stdout.readline()
        except (ValueError, asyncio.LimitOverrunError) as exc:
            raise RuntimeError(f"a message from the claude CLI exceeded {MAX_MESSAGE} bytes") from exc
        if not line:
            break
        text = line.decode(errors="replace").strip()
        if text.startswith("{"):
            yield json.loads(text)
    code = await proc.wait()
    if code != 0:
        raise RuntimeError(f"the claude CLI exited with code {code}: {' | '.join(tail)}")


async def _lines(stream: asyncio.StreamReader | None, sink: Callable[[str], None]) -> None:
    if stream is None:
        return
    while line := await stream.readline():
        text = line.decode(errors="replace").rstrip()
        if text:
            sink(text)


async def _stop(proc: asyncio.subprocess.Process) -> None:
    """Closed input first (the CLI's own way out), then SIGTERM, then SIGKILL; each bounded."""
    if proc.stdin is not None and not proc.stdin.is_closing():
        proc.stdin.close()
    for signal in (None, proc.terminate, proc.kill):
        if proc.returncode is not None:
            return
        if signal is not None:
            try:
                signal()
            except ProcessLookupError:
                return
        try:
            await asyncio.wait_for(proc.wait(), STOP_WAIT)
            return
        except asyncio.TimeoutError:
            continue
