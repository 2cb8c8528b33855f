"""The run-all drain: when ``nanoclaw run-all`` stops, the runner ends its agents too.

SUMMARY
    Under ``nanoclaw run-all`` (``NANOCLAW_RUNNER_STOPS_AGENTS=1``) a stop ends the agents,
    since the Podman API they hang on stops with it: each is asked to close (an idle one
    exits at once, a busy one may finish its turn within ``STOP_GRACE``), the rest are
    killed (paused ones removed), and every exit is reported ``stopped``, so the queue
    counts no failure and runs the messages of unfinished turns again at the next start. No container starts once that
    began (:class:`Draining`); a job not started yet keeps its file for the next runner.

SYNOPSIS
    await stop_agents(daemon);  kill_all(daemon) -> names killed
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from nanoclaw.core.protocol import Spool
from nanoclaw.daemons.runner.driver import in_daemon_thread
from nanoclaw.daemons.runner.spec import LABEL

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon

STOP_ENV = "NANOCLAW_RUNNER_STOPS_AGENTS"  # set by `nanoclaw run-all`: stopping the runner ends its agents
STOP_GRACE = 5.0  # seconds agents asked to close (run-all stopping) get before they are killed
STOP_WAIT = 20.0  # seconds after that for the killed ones' exits to be recorded


class Draining(Exception):
    """`nanoclaw run-all` is stopping: nothing starts; the job's file stays for the next runner."""


async def stop_agents(daemon: RunnerDaemon) -> None:
    """run-all is stopping: ask every agent to close, kill what is left after STOP_GRACE,
    and wait for the exits to be reported (the job's thread reports them ``stopped``)."""
    def begin() -> None:
        with daemon.gate:
            daemon.draining = True
    await in_daemon_thread(begin)
    try:  # paused ones too: the Podman API they would be handed over by stops with us
        await in_daemon_thread(daemon.pool.stop_all)
    except (APIError, RequestsConnectionError, OSError) as exc:
        daemon.log.error("cannot remove paused containers: %s", exc)
    tasks = list(daemon.running.values())
    if not tasks:
        return
    daemon.log.info("stopping %d agent container(s): asked to close, killed after %.0fs", len(tasks), STOP_GRACE)
    for job, body in list(daemon.bodies.items()):
        # after the prompts already there: an agent answers those it can within the grace
        Spool(daemon.cfg.agent_ipc(body["group"], body.get("agent", "")) / "in").ensure().put(
            "close", {"job": job}, durable=False)
    _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
    if pending:
        try:
            killed = await in_daemon_thread(kill_all, daemon)
            daemon.log.info("killed %s", ", ".join(killed) or "none (they were ending)")
        except (APIError, RequestsConnectionError, OSError) as exc:
            daemon.log.error("cannot kill agent containers: %s", exc)
        _, pending = await asyncio.wait(pending, timeout=STOP_WAIT)
    if pending:
        daemon.log.error("%d agent container(s) did not end; the next runner re-attaches to them", len(pending))


def kill_all(daemon: RunnerDaemon) -> list[str]:
    """Kill every running container of ours (agents and pre-checks); their names."""
    killed = []
    with daemon.client() as client:
        for ctr in client.containers.list(filters={"label": LABEL}):
            try:
                ctr.kill()
                killed.append(ctr.name)
            except (APIError, NotFound):
                pass
    return killed
