"""``nanoclaw doctor``: is everything nanoclaw needs in place? Each failure comes with its fix.

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

from nanoclaw import DAEMONS
from nanoclaw.admin.hostcheck import (
    Probe,
    probe_build_args,
    probe_container_options,
    try_run,
)
from nanoclaw.admin.status import UNITS, ask_status, systemd_is_pid1, unit_state
from nanoclaw.core import config as config_mod
from nanoclaw.core.config import DETECTED, DETECTED_KEYS, Config
from nanoclaw.core.credentials import credential_path
from nanoclaw.core.safefs import Dir, write_atomic

SERVICE_USER = "nanoclaw"
FULL_BYTES = 64 * 2**20  # below this the state filesystem counts as full


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
    before = config_mod.load().container if path.exists() else None
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
    after = config_mod.load().container
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


def storage_driver(cfg: Config) -> str:
    r = subprocess.run([*podman_as_service_user(cfg), "info", "--format", "{{.Store.GraphDriverName}}"],
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


class Doctor:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.failures = 0

    def check(self, what: str, ok: bool, detail: str = "", fix: str = "") -> bool:
        if ok:
            print(f"ok    {what}" + (f": {detail}" if detail else ""))
        else:
            self.failures += 1
            print(f"FAIL  {what}" + (f": {detail}" if detail else ""))
            if fix:
                print(f"      fix: {fix}")
        return ok

    def run(self) -> int:
        cfg = self.cfg
        podman = shutil.which("podman")
        self.check("podman installed", bool(podman), podman or "", "apt-get install podman runc uidmap")
        is_root = os.geteuid() == 0
        try:
            pwd.getpwnam(SERVICE_USER)
            has_user = True
        except KeyError:
            has_user = False
        if is_root or has_user:
            self.check(f"service user {SERVICE_USER}", has_user, fix="run install.sh")
            for f in ("/etc/subuid", "/etc/subgid"):
                text = Path(f).read_text() if Path(f).exists() else ""
                self.check(f"{f} range for {SERVICE_USER}", f"{SERVICE_USER}:" in text,
                           fix=f"usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {SERVICE_USER}")
        fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
        mode = {"cgroup2fs": "v2 (unified)", "tmpfs": "v1/hybrid"}.get(fs, fs or "unknown")
        self.check("cgroups", True, mode)
        if podman:
            self._check_containers()
        cred = credential_path(cfg)
        if is_root or cred.exists():
            content = ""
            try:
                content = "".join(line for line in cred.read_text().splitlines() if not line.startswith("#")).strip()
            except OSError:
                pass
            self.check("Anthropic credential", bool(content), str(cred), "sudo nanoclaw credential set")
        if systemd_is_pid1():
            for unit in UNITS:
                state = unit_state(unit)
                self.check(f"unit {unit}", state == "active", state,
                           f"systemctl start {unit}; journalctl -u {unit} -n 50")
        for name in DAEMONS:
            reply, error = ask_status(cfg, name)
            if reply is None:
                self.check(f"{name} answers", False, error, f"systemctl restart nanoclaw-{name}")
                continue
            status = reply.get("status", "")
            self.check(f"{name} answers", bool(reply.get("ok")) and "NOT STORED" not in status, status,
                       "free space where nanoclaw keeps its state" if "disk is full" in status else "")
            if name == "proxy" and reply.get("ok"):
                # The file may be there and still unreadable to the proxy (LoadCredential=).
                self.check("the proxy holds a credential", "NO CREDENTIAL" not in reply.get("status", ""),
                           fix="sudo nanoclaw credential set")
        self._check_allowlists()
        self._check_database()
        target = cfg.state_dir if cfg.state_dir.exists() else Path("/")
        free = shutil.disk_usage(target).free
        if free < FULL_BYTES:
            self.check("disk space", False, f"the disk is full: {free / 2**20:.0f} MiB free on {target}; "
                       "messages cannot be stored", f"free space on the filesystem of {target}")
        else:
            self.check("disk space", free >= 2**30, f"{free / 2**30:.1f} GiB free on {target}",
                       "free space: images need ~1 GiB")
        print("\n" + ("all good" if not self.failures else f"{self.failures} problem(s) found"))
        return 1 if self.failures else 0

    def _check_database(self) -> None:
        """The schema this code knows, and the backups there are."""
        import time

        from nanoclaw.admin.owner import as_owner_of
        from nanoclaw.core import backups, migrations
        cfg = self.cfg
        if not cfg.db_path.exists():
            return
        try:
            found = as_owner_of(cfg.state_dir, lambda: migrations.version_of(cfg.db_path))
        except Exception as exc:  # noqa: BLE001 - said as the check's detail
            self.check("database schema", False, f"cannot read {cfg.db_path}: {exc}")
            return
        self.check("database schema", found == migrations.LATEST, f"{found}" + (
            ", this nanoclaw's" if found == migrations.LATEST else f"; this nanoclaw knows {migrations.LATEST}"),
            "sudo nanoclaw migrate" if found < migrations.LATEST else migrations.newer_text(cfg.db_path, found))
        made = backups.listing(cfg.backup_dir)
        nightly = [b for b in made if b.kind == "nightly"]
        if not made:
            self.check("backups", True, "none yet" + (" (the first tonight)" if cfg.backup.nightly else ""))
            return
        newest = made[-1]
        age = (time.time() - newest.path.stat().st_mtime) / 86400
        stale = cfg.backup.nightly and nightly and time.time() - nightly[-1].path.stat().st_mtime > 3 * 86400
        self.check("backups", not stale, f"{len(made)} in {cfg.backup_dir}, the newest {newest.path.name} "
                   f"({age:.1f} days old)", "systemctl status nanoclaw-backup.timer nanoclaw-backup; "
                   "journalctl -u nanoclaw-backup")

    def _check_allowlists(self) -> None:
        """An invalid allowlist blocks everyone (fail closed): say so, and where."""
        from nanoclaw.core.groups import read_allowlist
        for path in sorted((self.cfg.config_dir / "allowlists").glob("*.json")):
            _, problem = read_allowlist(path)
            self.check(f"allowlist {path.name}", not problem,
                       f"{problem}: nobody can trigger group {path.stem}" if problem else str(path),
                       'fix the file ({"senders": ["jid", ...]}) or remove it to allow everyone')

    def _check_containers(self) -> None:
        cfg = self.cfg
        podman = podman_as_service_user(cfg)
        exists = subprocess.run([*podman, "image", "exists", cfg.container.image], capture_output=True)
        self.check(f"agent image {cfg.container.image}", exists.returncode == 0,
                   fix="nanoclaw image build (as the nanoclaw user: sudo -u nanoclaw nanoclaw image build)")
        base = cfg.container.image if exists.returncode == 0 else cfg.container.base_image
        result = check_runtime(cfg, base)
        driver = storage_driver(cfg)
        self.check("a container starts with the configured options", result.ok,
                   result.error or " ".join(result.podman_args()) or "podman defaults",
                   storage_hint(result.error) if "fuse" in result.error else "sudo nanoclaw doctor --redetect")
        if driver:
            # vfs copies the whole image for every container: seconds per agent start
            self.check("podman storage driver", driver != "vfs", driver + (" (copies the image for every "
                       "container: slow starts)" if driver == "vfs" else ""),
                       "apt-get install fuse-overlayfs, then run install.sh again (it moves the images)")


def check_runtime(cfg: Config, image: str | None = None) -> Probe:
    """Try the configured container options once (a Probe whose ``error`` says why not)."""
    c = cfg.container
    probe = Probe(c.runtime, c.ulimits, "", c.volumes, bool(c.memory))
    return try_run(image or c.base_image, probe, podman_as_service_user(cfg))


def main(cfg: Config, redetect_: bool = False, check_only: bool = False, storage: bool = False,
         out: Callable[[str], None] = print) -> int:
    if storage:
        return choose_storage(cfg, out)
    if redetect_:
        return redetect(cfg, out)
    if check_only:
        result = check_runtime(cfg)
        out("the configured container options work" if result.ok else f"they do not: {result.error}")
        return 0 if result.ok else 1
    return Doctor(cfg).run()
