"""What the claude CLI is told: its environment, system prompt and tools.

SYNOPSIS
    settings(ctx, base_url, web_proxy, resume) -> early_cli.Settings
    system_prompt(ctx) -> str        what is appended to the claude_code preset
    proxy_env(web_proxy) -> dict     the web through the host, in every spelling tools read

DESCRIPTION
    One plain value (:class:`early_cli.Settings`) holds all of it, so the CLI
    can be started before the SDK is imported and the SDK's options are made
    from the same value (``session.options``): the two can be compared, and a
    difference means the early CLI is not used.

READS
    The member's file (``team.me``), ``/workspace/global/CLAUDE.md`` (shared
    memory, bounded) and ``HOME``. WRITES nothing but ``HOME`` made if missing.

HOSTILE INPUT
    None that crosses a boundary: the prompt text built here goes to the
    model, through the host's proxy, which checks every request.
"""

from __future__ import annotations

import os
from pathlib import Path

import early_cli
import team
from context import Context
from member_file import Member, display

# This container's own loopback stays its own (the API forwarder, servers the agent starts);
# every other address, private ones included, goes to the host's proxy, which decides.
NO_PROXY = "localhost,127.0.0.1,::1"
# Built-in tools the agent does not get (scheduled work is nanoclaw's schedule_task, under the host's rules).
DISALLOWED = ["CronCreate", "CronDelete", "CronList", "ScheduleWakeup", "EnterWorktree", "ExitWorktree",
              "RemoteTrigger"]


def settings(ctx: Context, base_url: str, web_proxy: str, resume: str | None) -> early_cli.Settings:
    """What the CLI is told, as plain data: the early start and the SDK's options share it."""
    home = Path(os.environ.get("HOME", "/tmp/home"))
    home.mkdir(parents=True, exist_ok=True)
    env = {
        "ANTHROPIC_BASE_URL": base_url,
        # The real credential is added by the host's proxy; the CLI needs some value to start.
        "ANTHROPIC_API_KEY": "placeholder-the-host-proxy-adds-the-real-credential",
        "CLAUDE_CONFIG_DIR": str(ctx.workspace / "session"),
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
    me = team.me(ctx)
    # A member limited to some tools gets those built-ins only (its nanoclaw tools always).
    tools = list(me.tools) if me is not None and me.tools else None
    return early_cli.Settings(cwd=str(ctx.group_dir), env=env, append=system_prompt(ctx, me), resume=resume,
                              model=ctx.model or None, tools=tools, disallowed=list(DISALLOWED))


def proxy_env(web_proxy: str) -> dict[str, str]:
    """The web through the host: every tool (WebFetch, curl, pip, git, Python) reads one of
    these spellings; NO_PROXY keeps the API forwarder and the container's loopback direct."""
    env = {}
    for name in ("HTTP_PROXY", "HTTPS_PROXY"):
        env[name] = env[name.lower()] = web_proxy
    env["NO_PROXY"] = env["no_proxy"] = NO_PROXY
    return env


def system_prompt(ctx: Context, me: Member | None) -> str:
    """What is appended to the claude_code system prompt: a member's role and instructions,
    or the lead's place in nanoclaw, the owner's folders and the shared memory."""
    if ctx.agent:
        return member_prompt(ctx, me)
    parts = [f"You are running inside nanoclaw as the agent of the group '{ctx.group}'"
             f"{' (the owner’s main admin channel)' if ctx.is_main else ''}. Your working directory "
             "/workspace/group is this group's folder and persists; /workspace/global holds shared "
             "memory. Messages arrive wrapped in <messages>; your final answer is sent to the chat. "
             "Put anything not meant for the chat inside <internal>…</internal>; an answer that is only "
             "such notes sends nothing, so when there is nothing worth saying (a scheduled check that "
             "found nothing new), stay silent that way. Files people send "
             "(photos, documents, voice notes) are saved in /workspace/group/inbox/ and named in their "
             "message as <attachment …/>: open images and PDFs with the Read tool to see them; a voice "
             "note is not transcribed, so say you cannot hear it rather than guess."]
    if ctx.mounts:
        parts.append("The owner has given you these folders of theirs: " + "; ".join(
            f"/workspace/extra/{name} ({'read-write' if mode == 'rw' else 'read-only'})" for name, mode in ctx.mounts)
            + ". Work on them as the owner asks; they are the owner's own files.")
    global_md = ctx.workspace / "global" / "CLAUDE.md"
    try:
        parts.append("Shared memory (/workspace/global/CLAUDE.md):\n" + global_md.read_text()[:20000])
    except OSError:
        pass
    return "\n\n".join(parts)


def member_prompt(ctx: Context, me: Member | None) -> str:
    name = ctx.agent
    return (f"You are {display(name)} ({name}), a member of the team of the group '{ctx.group}': "
            f"{me.description if me else ''}. The group's lead agent and other members hand you tasks; "
            "they arrive wrapped in <messages>, from=\"agent:...\" naming who asked. People in the chat "
            f"may also address you directly as @{display(name)}. Your final answer goes to the chat "
            f"under your name and back to whoever asked. /workspace/group is the team's shared "
            "folder.\n\nYour instructions:\n" + (me.instructions if me else ""))
