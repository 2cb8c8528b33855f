"""Finding the container runtime options this host needs.

Hosts differ: a cgroups-v2 server runs containers with podman's defaults,
while a cgroups-v1/hybrid box without CAP_SYS_RESOURCE needs ``runc`` and
lowered ulimits (raising rlimits fails there). Rather than hard-coding either,
try the candidates with a throw-away container and report the first that
works; ``install.sh`` and the tests write the answer into the configuration.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass

LOW_ULIMITS = ("nofile=1024:1024", "nproc=4096:4096")
CANDIDATES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("", ()),  # podman's defaults
    ("", LOW_ULIMITS),
    ("runc", ()),
    ("runc", LOW_ULIMITS),
    ("crun", LOW_ULIMITS),
)


@dataclass(frozen=True)
class Probe:
    runtime: str
    ulimits: tuple[str, ...]
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error

    def podman_args(self) -> list[str]:
        args = ["--runtime", self.runtime] if self.runtime else []
        for u in self.ulimits:
            args += ["--ulimit", u]
        return args


def try_run(image: str, runtime: str, ulimits: tuple[str, ...], podman: tuple[str, ...] = ("podman",)) -> Probe:
    """Start ``true`` in ``image`` with these options; the Probe says whether it worked."""
    probe = Probe(runtime, ulimits)
    cmd = [*podman, "run", "--rm", "--network", "none", *probe.podman_args(), image, "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Probe(runtime, ulimits, str(exc))
    if r.returncode != 0:
        return Probe(runtime, ulimits, (r.stderr.strip().splitlines() or [f"exit {r.returncode}"])[-1])
    return probe


def probe_container_options(image: str, podman: tuple[str, ...] = ("podman",)) -> tuple[Probe | None, list[Probe]]:
    """The first candidate that runs a container here, and every failed attempt."""
    failures = []
    for runtime, ulimits in CANDIDATES:
        result = try_run(image, runtime, ulimits, podman)
        if result.ok:
            return result, failures
        failures.append(result)
    return None, failures
