"""Finding the container runtime options this host needs.

Hosts differ: a cgroups-v2 server runs containers with podman's defaults,
while a cgroups-v1/hybrid box without CAP_SYS_RESOURCE needs ``runc`` and
lowered ulimits (raising rlimits fails there). Rather than hard-coding either,
try the candidates with a throw-away container and report the first that
works; ``install.sh`` and the tests write the answer into the configuration.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

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

    def config_toml(self, build_args: list[str] | None = None) -> str:
        """The [container] settings this probe stands for (``detected.toml``)."""
        lines = ["# Found by `nanoclaw doctor --redetect` on this host by trying; config.toml",
                 "# overrides any of these. Re-detect with: nanoclaw doctor --redetect", "[container]",
                 f'runtime = "{self.runtime}"', f"ulimits = {list(self.ulimits)!r}".replace("'", '"'),
                 f"volumes = {list(self.volumes)!r}".replace("'", '"')]
        if not self.limits:
            lines += ['memory = ""  # this host cannot limit rootless containers (cgroups v1)', "pids_limit = 0"]
        if build_args is not None:
            lines.append(f"build_args = {build_args!r}".replace("'", '"'))
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


# Lines that say nothing about why (podman ends many failures with one of these), and its
# warnings that stand before the error without being its cause.
_EMPTY = re.compile(r"^(Error: )?exit status \d+$|^time=\S+ level=(warning|info)|not supported and ignored", re.I)
# What usually is the cause, first: a helper's own complaint comes before podman's summary.
_ROOT = re.compile(r"fuse:|/dev/fuse|permission denied|operation not permitted|no space left|"
                   r"not found|no such file|cannot open", re.I)


def meaningful_error(stderr: str, returncode: int = 1) -> str:
    """The line of podman's error output that says why, not its closing 'exit status 1'.

    A helper's own complaint (``fuse: failed to open /dev/fuse: Permission
    denied``) is preferred, then podman's ``Error:`` line; both are kept when
    they differ. Podman's error text may itself span lines: each is read.
    """
    lines = [line.strip() for line in stderr.splitlines() if line.strip() and not _EMPTY.search(line.strip())]
    roots = [line for line in lines if _ROOT.search(line)]
    errors = [line for line in lines if line.startswith("Error:")]
    picked = roots[:1] + [e[:300] for e in errors[:1] if e not in roots[:1]]
    return " | ".join(picked) or (lines[-1] if lines else f"exit status {returncode}")


def try_run(image: str, probe: Probe, podman: tuple[str, ...] = ("podman",)) -> Probe:
    """Start ``true`` in ``image`` with these options; the returned Probe says whether it worked."""
    engine = [f"--cgroup-manager={probe.cgroup_manager}"] if probe.cgroup_manager else []
    cmd = [*podman, *engine, "run", "--rm", "--network", "none", *probe.podman_args(), image, "true"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return replace(probe, error=str(exc))
    if r.returncode != 0:
        return replace(probe, error=meaningful_error(r.stderr, r.returncode))
    return probe


def try_build(image: str, args: list[str], podman: tuple[str, ...] = ("podman",),
              cgroup_manager: str = "") -> str:
    """Build a one-step image FROM ``image`` with these ``podman build`` options: '' if it
    worked, else why. The context is a fresh directory under /var/tmp, not /tmp (often a
    nosuid,nodev tmpfs), readable by whoever ``podman`` runs as."""
    engine = [f"--cgroup-manager={cgroup_manager}"] if cgroup_manager else []
    with tempfile.TemporaryDirectory(prefix="nanoclaw-probe-", dir="/var/tmp") as ctx:
        Path(ctx).chmod(0o755)
        (Path(ctx) / "Containerfile").write_text(f"FROM {image}\nRUN true\n")
        (Path(ctx) / "Containerfile").chmod(0o644)
        cmd = [*podman, *engine, "build", "--network", "none", "--no-cache", "-q", *args, "-t",
               "localhost/nanoclaw-probe:latest", ctx]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        subprocess.run([*podman, "rmi", "-f", "localhost/nanoclaw-probe:latest"], capture_output=True)
        return "" if r.returncode == 0 else meaningful_error(r.stderr, r.returncode)


def probe_build_args(image: str, run: Probe, podman: tuple[str, ...] = ("podman",)) -> tuple[list[str] | None, str]:
    """The ``podman build`` options this host needs: (None, "") when the run options without
    their volumes (what "same-as-run" means) build; else the first candidate that builds, or
    (None, why) when none does. Mounts that running agents need can break a build."""
    first = ""
    for runtime, ulimits in [(run.runtime, run.ulimits)] + [(r, u) for r in ("", "runc", "crun")
                                                           for u in ((), LOW_ULIMITS)]:
        args = runtime_args(runtime, ulimits, ())
        error = try_build(image, args, podman, run.cgroup_manager)
        if not error:
            return (None if (runtime, ulimits) == (run.runtime, run.ulimits) else args), ""
        first = first or error
    return None, first


def probe_container_options(image: str, podman: tuple[str, ...] = ("podman",)) -> tuple[Probe | None, list[Probe]]:
    """The first candidate that runs a container here, and every failed attempt."""
    failures = []
    for candidate in candidates():
        result = try_run(image, candidate, podman)
        if result.ok:
            return result, failures
        failures.append(result)
    return None, failures
