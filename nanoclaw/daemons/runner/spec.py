"""What one job's container is: its name, labels and Podman options, from configuration.

SYNOPSIS
    container_name(folder, job, agent) -> name;  precheck_name(folder, job) -> name
    container_kwargs(cfg, job, extra) -> Podman options for an agent's container
"""

from __future__ import annotations

import time
from typing import Any

from nanoclaw.core import team as team_mod
from nanoclaw.core.config import Config
from nanoclaw.core.models import Group
from nanoclaw.daemons.runner import binds
from nanoclaw.daemons.runner.dirs import agent_identity, group_dirs

LABEL = "nanoclaw.job"
DEADLINE_LABEL = "nanoclaw.deadline"  # epoch seconds: the container's life ends then, whatever restarts
PRECHECK_LABEL = "nanoclaw.precheck"


def container_name(folder: str, job: int, agent: str = "") -> str:
    return f"nanoclaw-{folder}--{agent}-{job}" if agent else f"nanoclaw-{folder}-{job}"


def precheck_name(folder: str, job: int) -> str:
    return f"{container_name(folder, job)}-check"


def group_model(cfg: Config, folder: str) -> str:
    """The model a group's agents use: the group's own (``nanoclaw groups set --model``), else
    the configured one ("" lets the CLI choose). A team member's own model wins over both."""
    group = Group.get_or_none(Group.folder == folder)
    return (group.model if group is not None else "") or cfg.model


def _ulimit(spec: str) -> dict[str, Any]:
    name, _, values = spec.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}


def container_kwargs(cfg: Config, job: dict, extra: list[binds.Bind] | None = None) -> dict[str, Any]:
    """Everything Podman needs to start one job's container, from configuration.

    Mounts: the group's folder (rw; its ``agents/`` ro), global memory (ro;
    rw for main), the agent's IPC dirs (``in`` read-only, ``out`` rw), its
    session state and its API socket (ro), and ``extra``: the owner's folders
    for it as :func:`owner_folders.for_container` opened and checked them (verified in
    the container before it runs: :meth:`RunnerDaemon._create`). Nothing else
    of the host. A team member (``job["agent"]``) gets its own IPC and session,
    never the lead's.
    """
    c = cfg.container
    agent = job.get("agent", "")
    dirs = group_dirs(cfg, job["group"], agent)
    mounts = [
        {"type": "bind", "source": str(dirs["group"]), "target": "/workspace/group"},
        # The team's member files, read-only over the shared folder: no agent makes or changes one.
        {"type": "bind", "source": str(dirs["team"]), "target": f"/workspace/group/{team_mod.AGENTS}",
         "read_only": True},
        {"type": "bind", "source": str(dirs["global"]), "target": "/workspace/global",
         "read_only": not job["is_main"]},
        # Host to agent read-only (prompts, tasks.json): the host never writes where the agent can.
        {"type": "bind", "source": str(dirs["in"]), "target": "/workspace/ipc/in", "read_only": True},
        {"type": "bind", "source": str(dirs["out"]), "target": "/workspace/ipc/out"},
        {"type": "bind", "source": str(dirs["session"]), "target": "/workspace/session"},
        {"type": "bind", "source": str(dirs["proxy"]), "target": "/run/nanoclaw-proxy", "read_only": True},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": "512m"},
    ]
    user, userns = agent_identity(cfg)
    env = {
        "TZ": cfg.tz,
        "NANOCLAW_JOB": str(job["job"]),
        "NANOCLAW_GROUP": job["group"],
        "NANOCLAW_IS_MAIN": "1" if job["is_main"] else "0",
        "NANOCLAW_IDLE_TIMEOUT": str(c.idle_timeout),
        "NANOCLAW_MODEL": group_model(cfg, job["group"]),
        "NANOCLAW_AGENT": agent,
        "HOME": "/tmp/home",  # the image is read-only; session state lives in /workspace/session
    }
    for pair in c.extra_env:
        key, _, value = pair.partition("=")
        env[key] = value
    kwargs: dict[str, Any] = {
        "name": container_name(job["group"], job["job"], agent),
        "labels": {LABEL: str(job["job"]), "nanoclaw.group": job["group"], "nanoclaw.agent": agent,
                   DEADLINE_LABEL: f"{time.time() + c.timeout:.0f}"},
        "environment": env,
        "mounts": mounts,
        "working_dir": "/workspace/group",
        "network_mode": c.network,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "ulimits": [_ulimit(u) for u in c.ulimits],
    }
    if agent:
        member = team_mod.member(cfg, job["group"], agent)
        if member is not None and member.model:
            env["NANOCLAW_MODEL"] = member.model
    if c.memory:
        kwargs["mem_limit"] = c.memory
    if c.pids_limit > 0:
        kwargs["pids_limit"] = c.pids_limit
    extra = extra or []
    mounts += [b.spec() for b in extra]  # the owner's folders (and their guards), checked now
    env["NANOCLAW_MOUNTS"] = ",".join(f"{b.name}:{'ro' if b.read_only else 'rw'}" for b in extra if b.name)
    for spec in c.volumes:
        source, target, *mode = spec.split(":")
        mounts.append({"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    if c.runtime:
        kwargs["runtime"] = c.runtime
    if userns:
        kwargs["userns_mode"] = userns
    kwargs["user"] = user
    return kwargs

