"""The Podman driver: a container made, checked, waited for, its logs read, removed.

SYNOPSIS
    create(client, image, kwargs, extra, log, body) -> container
    wait(ctr, deadline, limit, what, log, body) -> (exit code, error)
    deadline(ctr, timeout) -> epoch seconds;  alive(ctr) -> bool;  remove(ctr)
    read_logs(ctr, stdout=, stderr=, cap=, tail=) -> (bytes, cut)
    start_failure(exc) -> one line;  await in_daemon_thread(func, *args)

DESCRIPTION
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
from nanoclaw.daemons.runner import binds
from nanoclaw.daemons.runner.spec import DEADLINE_LABEL


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


def create(client: PodmanClient, image: str, kwargs: dict, extra: list[binds.Bind], log: logging.Logger,
           body: dict) -> Any:
    """Create a container. With the owner's folders (``extra``), also set it up (``init``:
    its mounts made, nothing run in it yet) and check each of them from inside; one that is
    not what was checked removes it before anything ran (BindError: a start failure, which
    is tried again as any is)."""
    try:
        ctr = client.containers.create(image, **kwargs)
        if extra:
            try:
                ctr.init()
                ctr.reload()
                binds.verify(int(ctr.attrs["State"]["Pid"]), extra)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                log.error("container %s removed before it ran: %s", ctr.name, exc,
                          extra=log_fields(group=body["group"], job=body["job"]))
                ctr.remove(force=True)
                raise binds.BindError(errno.EXDEV, f"a mounted folder changed while the container was "
                                                   f"made ({exc})") from None
        return ctr
    finally:
        binds.close(extra)


def remove(ctr: Any) -> None:
    try:
        ctr.remove(force=True)
    except NotFound:
        pass


def deadline(ctr: Any, timeout: float) -> float:
    """When the container must be gone: ``timeout`` after it was made, kept on a label,
    so re-attaching after a runner restart does not give it a fresh allowance."""
    try:
        return float(ctr.labels[DEADLINE_LABEL])
    except (KeyError, TypeError, ValueError):
        return time.time() + timeout


def alive(ctr: Any) -> bool:
    """Whether a 'running' container really has processes (podman reads them from /proc)."""
    try:
        return bool(ctr.top().get("Processes"))
    except (APIError, NotFound, ValueError):  # podman 4.3 answers an empty body: no processes
        return False


def wait(ctr: Any, deadline: float, limit: float, what: str, log: logging.Logger, body: dict) -> tuple[int, str]:
    """Wait for the container to exit; a timer kills it at the deadline."""
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
                code = ctr.wait(condition=["exited", "stopped"])
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
