"""A scheduled task's pre-check: a shell command that decides whether its agent runs.

SUMMARY
    Run first in ``nanoclaw-<folder>-<job>-check``, a container of the agent's image confined
    more than the agent's: no network at all, no proxy sockets, no IPC, no session, the
    group's folder read-only, a short time limit. If it fails, times out or prints nothing
    the job is skipped; otherwise its output (capped) is added to the agent's prompt.

SYNOPSIS
    run(daemon, client, body) -> (True, what to add to the prompt) | (False, why it is skipped)
    verdict(code, error, out, cut, err, max_output) -> the same, from what the container did
    narrow(agent spec, command, container config) -> the pre-check's spec

HOSTILE INPUT
    The command is the owner's or the group's own agent's, and its output is whatever it
    read: read up to a cap, escaped into the prompt (``core.prompt.precheck_block``),
    control characters removed from the reason.
"""

from __future__ import annotations

import re
import time
from dataclasses import replace
from typing import TYPE_CHECKING

from podman import PodmanClient
from podman.errors import NotFound

from nanoclaw.core.config import ContainerConfig
from nanoclaw.core.log import log_fields
from nanoclaw.core.prompt import precheck_block
from nanoclaw.daemons.runner import binds, driver, owner_folders
from nanoclaw.daemons.runner.drain import Draining
from nanoclaw.daemons.runner.spec import (DEADLINE_LABEL, LABEL, PRECHECK, PRECHECK_LABEL, Spec, agent_spec,
                                          host_volumes, precheck_name)
from nanoclaw.daemons.runner.validate import validate

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
SCRATCH = "64m"  # the pre-check's /tmp


def narrow(agent: Spec, command: str, c: ContainerConfig) -> Spec:
    """The pre-check's container: the agent's ``agent`` spec with things taken away, never added.

    Kept: the image, user, resources, the group's folder, the owner's folders for it and the
    host's own volumes (all read-only), a smaller ``/tmp``, the time zone and the group's
    name. Taken away: the network (``none`` whatever ``[container] network`` says), the
    agent's team files, global memory, IPC, session and proxy sockets (so no API and no web),
    the rest of its environment (no model, no extra variables) and time beyond
    ``precheck_timeout``. What it prints is read back, so its log is a size-capped file.
    """
    volumes = host_volumes(c)
    mounts = []
    for m in agent.mounts:  # kept in the agent's order (the group's folder first)
        if m.target == "/workspace/group":
            mounts.append(replace(m, read_only=True))
        elif not m.source:
            mounts.append(replace(m, size=SCRATCH))
        elif m.checked is not None:
            mounts.append(replace(m, read_only=True, checked=replace(m.checked, read_only=True)))
        elif m in volumes:
            mounts.append(replace(m, read_only=True))
    return replace(
        agent, role=PRECHECK, name=precheck_name(agent.group, int(agent.labels[LABEL])), mounts=tuple(mounts),
        network="none",
        command=("/bin/sh", "-c", PRECHECK_WRAPPER, "nanoclaw-precheck", command, str(c.precheck_max_output + 1)),
        env={"TZ": agent.env["TZ"], "HOME": "/tmp", "NANOCLAW_GROUP": agent.env["NANOCLAW_GROUP"]},
        labels={LABEL: agent.labels[LABEL], "nanoclaw.group": agent.labels["nanoclaw.group"], PRECHECK_LABEL: "1",
                DEADLINE_LABEL: f"{time.time() + c.precheck_timeout:.0f}"},
        timeout=c.precheck_timeout, log_cap=max(65536, 4 * c.precheck_max_output))


def run(daemon: RunnerDaemon, client: PodmanClient, body: dict) -> tuple[bool, str]:
    """Run a task's pre-check; (True, what to add to the prompt) or (False, why it is skipped).

    Podman failures raise (the job is retried as any start is); the command failing,
    timing out or printing nothing is an answer, not a failure.
    """
    cfg, log = daemon.cfg, daemon.log
    c = cfg.container
    try:  # one left by a runner that died while it ran: run it again from the start
        client.containers.get(precheck_name(body["group"], body["job"])).remove(force=True)
    except NotFound:
        pass
    (cfg.groups_dir / body["group"]).mkdir(parents=True, exist_ok=True)
    t0 = time.monotonic()
    ctr = None
    try:
        with daemon.gate:
            if daemon.draining:
                raise Draining()
            # Opened read-only from the start: no git guards made for a container that writes nothing.
            extra, allow = owner_folders.for_container(cfg, body["group"], log, read_only=True)
            try:
                spec = narrow(agent_spec(cfg, body, extra), body["precheck"], c)
                validate(spec, cfg, allow)
            except BaseException:
                binds.close(extra)
                raise
            ctr = driver.create(client, spec, log, body)
            ctr.start()
        code, error = driver.wait(ctr, time.time() + spec.timeout, spec.timeout, "pre-check", log, body)
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
