"""The Podman driver: a container made, checked, waited for, its logs read, removed.

SYNOPSIS
    options(spec) -> Podman's options;  create(client, spec, log, body) -> container
    wait(ctr, deadline, limit, what, log, body, paused=) -> (exit code, error)
    deadline(ctr, timeout, job) -> epoch seconds;  alive(ctr) -> bool;  remove(ctr)
    read_logs(ctr, stdout=, stderr=, cap=, tail=) -> (bytes, cut)
    start_failure(exc) -> one line;  await in_daemon_thread(func, *args)

DESCRIPTION
    The only module that knows Podman's options: a spec (``spec.py``, checked by
    ``validate.py``) is all it is given, and what every container gets whatever its spec
    says (no capability, no new privileges, a read-only root) is added here.

    Every call here blocks (podman-py is synchronous): the daemon makes them from a job's
    own thread (:func:`in_daemon_thread`). A container with the owner's folders is set up
    (``init``) and each of them checked from inside before anything runs in it
    (:func:`binds.verify`); one that is not what was checked removes it.

HOSTILE INPUT
    A container's logs are the agent's (or a pre-check's) text: read up to a cap, frame by
    frame, never all at once.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import struct
import threading
import time
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Job
from nanoclaw.daemons.runner import binds
from nanoclaw.daemons.runner.spec import DEADLINE_LABEL, LABEL, Spec


async def in_daemon_thread(func: Any, *args: Any) -> Any:
    """Run blocking Podman calls off the loop in a daemon thread.

    Not the default executor: its threads are joined at exit, and a thread
    blocked in a container wait would hold up ``systemctl stop``.
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            result, error = func(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, daemon=True).start()
    return await fut


def start_failure(exc: BaseException) -> str:
    """One line for the chat and the job's record: why the container did not start."""
    text = getattr(exc, "explanation", None) or str(exc)
    text = text.split("error during container init: ")[-1]
    if "no space left on device" in text.lower() or getattr(exc, "errno", None) == errno.ENOSPC:
        text = f"the disk is full ({text})"
    elif "image not known" in text:  # a newcomer's first message, before the image was built
        text = f"{text} (build it: nanoclaw image build)"
    return "the container could not start: " + " ".join(text.split())[:200]


def options(spec: Spec) -> dict[str, Any]:
    """Podman's options for ``spec``, with the hardening every container of ours gets whatever
    its spec says: every capability dropped, no new privileges, a read-only root (the image:
    the install, which no agent changes)."""
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "labels": dict(spec.labels),
        "environment": dict(spec.env),
        "mounts": [{"type": "tmpfs", "source": "tmpfs", "target": m.target, "size": m.size} if not m.source else
                   {"type": "bind", "source": m.source, "target": m.target, "read_only": m.read_only}
                   for m in spec.mounts],
        "working_dir": spec.workdir,
        "network_mode": spec.network,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "ulimits": [_ulimit(u) for u in spec.resources.ulimits],
        "user": spec.user,
    }
    if spec.command:
        kwargs["command"] = list(spec.command)
    if spec.log_cap:
        kwargs["log_config"] = {"Type": "k8s-file", "Config": {"size": spec.log_cap}}
    if spec.resources.memory:
        kwargs["mem_limit"] = spec.resources.memory
    if spec.resources.pids > 0:
        kwargs["pids_limit"] = spec.resources.pids
    if spec.runtime:
        kwargs["runtime"] = spec.runtime
    if spec.userns:
        kwargs["userns_mode"] = spec.userns
    return kwargs


def _ulimit(entry: str) -> dict[str, Any]:
    name, _, values = entry.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}


def create(client: PodmanClient, spec: Spec, log: logging.Logger, body: dict) -> Any:
    """Create the container ``spec`` (validated) says. With the owner's folders, also set it
    up (``init``: its mounts made, nothing run in it yet) and check each of them from inside;
    one that is not what was checked removes it before anything ran (BindError: a start
    failure, which is tried again as any is). Their descriptors are closed either way."""
    checked = spec.checked_binds()
    try:
        ctr = client.containers.create(spec.image, **options(spec))
        if checked:
            try:
                ctr.init()
                ctr.reload()
                binds.verify(int(ctr.attrs["State"]["Pid"]), checked)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                log.error("container %s removed before it ran: %s", ctr.name, exc,
                          extra=log_fields(group=body["group"], job=body["job"]))
                ctr.remove(force=True)
                raise binds.BindError(errno.EXDEV, f"a mounted folder changed while the container was "
                                                   f"made ({exc})") from None
        return ctr
    finally:
        binds.close(checked)


def remove(ctr: Any) -> None:
    try:
        ctr.remove(force=True)
    except NotFound:
        pass


def deadline(ctr: Any, timeout: float, job: int) -> float:
    """When the container must be gone: ``timeout`` after it was made, kept on a label,
    so re-attaching after a runner restart does not give it a fresh allowance. A paused
    container handed a later job (``pause.py``; its label names the job it was made for)
    has ``timeout`` from that job's start, which the queue recorded."""
    try:
        if ctr.labels.get(LABEL) == str(job):
            return float(ctr.labels[DEADLINE_LABEL])
        row = Job.get_or_none(Job.id == job)
        if row is not None and row.started_at:
            return row.started_at + timeout
    except (AttributeError, KeyError, TypeError, ValueError):
        pass
    return time.time() + timeout


def alive(ctr: Any) -> bool:
    """Whether a 'running' container really has processes (podman reads them from /proc)."""
    try:
        return bool(ctr.top().get("Processes"))
    except (APIError, NotFound, ValueError):  # podman 4.3 answers an empty body: no processes
        return False


def wait(ctr: Any, deadline: float, limit: float, what: str, log: logging.Logger, body: dict,
         paused: bool = False) -> tuple[int, str]:
    """Wait for the container to exit (or, with ``paused``, to be paused: the runner paused it,
    see pause.py); a timer kills it at the deadline."""
    timed_out = threading.Event()

    def kill() -> None:
        timed_out.set()
        log.error("%s timed out after %.0fs; killing", what, limit,
                  extra=log_fields(group=body["group"], job=body["job"]))
        try:
            ctr.kill()
        except (APIError, NotFound):
            pass

    timer = threading.Timer(max(0.0, deadline - time.time()), kill)
    timer.daemon = True
    timer.start()
    try:
        while True:
            try:
                code = ctr.wait(condition=["exited", "stopped", *(["paused"] if paused else [])])
                break
            except NotFound:
                return -1, "container disappeared"
            except (APIError, ReadTimeout, RequestsConnectionError):
                time.sleep(1)  # the API service restarted or a long wait broke: wait again
    finally:
        timer.cancel()
    if timed_out.is_set():
        return 124, f"{'the pre-check ' if what == 'pre-check' else ''}timed out after {limit:.0f}s"
    return (code if isinstance(code, int) else -1), ""


def read_logs(ctr: Any, *, stdout: bool, stderr: bool, cap: int, tail: int = 0) -> tuple[bytes, bool]:
    """A stopped container's output (its last ``tail`` lines if given), at most ``cap`` bytes
    of it, and whether there was more.

    Read frame by frame from the API (podman-py's ``logs`` would hold it all in memory)."""
    params = {"stdout": str(stdout).lower(), "stderr": str(stderr).lower()}
    if tail:
        params["tail"] = str(tail)
    resp = ctr.client.get(f"/containers/{ctr.id}/logs", params=params, stream=True)
    resp.raise_for_status()
    out = bytearray()
    try:
        while True:
            header = resp.raw.read(8)
            if len(header) < 8:
                return bytes(out), False
            (size,) = struct.unpack_from(">L", header, 4)
            take = min(size, cap - len(out))
            out += resp.raw.read(take) if take else b""
            if take < size:
                return bytes(out), True
    finally:
        resp.close()
