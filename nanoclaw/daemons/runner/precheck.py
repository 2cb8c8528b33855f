"""A scheduled task's pre-check: a shell command that decides whether its agent runs.

SUMMARY
    Run first in ``nanoclaw-<folder>-<job>-check``, a container of the agent's image confined
    more than the agent's: no network at all, no proxy sockets, no IPC, no session, the
    group's folder read-only, a short time limit. If it fails, times out or prints nothing
    the job is skipped; otherwise its output (capped) is added to the agent's prompt.

SYNOPSIS
    run(daemon, client, body) -> (True, what to add to the prompt) | (False, why it is skipped)
    verdict(code, error, out, cut, err, max_output) -> the same, from what the container did
    precheck_kwargs(cfg, job, extra) -> the pre-check container's Podman options

HOSTILE INPUT
    The command is the owner's or the group's own agent's, and its output is whatever it
    read: read up to a cap, escaped into the prompt (``core.prompt.precheck_block``),
    control characters removed from the reason.
"""

from __future__ import annotations

import re
import time
from typing import TYPE_CHECKING, Any

from podman import PodmanClient
from podman.errors import NotFound

from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.prompt import precheck_block
from nanoclaw.daemons.runner import binds, driver, owner_folders
from nanoclaw.daemons.runner.dirs import agent_identity
from nanoclaw.daemons.runner.drain import Draining
from nanoclaw.daemons.runner.spec import DEADLINE_LABEL, LABEL, PRECHECK_LABEL, _ulimit, precheck_name

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon

# The pre-check's command ($1) runs with its stdout through `head -c $2`, the rest drained, so
# an honest command's output is cut inside the container (its head kept) and its exit status is
# its own. A hostile one can get past this (writing to /proc/1/fd/1): the log's size cap and the
# host's bounded read are the limits that hold against it.
PRECHECK_WRAPPER = """exec 3>&1
status=$( { { /bin/sh -c "$1" 3>&- 4>&-; echo $? >&4; } | { head -c "$2" >&3; cat >/dev/null; } 3>&3; } 4>&1 )
exit "${status:-1}"
"""
_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]+")  # all but newlines


def precheck_kwargs(cfg: Config, job: dict, extra: list[binds.Bind] | None = None) -> dict[str, Any]:
    """How a task's pre-check container is started: as confined as an agent's or more.

    The same image, user, capabilities (none), read-only root, memory, pids and ulimits as
    an agent; beyond that no network namespace with a way out (``none`` whatever
    ``[container] network`` says), none of the agent's IPC, session or proxy sockets (so no
    API and no web), no credentials or extra environment, and the group's folder (and the
    owner's folders for it, ``extra``, opened with ``read_only``) read-only. Its log is a
    size-capped file, since what it prints is read back.
    """
    c = cfg.container
    folder = job["group"]
    user, userns = agent_identity(cfg)
    mounts = [
        {"type": "bind", "source": str(cfg.groups_dir / folder), "target": "/workspace/group", "read_only": True},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": "64m"},
    ]
    mounts += [{**b.spec(), "read_only": True} for b in extra or []]
    for spec in c.volumes:  # what this host needs for any container to start (e.g. the cgroup tree)
        source, target, *mode = spec.split(":")
        mounts.append({"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    kwargs: dict[str, Any] = {
        "name": precheck_name(folder, job["job"]),
        "command": ["/bin/sh", "-c", PRECHECK_WRAPPER, "nanoclaw-precheck", job["precheck"],
                    str(c.precheck_max_output + 1)],
        "labels": {LABEL: str(job["job"]), "nanoclaw.group": folder, PRECHECK_LABEL: "1",
                   DEADLINE_LABEL: f"{time.time() + c.precheck_timeout:.0f}"},
        "environment": {"TZ": cfg.tz, "HOME": "/tmp", "NANOCLAW_GROUP": folder},
        "mounts": mounts,
        "working_dir": "/workspace/group",
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "ulimits": [_ulimit(u) for u in c.ulimits],
        "log_config": {"Type": "k8s-file", "Config": {"size": max(65536, 4 * c.precheck_max_output)}},
        "user": user,
    }
    if c.memory:
        kwargs["mem_limit"] = c.memory
    if c.pids_limit > 0:
        kwargs["pids_limit"] = c.pids_limit
    if c.runtime:
        kwargs["runtime"] = c.runtime
    if userns:
        kwargs["userns_mode"] = userns
    return kwargs




def run(daemon: RunnerDaemon, client: PodmanClient, body: dict) -> tuple[bool, str]:
    """Run a task's pre-check; (True, what to add to the prompt) or (False, why it is skipped).

    Podman failures raise (the job is retried as any start is); the command failing,
    timing out or printing nothing is an answer, not a failure.
    """
    cfg, log = daemon.cfg, daemon.log
    c = cfg.container
    name = precheck_name(body["group"], body["job"])
    try:  # one left by a runner that died while it ran: run it again from the start
        client.containers.get(name).remove(force=True)
    except NotFound:
        pass
    (cfg.groups_dir / body["group"]).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ctr = None
    try:
        with daemon.gate:
            if daemon.draining:
                raise Draining()
            extra = owner_folders.for_container(cfg, body["group"], log, read_only=True)
            ctr = driver.create(client, c.image, precheck_kwargs(cfg, body, extra), extra, log, body)
            ctr.start()
        code, error = driver.wait(ctr, time.time() + c.precheck_timeout, c.precheck_timeout, "pre-check", log, body)
        took = time.monotonic() - t0
        out, cut = driver.read_logs(ctr, stdout=True, stderr=False, cap=c.precheck_max_output)
        err, _ = driver.read_logs(ctr, stdout=False, stderr=True, cap=4096, tail=10)
    finally:
        if ctr is not None:
            driver.remove(ctr)
    go, said = verdict(code, error, out, cut, err, c.precheck_max_output)
    if go:
        log.info("pre-check printed %d bytes%s in %.2fs; starting the agent", len(out), " (cut)" if cut else "",
                 took, extra=log_fields(group=body["group"], job=body["job"]))
    else:
        log.info("pre-check says skip (%.2fs): %s", took, said[:200],
                 extra=log_fields(group=body["group"], job=body["job"]))
    return go, said


def verdict(code: int, error: str, out: bytes, cut: bool, err: bytes, max_output: int) -> tuple[bool, str]:
    """What a pre-check that ended with ``code`` (``error``: the runner's reason, as a time
    limit) and printed ``out`` (``cut`` at ``max_output``) and ``err`` says: run the agent
    with this block in its prompt, or skip, for this reason."""
    text = out.decode(errors="replace")
    if code != 0:
        said = _UNPRINTABLE.sub(" ", err.decode(errors="replace"))
        lines = [" ".join(line.split()) for line in said.splitlines()]
        tail = " | ".join(line for line in lines if line)[-300:]  # its last words, on one line
        reason = error or f"the pre-check exited with code {code}"
        return False, reason + (f": {tail}" if tail and not error else "")
    if not text.strip():
        return False, "the pre-check printed nothing"
    return True, precheck_block(text, cut_at=max_output if cut else None)
