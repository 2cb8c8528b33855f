"""The runner's ``kill`` op: end one job's agent container now (the owner's stop it ignored).

SUMMARY
    Asked by the queue (daemons/queue/stop.py) on the runner's socket, which only
    nanoclaw's own processes reach. Only a job this runner runs is killed, by the
    container name it made for it; the job's thread then reports the exit as for any
    container, and the queue settles the stopped turn (daemons/queue/stopped.py).

SYNOPSIS
    kill_job(daemon, job) -> {"ok": bool, "error"?: str, "gone"?: bool}   (in a thread)

HOSTILE INPUT
    None: the request is the queue's. A job id that is no job of this runner's kills
    nothing.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from nanoclaw.core.log import log_fields
from nanoclaw.daemons.runner.spec import container_name

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon


def kill_job(daemon: RunnerDaemon, job: object) -> dict:
    """Kill the container of ``job`` (a job id); runs in a thread (a Podman call)."""
    body = daemon.bodies.get(job) if isinstance(job, int) else None
    if body is None:
        return {"ok": False, "error": f"job {job!r} is not running here"}
    name = container_name(body["group"], body["job"], body.get("agent", ""))
    try:
        with daemon.client() as client:
            client.containers.get(name).kill()
    except NotFound:
        return {"ok": True, "gone": True}
    except (APIError, RequestsConnectionError, OSError) as exc:
        return {"ok": False, "error": f"cannot kill {name}: {exc}"}
    daemon.log.warning("killed %s: the owner stopped its turn and it did not end", name,
                       extra=log_fields(group=body["group"], job=body["job"]))
    return {"ok": True}
