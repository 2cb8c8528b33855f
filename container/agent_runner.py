"""The agent runner: the one process inside a group's container.

SUMMARY
    Takes prompts from ``/workspace/ipc/in``, answers each as one turn of a
    warm Claude session and writes each turn's ``result`` to
    ``/workspace/ipc/out``; exits on ``close`` or after
    ``NANOCLAW_IDLE_TIMEOUT`` seconds without work.

DESCRIPTION
    ``in/`` is read-only here: the first prompt comes from the runner, later
    ones are follow-ups the queue drops in while this container lives; what
    has been answered is remembered in memory. A follow-up that arrives
    mid-turn waits in ``in/new`` until the turn ends, so no reply is cut short.

    A new container's first answer waits on two slow things, which overlap
    here: :func:`main` starts the relays to the host's sockets
    (``forwarders.py``) and the claude CLI for the first prompt
    (``early_cli.py``), and only then imports claude-agent-sdk
    (``session.py``), while the CLI starts on the other core.

    The rest, by job: ``context.py`` (who this container runs for, where its
    files are), ``settings.py`` (what the CLI is told), ``tools.py`` (the
    agent's nanoclaw tools, which only ask the host), ``team.py`` (the member
    files, read with the host's own parser ``member_file.py``),
    ``interrupt.py`` (the owner's ``stop`` of the running turn).

    In a team, ``NANOCLAW_AGENT`` names the member this container runs (empty
    for the group's lead). A member reads its instructions from its file in
    ``/workspace/group/agents/`` (mounted read-only: the host writes it), gets
    the team tools (``list_agents``, ``delegate``) and ``send_message``, and
    speaks in the chat under its own name; only the lead may ``create_agent``.

READS
    ``/workspace/ipc/in`` (prompts, ``stop`` and ``close``, written by the
    host's queue and runner; read-only here) and the ``NANOCLAW_*``
    environment (``context.py``).

WRITES
    ``/workspace/ipc/out``: each turn's ``result`` (tmp, fsync, rename; a
    refused write is retried, not dropped), what a turn is doing
    (``progress``: it began, a tool began or ended), and the tools' requests
    (``tools.py``); log lines on stderr, which the host's runner journals.

HOSTILE INPUT
    None that this side must defend against: the container is the agent's
    own, and a prompt-injected agent may write anything a process here can.
    So nothing here is trusted by the host: every byte in ``out/``, on the
    sockets and on stderr is checked there. Importing these modules starts
    nothing (no loop, thread, socket, process or file): ``main()`` does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TYPE_CHECKING

from inotify_simple import INotify, flags

import early_cli
import forwarders
import progress
from context import Context, log
from interrupt import StopWatch
from protocol import BadMessage, process_started
from settings import settings

if TYPE_CHECKING:  # imported in main(), after the CLI is started
    from session import Session


def main() -> int:
    """Start (relays, the early CLI, then the SDK), serve prompts until closed or idle."""
    # Where a new container's first answer spends its time; sent once, with the first turn's usage.
    stages = {"process": process_started() or 0.0, "python": time.time()}
    ctx = Context.from_env()
    # The loop is made now so the early CLI's pipes belong to it.
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        api_url = loop.run_until_complete(forwarders.start(forwarders.API_SOCKET))
        web_url = loop.run_until_complete(forwarders.start(forwarders.WEB_SOCKET))
        early = loop.run_until_complete(start_cli_early(ctx, api_url, web_url))
        stages["cli_spawn"] = time.time()
        # Nothing above waited for the CLI: it starts on the other core while Python imports the SDK.
        from session import Session
        stages["sdk_imported"] = time.time()
        return loop.run_until_complete(serve(ctx, Session(ctx, api_url, web_url, early, stages)))
    finally:  # the loop's tasks ended as asyncio.run would
        pending = asyncio.all_tasks(loop)
        for task in pending:
            task.cancel()
        loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


async def start_cli_early(ctx: Context, base_url: str, web_proxy: str) -> early_cli.EarlyCLI | None:
    """Start the CLI for the first prompt waiting in in/ (its session), before the SDK is
    imported; None if no prompt waits or the CLI cannot be started this way."""
    inbox = ctx.inbox
    for path in inbox.unseen(set()):
        try:
            env = inbox.read(path)
        except BadMessage:
            continue
        if env.type != "prompt":
            return None
        try:
            return await early_cli.start(settings(ctx, base_url, web_proxy, env.body.get("session_id")))
        except Exception as exc:  # the SDK starts it later, as it always could
            log(f"could not start the CLI early: {exc}")
            return None
    return None


async def serve(ctx: Context, session: Session) -> int:
    """Answer prompts as they arrive; the exit code: 0 closed or idle, 1 a turn failed."""
    inbox = ctx.inbox
    notify = INotify()
    notify.add_watch(str(inbox.new), flags.MOVED_TO | flags.CLOSE_WRITE)
    woke = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(notify.fd, lambda: (notify.read(timeout=0), woke.set()))
    last_work = time.monotonic()
    seen: set[str] = set()  # in/ is read-only: what we have handled is remembered here
    log(f"group={ctx.group}{' agent=' + ctx.agent if ctx.agent else ''} job={ctx.job} ready; "
        f"idle timeout {ctx.idle_timeout:.0f}s")
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
                if env.type == "stop":
                    continue  # for a turn already over (the watch below takes those of the running one)
                if env.type != "prompt":
                    log(f"ignoring {path.name}: unexpected type {env.type!r}")
                    continue
                b = env.body
                watch = StopWatch(inbox, seen, b["job"], b["turn"], session.interrupt, log)
                try:
                    async with watch:
                        out = await session.turn(b["prompt"], b.get("session_id"), reporter(ctx, b["job"], b["turn"]))
                    if watch.stopped:  # the owner stopped it: no answer, no error; the session goes on
                        out = {**out, "text": "", "error": None}
                except Exception as exc:
                    if watch.stopped:
                        log(f"turn {b['turn']} stopped: {exc}")
                        await report(ctx, {"job": b["job"], "turn": b["turn"], "text": "", "error": None,
                                           "session_id": session.session_id})
                        last_work = time.monotonic()
                        continue
                    # the CLI died or the API failed: report, then let a fresh container retry
                    detail = " | ".join(list(session.stderr_tail)[-5:])
                    await report(ctx, {"job": b["job"], "turn": b["turn"], "text": "",
                                       "error": f"{type(exc).__name__}: {exc} {detail}"[:2000]})
                    log(f"turn {b['turn']} failed: {exc}")
                    return 1
                await report(ctx, {"job": b["job"], "turn": b["turn"], **out})
                log(f"turn {b['turn']} answered in {out['usage']['duration_s']}s")
                last_work = time.monotonic()
            remaining = ctx.idle_timeout - (time.monotonic() - last_work)
            if remaining <= 0:
                log("idle; exiting")
                return 0
            try:
                await asyncio.wait_for(woke.wait(), min(remaining, 5.0))
            except asyncio.TimeoutError:
                pass
    finally:
        await session.close()


def reporter(ctx: Context, job: int, turn: int):
    """What a turn is doing, for the host to show (core/progress.py): one small ``progress``
    file per change in ``out/``. Cosmetic: not synced, and a failed write is let go."""
    def said(state: str, tool: str = "", given: object = None) -> None:
        body = {"job": job, "turn": turn, "state": state}
        if tool:
            body.update(tool=tool[:progress.TOOL_MAX], detail=progress.detail_of(tool, given))
        try:
            ctx.outbox.put("progress", body, durable=False)
        except Exception as exc:  # a full disk, a bad name: never a reason to fail the turn
            log(f"progress not reported: {exc}")
    return said


async def report(ctx: Context, body: dict) -> None:
    """Write a turn's result, however long the disk refuses it (full, read-only): an answer
    already paid for is kept, not lost with this container. The host's time limit on the
    container bounds the wait; the write waits in a thread, so the CLI's pipes are still read."""
    said: list[str] = []

    def refused(exc: OSError) -> None:
        if not said:
            said.append(str(exc))
            log(f"the result of turn {body['turn']} cannot be written ({exc}); trying again until it is")

    await asyncio.to_thread(ctx.outbox.put_until_written, "result", body, on_refused=refused)
    if said:
        log(f"the result of turn {body['turn']} is written")


if __name__ == "__main__":
    sys.exit(main())
