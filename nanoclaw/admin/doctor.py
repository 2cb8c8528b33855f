"""``nanoclaw doctor``'s work on the container runtime: the options this host needs, its
storage driver, and how the service user's Podman is run. The command itself is
``cmd_doctor`` (admin/commands/health.py); the checks it makes are ``admin/checks.py``,
which uses what is here (``nanoclaw run-all`` makes some before it starts).

Run as root (as ``install.sh`` does) it checks the service user's rootless
Podman the way the units will use it; run as the service user it checks its
own. ``--redetect`` finds the container options this host needs by trying
them, writes them to ``<config>/detected.toml`` (and the engine's cgroup
manager to the service user's ``containers.conf``) and says what changed;
``--check-runtime`` only tries the configured options (install.sh's re-run).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from nanoclaw.admin.hostcheck import (
    Probe,
    probe_build_args,
    probe_container_options,
    try_run,
)
from nanoclaw.admin.status import systemd_is_pid1
from nanoclaw.core import config_file
from nanoclaw.core.config import DETECTED, DETECTED_KEYS, Config
from nanoclaw.core.safefs import Dir, write_atomic

SERVICE_USER = "nanoclaw"


def podman_as_service_user(cfg: Config, unit: bool = True) -> tuple[str, ...]:
    """How to run podman as the service user: as its unit would (``unit``: agent containers
    start from nanoclaw-podman.service), or as install.sh does (image builds)."""
    if os.geteuid() != 0:
        return ("podman",)
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return ("podman",)
    # (Podman 5's cgroups-v1 warning is left out: doctor names the cgroup version itself.)
    env = [f"HOME={pw.pw_dir}", f"XDG_RUNTIME_DIR={cfg.runtime_dir / 'xdg'}", "PODMAN_IGNORE_CGROUPSV1_WARNING=1"]
    if unit and systemd_is_pid1():
        # inside a transient unit: the same cgroup situation as nanoclaw-podman.service
        return ("systemd-run", "--quiet", "--wait", "--pipe", "--collect", "-p", f"User={SERVICE_USER}",
                "-p", f"Environment={' '.join(env)}", "--working-directory=/", "podman")
    return ("runuser", "-u", SERVICE_USER, "--", "env", *env, "podman")


def _open_as_owner(path: Path, uid: int) -> Dir:
    """Open ``path`` (made if missing), trusting only the ancestors ``uid`` does not own:
    the service user's home is theirs, so a link planted below it is not followed."""
    parts = path.parts
    trusted = Path(parts[0])
    for i in range(1, len(parts)):
        here = Path(*parts[:i + 1])
        try:
            if here.lstat().st_uid == uid:
                break
        except FileNotFoundError:
            break
        trusted = here
    rel = path.relative_to(trusted)
    d = Dir.open(trusted)
    for part in rel.parts:
        nxt = d.sub(part, create=True, mode=0o755)
        os.fchown(nxt.fd, uid, -1) if os.geteuid() == 0 else None
        d.close()
        d = nxt
    return d


def detect(cfg: Config) -> tuple[Probe | None, list[str] | None, list[Probe], str]:
    """(run options, build options or None for same-as-run, failed run attempts, build problem)."""
    found, failures = probe_container_options(cfg.container.base_image, podman_as_service_user(cfg))
    if found is None:
        return None, None, failures, ""
    # Builds run where install.sh (or the owner) runs `nanoclaw image build`, not in a unit.
    build, problem = probe_build_args(cfg.container.base_image, found, podman_as_service_user(cfg, unit=False))
    return found, build, failures, problem


def redetect(cfg: Config, out: Callable[[str], None] = print) -> int:
    """Find the container options by trying them, write them, and say what changed."""
    path = cfg.config_dir / DETECTED
    before = config_file.load().container if path.exists() else None
    found, build, failures, problem = detect(cfg)
    if found is None:
        for f in failures[:8]:
            out(f"  tried {' '.join(f.podman_args()) or 'defaults'} (cgroup manager "
                f"{f.cgroup_manager or 'default'}): {f.error}")
        out("no combination of container options runs a container here; the first cause above is "
            "usually the one to fix" + (f" ({storage_hint(failures[0].error)})" if failures else ""))
        return 1
    if problem:
        out(f"containers run, but no options build an image: {problem}")
    write_atomic(path, found.config_toml(build), 0o644)
    user = _service_user()
    conf = Path(user.pw_dir if user else Path.home()) / ".config" / "containers"
    with _open_as_owner(conf, user.pw_uid if user else os.getuid()) as d:
        if found.containers_conf():
            d.write("containers.conf", found.containers_conf().encode(), 0o644)
            if user and os.geteuid() == 0:
                os.chown("containers.conf", user.pw_uid, user.pw_gid, dir_fd=d.fd, follow_symlinks=False)
        else:
            d.unlink("containers.conf")
    after = config_file.load().container
    changes = [f"{k}: {getattr(before, k)!r} -> {getattr(after, k)!r}" for k in DETECTED_KEYS
               if before is not None and getattr(before, k) != getattr(after, k)]
    out(f"works: {' '.join(found.podman_args()) or 'podman defaults'}"
        + (f"; cgroup manager {found.cgroup_manager}" if found.cgroup_manager else "")
        + (f"; builds with {' '.join(build)}" if build else ""))
    out(f"wrote {path}: " + ("; ".join(changes) if changes else
                             "nothing changed" if before is not None else "first detection"))
    overridden = [k for k in DETECTED_KEYS if k in _owner_container_keys(cfg)]
    if overridden:
        out(f"note: config.toml sets {', '.join(overridden)} under [container], which wins over detection")
    return 0


def _owner_container_keys(cfg: Config) -> set[str]:
    import tomllib
    path = Path(os.environ.get("NANOCLAW_CONFIG") or cfg.config_dir / "config.toml")
    try:
        return set(tomllib.loads(path.read_text()).get("container", {}))
    except (OSError, ValueError):
        return set()


def _service_user() -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(SERVICE_USER) if os.geteuid() == 0 else None
    except KeyError:
        return None


def storage_hint(error: str) -> str:
    """What to do about a probe's failure when the cause is the storage driver's."""
    if "/dev/fuse" in error or "fuse:" in error:
        return ("fuse-overlayfs (Podman's storage here) cannot open /dev/fuse: make it usable for the "
                "service user (on most servers udev does: KERNEL==\"fuse\", MODE=\"0666\"), "
                "then: nanoclaw doctor --redetect")
    if "no space" in error.lower():
        return "the disk is full"
    return "nanoclaw doctor --redetect tries every combination again and says what changed"


def storage_driver(cfg: Config, podman: tuple[str, ...] | None = None) -> str:
    r = subprocess.run([*(podman or podman_as_service_user(cfg)), "info", "--format", "{{.Store.GraphDriverName}}"],
                       capture_output=True, text=True, timeout=60)
    return r.stdout.strip() if r.returncode == 0 else ""


STORAGE_CONF = """# Written by nanoclaw doctor --storage: Podman's own choice here was vfs, which copies
# the whole image for every container (seconds per agent start). fuse-overlayfs
# shares the image's layers instead. Remove this file to go back to Podman's choice
# (the image store must then be made anew: install.sh does it).
[storage]
driver = "overlay"

[storage.options.overlay]
mount_program = "{program}"
"""


def choose_storage(cfg: Config, out: Callable[[str], None] = print) -> int:
    """Where Podman would fall back to vfs, use fuse-overlayfs instead (install.sh, as root).

    The driver of an image store cannot change under existing images, so the
    service user's store is emptied first (install.sh imports and builds the
    images again afterwards). An owner's own storage.conf is left alone.
    """
    user = _service_user()
    if user is None:
        out("--storage sets up the service user's storage: run it as root")
        return 2
    podman = podman_as_service_user(cfg, unit=False)
    conf = Path(user.pw_dir) / ".config" / "containers" / "storage.conf"
    driver = storage_driver(cfg)
    if driver != "vfs":
        out(f"podman storage: {driver or 'unknown'}")
        return 0
    if conf.exists():
        out(f"podman storage: vfs, as {conf} says (slow starts; not changed, it is yours)")
        return 0
    program = shutil.which("fuse-overlayfs")
    if program is None:
        out("podman storage: vfs (slow starts); apt-get install fuse-overlayfs, then run install.sh again")
        return 0
    info = subprocess.run([*podman, "info", "--format", "{{.Store.GraphRoot}}\n{{.Store.RunRoot}}"],
                          capture_output=True, text=True)
    roots = [Path(p) for p in info.stdout.split()]
    subprocess.run(["pkill", "-KILL", "-u", SERVICE_USER], capture_output=True)  # its pause process holds the store
    for root in roots + [cfg.runtime_dir / "xdg" / "libpod"]:
        if root.is_absolute() and SERVICE_USER in str(root):
            shutil.rmtree(root, ignore_errors=True)
    with _open_as_owner(conf.parent, user.pw_uid) as d:
        d.write(conf.name, STORAGE_CONF.format(program=program).encode(), 0o644)
        os.chown(conf.name, user.pw_uid, user.pw_gid, dir_fd=d.fd, follow_symlinks=False)
    now = storage_driver(cfg)
    if now != "overlay":
        conf.unlink()
        for root in roots:
            shutil.rmtree(root, ignore_errors=True)
        out(f"podman storage: fuse-overlayfs did not work here ({now or 'podman failed'}); staying with vfs")
        return 0
    out(f"podman storage: overlay through {program} instead of vfs (images are made again)")
    return 0


def check_runtime(cfg: Config, image: str | None = None, podman: tuple[str, ...] | None = None) -> Probe:
    """Try the configured container options once (a Probe whose ``error`` says why not)."""
    c = cfg.container
    probe = Probe(c.runtime, c.ulimits, "", c.volumes, bool(c.memory))
    return try_run(image or c.base_image, probe, podman or podman_as_service_user(cfg))
