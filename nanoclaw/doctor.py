"""``nanoclaw doctor``: is everything nanoclaw needs in place? Each failure comes with its fix.

Run as root (as ``install.sh`` does) it checks the service user's rootless
Podman the way the units will use it; run as the service user it checks its
own. ``--detect-runtime DIR`` finds the container options this host needs and
writes them to ``DIR/container.toml`` and ``DIR/containers.conf``.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from . import DAEMONS
from .config import Config
from .hostcheck import Probe, probe_container_options, try_run
from .proxy import credential_path
from .status import UNITS, ask_status, systemd_is_pid1, unit_state

SERVICE_USER = "nanoclaw"
FULL_BYTES = 64 * 2**20  # below this the state filesystem counts as full


def podman_as_service_user(cfg: Config) -> tuple[str, ...]:
    """How to run podman as the service user, as its unit would."""
    if os.geteuid() != 0:
        return ("podman",)
    try:
        pw = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return ("podman",)
    env = [f"HOME={pw.pw_dir}", f"XDG_RUNTIME_DIR={cfg.runtime_dir / 'xdg'}"]
    if systemd_is_pid1():
        # inside a transient unit: the same cgroup situation as nanoclaw-podman.service
        return ("systemd-run", "--quiet", "--wait", "--pipe", "--collect", "-p", f"User={SERVICE_USER}",
                "-p", f"Environment={' '.join(env)}", "--working-directory=/", "podman")
    return ("runuser", "-u", SERVICE_USER, "--", "env", *env, "podman")


def detect_runtime(cfg: Config, out_dir: Path) -> Probe | None:
    found, failures = probe_container_options(cfg.container.base_image, podman_as_service_user(cfg))
    if found is None:
        for f in failures[:6]:
            print(f"  tried {f.podman_args()} cgroup_manager={f.cgroup_manager or 'default'}: {f.error}")
        return None
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "container.toml").write_text(found.config_toml())
    (out_dir / "containers.conf").write_text(found.containers_conf())
    return found


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
            self.check("Anthropic credential", bool(content), str(cred),
                       f"put an API key or OAuth token in {cred} (mode 0600), then systemctl restart nanoclaw-proxy")
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
                           fix="journalctl -u nanoclaw-proxy -n 20 says why; fix it, then "
                               "systemctl restart nanoclaw-proxy")
        self._check_allowlists()
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

    def _check_allowlists(self) -> None:
        """An invalid allowlist blocks everyone (fail closed): say so, and where."""
        from .groups import read_allowlist
        for path in sorted((self.cfg.config_dir / "allowlists").glob("*.json")):
            _, problem = read_allowlist(path)
            self.check(f"allowlist {path.name}", not problem,
                       f"{problem}: nobody can trigger group {path.stem}" if problem else str(path),
                       f'fix the file ({{"senders": ["jid", ...]}}) or remove it to allow everyone')

    def _check_containers(self) -> None:
        cfg = self.cfg
        podman = podman_as_service_user(cfg)
        exists = subprocess.run([*podman, "image", "exists", cfg.container.image], capture_output=True)
        self.check(f"agent image {cfg.container.image}", exists.returncode == 0,
                   fix="nanoclaw image build (as the nanoclaw user: sudo -u nanoclaw nanoclaw image build)")
        base = cfg.container.image if exists.returncode == 0 else cfg.container.base_image
        c = cfg.container
        probe = Probe(c.runtime, c.ulimits, "", c.volumes, bool(c.memory))
        result = try_run(base, probe, podman)
        fix = "install.sh re-detects; or: nanoclaw doctor --detect-runtime /tmp/nc and copy into config.toml"
        self.check("a container starts with the configured options", result.ok,
                   result.error or " ".join(probe.podman_args()), fix)


def main(cfg: Config, detect: str | None, out: Callable[[str], None] = print) -> int:
    if detect:
        found = detect_runtime(cfg, Path(detect))
        if found is None:
            out("no combination of container options works here (see the attempts above)")
            return 1
        out(f"works: {' '.join(found.podman_args()) or 'podman defaults'}"
            + (f"; cgroup_manager={found.cgroup_manager}" if found.cgroup_manager else ""))
        return 0
    return Doctor(cfg).run()
