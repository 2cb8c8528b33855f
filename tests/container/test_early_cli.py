"""The claude CLI started early (container/early_cli.py): a new container starts it while the SDK
loads and the SDK adopts it, started exactly as the SDK's own transport would start it. The real
image, against the fake Messages API."""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.podman


def stage_names(queue_log: str) -> list[list[str]]:
    """The stage names of each ``new container's first turn`` line, in the order given."""
    return [[part.partition("+")[0] for part in row.split("first turn:", 1)[1].split()]
            for row in queue_log.splitlines() if "new container's first turn:" in row]


def test_a_new_container_starts_the_cli_while_the_sdk_loads(make_agent_system, fake_api):
    """The CLI is started before claude-agent-sdk is imported and the SDK adopts it: its stage
    comes before the import's, and the runner never had to start another (``cli_restart``).
    The adopted CLI answers, and a resumed session in a new container is adopted too."""
    s = make_agent_system()
    w = s.watch("main")
    s.send("main", "first")
    assert w.reply(120) == "echo: first"
    s.wait_idle()
    s.send("main", "second")  # a new container, resuming the stored session
    assert w.reply(120) == "echo: second"
    lines = stage_names(s.log("queue"))
    assert len(lines) == 2, s.log("queue")[-3000:]
    for names in lines:
        assert "cli_restart" not in names, names
        assert names.index("cli_spawn") < names.index("sdk_imported") < names.index("cli_ready"), names
    assert len(fake_api.requests) >= 2


EARLY_CLI_CHECK = r"""
import asyncio, json, sys
sys.path.insert(0, "/opt/nanoclaw")
import early_cli
import claude_agent_sdk._internal.transport.subprocess_cli as sdk_cli
from context import Context
from session import options

s = early_cli.Settings(cwd="/tmp", env={"ANTHROPIC_BASE_URL": "http://127.0.0.1:1", "X_ONE": "1"},
                       append="be brief", resume="0f9e8d7c-0000-4000-8000-000000000000", model="claude-x",
                       tools=["Read", "Bash"], disallowed=["CronCreate", "RemoteTrigger"])
opts = options(Context.from_env({"NANOCLAW_IS_MAIN": "1"}), s, print)  # the runner's own options for s
seen = {}

async def record(cmd, **kwargs):
    seen.update(cmd=cmd, **kwargs)
    raise RuntimeError("recorded")

sdk_cli.anyio.open_process = record
where = early_cli.sdk_dir()
cli = str(where / "_bundled" / "claude")
transport = sdk_cli.SubprocessCLITransport(prompt="", options=opts)
transport._cli_path = cli
try:
    asyncio.run(transport.connect())
except Exception:
    pass
print(json.dumps({"same_cmd": seen["cmd"] == early_cli.command(s, cli),
                  "same_env": seen["env"] == early_cli.environment(s, early_cli.sdk_version(where)),
                  "same_cwd": seen["cwd"] == s.cwd,
                  "diff": sorted(set(seen["env"].items()) ^ set(early_cli.environment(s, early_cli.sdk_version(where)).items())),
                  "cmd": seen["cmd"][1:]}))
"""


def test_the_early_cli_is_started_exactly_as_the_sdk_would_start_it(real_agent_image, container_options):
    """The command, environment and directory the runner starts the CLI with before the SDK is
    loaded are the ones the SDK's own transport would use for the runner's options made from
    the same settings (``session.options``; recorded where the SDK would start the process),
    with every option the runner sets in use."""
    from nanoclaw.admin.hostcheck import runtime_args
    opts = runtime_args(container_options["runtime"], tuple(container_options["ulimits"]), ())
    out = subprocess.run(["podman", "run", "--rm", "--network", "none", *opts,
                          "--entrypoint", "/opt/venv/bin/python", real_agent_image, "-c",
                          EARLY_CLI_CHECK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["same_cmd"], found["cmd"]
    assert found["same_env"], found["diff"]
    assert found["same_cwd"]
    for flag in ("--resume=0f9e8d7c-0000-4000-8000-000000000000", "--model", "--tools", "--disallowedTools",
                 "--append-system-prompt", "--mcp-config", "--setting-sources=project"):
        assert any(part.startswith(flag) for part in found["cmd"]), flag
