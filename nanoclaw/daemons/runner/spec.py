"""One job's container, said once: a spec that names what it is, not how a runtime makes it.

SUMMARY
    A :class:`Spec` is everything one container of a job is: its role (an agent, or a
    task's pre-check), image, user, environment, mounts, labels, resources, network, time
    limit. :func:`agent_spec` builds an agent's from the configuration and
    the job; a pre-check's is that spec made narrower (``precheck.narrow``), never a second
    list. ``validate.validate`` checks a spec, classifying every mount, before
    ``driver.options`` turns it into Podman's options, where the hardening every container
    gets is added (no capability, no new privileges, a read-only root): a second runtime is
    a second driver, the spec and its checks stay.

SYNOPSIS
    agent_spec(cfg, job, extra) -> Spec
    job_model(cfg, job) -> the model the queue chose for the job (older job files: chosen here)
    container_name(folder, job, agent) -> name;  precheck_name(folder, job) -> name
    host_volumes(container config) -> the mounts a host needs in every container
    Spec.checked_binds() -> the owner's folders' descriptors, for the check in the container
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from nanoclaw.core import model_choice
from nanoclaw.core import team as team_mod
from nanoclaw.core.config import Config, ContainerConfig
from nanoclaw.daemons.runner import binds
from nanoclaw.daemons.runner.dirs import agent_identity, group_dirs

LABEL = "nanoclaw.job"
DEADLINE_LABEL = "nanoclaw.deadline"  # epoch seconds: the container's life ends then, whatever restarts
PRECHECK_LABEL = "nanoclaw.precheck"
VOICE_LABEL = "nanoclaw.voice"  # a transcription's message id
AGENT, PRECHECK, TRANSCRIBE = "agent", "precheck", "transcribe"  # a spec's roles


@dataclass(frozen=True)
class Mount:
    """A bind of a host path (``source``), or a tmpfs of ``size`` (no source), at ``target``."""

    target: str
    source: str = ""
    read_only: bool = False
    size: str = ""
    checked: binds.Bind | None = None  # an owner's folder (or a guard in it): opened as it was checked


@dataclass(frozen=True)
class Resources:
    memory: str = ""  # "" for no limit
    pids: int = 0  # 0 for no limit
    ulimits: tuple[str, ...] = ()  # "name=soft[:hard]"


@dataclass(frozen=True)
class Spec:
    role: str  # AGENT, PRECHECK or TRANSCRIBE
    name: str
    image: str
    group: str  # the group's folder
    agent: str  # a team member ("" for the group's lead)
    is_main: bool
    user: str  # uid:gid inside
    userns: str
    env: dict[str, str]
    mounts: tuple[Mount, ...]
    labels: dict[str, str]
    resources: Resources
    network: str
    timeout: float  # seconds: the container's whole life
    command: tuple[str, ...] = ()  # () for the image's own
    workdir: str = "/workspace/group"
    runtime: str = ""  # the OCI runtime; "" lets the driver choose
    log_cap: int = 0  # bytes of output kept, when what it prints is read back (0: the driver's default)

    def checked_binds(self) -> list[binds.Bind]:
        return [m.checked for m in self.mounts if m.checked is not None]


def container_name(folder: str, job: int, agent: str = "") -> str:
    return f"nanoclaw-{folder}--{agent}-{job}" if agent else f"nanoclaw-{folder}-{job}"


def precheck_name(folder: str, job: int) -> str:
    return f"{container_name(folder, job)}-check"


def voice_name(folder: str, message: int) -> str:
    """A voice note's transcription container (transcribe.py)."""
    return f"nanoclaw-{folder}-voice-{int(message)}"


def job_model(cfg: Config, job: dict) -> str:
    """The model for a job's container: the one the queue chose and recorded (a job file
    from an older queue has none: chosen here by the same rule, core/model_choice.py)."""
    if isinstance(job.get("model"), str):
        return job["model"]
    return model_choice.for_job(cfg, job["group"], job.get("agent", "")).model


def host_volumes(c: ContainerConfig) -> tuple[Mount, ...]:
    """What this host needs in any container for it to start (``[container] volumes``, e.g.
    the cgroup tree), as the owner or ``nanoclaw doctor`` configured them."""
    out = []
    for entry in c.volumes:
        source, target, *mode = entry.split(":")
        out.append(Mount(target, source, read_only=mode == ["ro"]))
    return tuple(out)


def agent_spec(cfg: Config, job: dict, extra: list[binds.Bind] | None = None) -> Spec:
    """An agent's container for ``job``, from configuration.

    Mounts: the group's folder (rw; its ``agents/`` ro), global memory (ro; rw for main), the
    agent's IPC dirs (``in`` read-only, ``out`` rw), its session state and its API socket
    (ro), and ``extra``: the owner's folders for it as ``owner_folders.for_container``
    opened and checked them (checked again in the container before it runs:
    ``driver.create``). Nothing else of the host but the host's own volumes. A team member
    (``job["agent"]``) gets its own IPC and session, never the lead's.
    """
    c = cfg.container
    agent = job.get("agent", "")
    dirs = group_dirs(cfg, job["group"], agent)
    extra = extra or []
    mounts = [
        Mount("/workspace/group", str(dirs["group"])),
        # The team's member files, read-only over the shared folder: no agent makes or changes one.
        Mount(f"/workspace/group/{team_mod.AGENTS}", str(dirs["team"]), read_only=True),
        Mount("/workspace/global", str(dirs["global"]), read_only=not job["is_main"]),
        # Host to agent read-only (prompts, tasks.json): the host never writes where the agent can.
        Mount("/workspace/ipc/in", str(dirs["in"]), read_only=True),
        Mount("/workspace/ipc/out", str(dirs["out"])),
        Mount("/workspace/session", str(dirs["session"])),
        Mount("/run/nanoclaw-proxy", str(dirs["proxy"]), read_only=True),
        Mount("/tmp", size="512m"),
        *(Mount(b.target, str(b.source), b.read_only, checked=b) for b in extra),
        *host_volumes(c),
    ]
    env = {
        "TZ": cfg.tz,
        "NANOCLAW_JOB": str(job["job"]),
        "NANOCLAW_GROUP": job["group"],
        "NANOCLAW_IS_MAIN": "1" if job["is_main"] else "0",
        "NANOCLAW_IDLE_TIMEOUT": str(c.idle_timeout),
        "NANOCLAW_MODEL": job_model(cfg, job),
        "NANOCLAW_AGENT": agent,
        "HOME": "/tmp/home",  # the image is read-only; session state lives in /workspace/session
    }
    for pair in c.extra_env:
        key, _, value = pair.partition("=")
        env[key] = value
    env["NANOCLAW_MOUNTS"] = ",".join(f"{b.name}:{'ro' if b.read_only else 'rw'}" for b in extra if b.name)
    user, userns = agent_identity(cfg)
    return Spec(
        role=AGENT, name=container_name(job["group"], job["job"], agent), image=c.image, group=job["group"],
        agent=agent, is_main=bool(job["is_main"]), user=user, userns=userns, env=env, mounts=tuple(mounts),
        labels={LABEL: str(job["job"]), "nanoclaw.group": job["group"], "nanoclaw.agent": agent,
                DEADLINE_LABEL: f"{time.time() + c.timeout:.0f}"},
        resources=Resources(c.memory, max(c.pids_limit, 0), tuple(c.ulimits)), network=c.network,
        timeout=c.timeout, runtime=c.runtime)
