"""Finding the container runtime options this host needs.

Hosts differ: a cgroups-v2 server runs containers with podman's defaults,
while a cgroups-v1/hybrid box without CAP_SYS_RESOURCE needs ``runc`` and
lowered ulimits (raising rlimits fails there). Rather than hard-coding either,
try the candidates with a throw-away container and report the first that
works; ``install.sh`` and the tests write the answer into the configuration.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, replace

LOW_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
CGROUP_VOLUME = "/sys/fs/cgroup:/sys/fs/cgroup:ro"


def runtime_args(runtime: str, ulimits: tuple[str, ...], volumes: tuple[str, ...]) -> list[str]:
    """The ``podman run``/``build`` options for a host's runtime, ulimits and extra volumes."""
    args = ["--runtime", runtime] if runtime else []
    for u in ulimits:
        args += ["--ulimit", u]
    for v in volumes:
        args += ["-v", v]
    return args


@dataclass(frozen=True)
class Probe:
    """One combination of container options, and what happened when it was tried."""

    runtime: str = ""
    ulimits: tuple[str, ...] = ()
    cgroup_manager: str = ""  # engine-wide (containers.conf), e.g. "cgroupfs"
    volumes: tuple[str, ...] = ()  # e.g. the cgroup tree, read-only, for a unit nested in a container
    limits: bool = True  # memory and pids limits (rootless on cgroups v1 cannot set them)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def podman_args(self) -> list[str]:
        args = runtime_args(self.runtime, self.ulimits, self.volumes)
        if self.limits:
            args += ["--memory", "512m", "--pids-limit", "256"]
        return args

    def config_toml(self) -> str:
        """The [container] settings this probe stands for."""
        lines = [f'runtime = "{self.runtime}"', f"ulimits = {list(self.ulimits)!r}".replace("'", '"'),
                 f"volumes = {list(self.volumes)!r}".replace("'", '"')]
        if not self.limits:
            lines += ['memory = ""  # this host cannot limit rootless containers (cgroups v1)', "pids_limit = 0"]
        return "\n".join(lines) + "\n"

    def containers_conf(self) -> str:
        return f'[engine]\ncgroup_manager = "{self.cgroup_manager}"\n' if self.cgroup_manager else ""


def candidates() -> list[Probe]:
    """From podman's defaults to the most adapted, in order."""
    out = []
    for manager in ("", "cgroupfs"):
        for volumes in ((), (CGROUP_VOLUME,)):
            for runtime in ("", "runc", "crun"):
                for ulimits in ((), LOW_ULIMITS):
                    for limits in (True, False):
                        out.append(Probe(runtime, ulimits, manager, volumes, limits))
    return out


def try_run(image: str, probe: Probe, podman: tuple[str, ...] = ("podman",)) -> Probe:
    """Start ``true`` in ``image`` with these options; the returned Probe says whether it worked."""
    engine = [f"--cgroup-manager={probe.cgroup_manager}"] if probe.cgroup_manager else []
    cmd = [*podman, *engine, "run", "--rm", "--network", "none", *probe.podman_args(), image, "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return replace(probe, error=str(exc))
    if r.returncode != 0:
        return replace(probe, error=(r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1])
    return probe


def probe_container_options(image: str, podman: tuple[str, ...] = ("podman",)) -> tuple[Probe | None, list[Probe]]:
    """The first candidate that runs a container here, and every failed attempt."""
    failures = []
    for candidate in candidates():
        result = try_run(image, candidate, podman)
        if result.ok:
            return result, failures
        failures.append(result)
    return None, failures
