"""The checks ``nanoclaw doctor`` makes, each failure with its fix. ``nanoclaw run-all`` makes the
ones that matter before a first message (:meth:`Doctor.preflight`) and prints those that fail.

Where the daemons run decides some fixes. As systemd units (systemd is PID 1 and install.sh
installed them) a daemon that does not answer is restarted with systemctl, and the service
user's rootless Podman needs its subordinate ids. Otherwise they run under ``nanoclaw run-all``,
which is then what to start: as root it drives rootful Podman (agents run as an unprivileged
uid inside their containers) and needs neither the service user nor subordinate ids; as
another user, rootless Podman needs that user's own subordinate ids.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

from nanoclaw import registry
from nanoclaw.admin.doctor import (
    SERVICE_USER,
    check_runtime,
    podman_as_service_user,
    storage_driver,
    storage_hint,
)
from nanoclaw.admin.status import UNITS, ask_status, systemd_is_pid1, unit_state, units_installed
from nanoclaw.core import faults
from nanoclaw.core.config import Config
from nanoclaw.core.credentials import CredentialError, credential_path, load_credential
from nanoclaw.core.timer_specs import CRON_FIX, crontab_program

RUN_ALL_FIX = "start nanoclaw run-all (every daemon in the foreground: keep its terminal open, e.g. in tmux)"


def cron_daemon_running() -> bool:
    """Whether a cron daemon runs (a process named cron or crond): crontab lines need one."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "comm").read_text().strip() in ("cron", "crond"):
                    return True
            except OSError:
                continue
    return False


def image_exists(podman: tuple[str, ...], image: str) -> bool:
    return subprocess.run([*podman, "image", "exists", image], capture_output=True).returncode == 0


class Doctor:
    """One pass of checks. ``podman`` is how to run podman (default: as the units do);
    ``show_ok`` False prints only the failures (run-all's pre-flight)."""

    def __init__(self, cfg: Config, podman: tuple[str, ...] | None = None, out: Callable[[str], None] = print,
                 show_ok: bool = True) -> None:
        self.cfg = cfg
        self.podman = podman
        self.out = out
        self.show_ok = show_ok
        self.failures = 0
        self.units = units_installed()

    def check(self, what: str, ok: bool, detail: str = "", fix: str = "") -> bool:
        if ok:
            if self.show_ok:
                self.out(f"ok    {what}" + (f": {detail}" if detail else ""))
        else:
            self.failures += 1
            self.out(f"FAIL  {what}" + (f": {detail}" if detail else ""))
            if fix:
                self.out(f"      fix: {fix}")
        return ok

    def note(self, what: str, detail: str) -> None:
        """Something that does not apply here, said so: neither ok nor a failure."""
        if self.show_ok:
            self.out(f"--    {what}: {detail}")

    def run(self) -> int:
        podman = shutil.which("podman")
        self.check("podman installed", bool(podman), podman or "", "apt-get install podman runc uidmap")
        self._check_ids()
        fs = subprocess.run(["stat", "-fc", "%T", "/sys/fs/cgroup"], capture_output=True, text=True).stdout.strip()
        self.check("cgroups", True, {"cgroup2fs": "v2 (unified)", "tmpfs": "v1/hybrid"}.get(fs, fs or "unknown"))
        if podman:
            self._check_containers()
        self._check_credential()
        self._check_timers()
        self._check_daemons()
        self._check_allowlists()
        self._check_database()
        self._check_disk()
        self.out("\n" + ("all good" if not self.failures else f"{self.failures} problem(s) found"))
        return 1 if self.failures else 0

    def preflight(self) -> int:
        """What a first message needs, checked before the daemons start: the number of problems."""
        if self.check("podman installed", bool(shutil.which("podman")), fix="apt-get install podman runc uidmap"):
            self._check_containers()
        self._check_credential()
        self._check_timers()
        self._check_allowlists()
        self._check_disk()
        return self.failures

    def _check_ids(self) -> None:
        is_root = os.geteuid() == 0
        try:
            pwd.getpwnam(SERVICE_USER)
            has_user = True
        except KeyError:
            has_user = False
        if has_user or (is_root and self.units):
            self.check(f"service user {SERVICE_USER}", has_user, fix="run install.sh")
            for f in ("/etc/subuid", "/etc/subgid"):
                text = Path(f).read_text() if Path(f).exists() else ""
                self.check(f"{f} range for {SERVICE_USER}", f"{SERVICE_USER}:" in text,
                           fix=f"usermod --add-subuids 200000-265535 --add-subgids 200000-265535 {SERVICE_USER}")
        elif is_root:
            self.note(f"service user {SERVICE_USER}", "not needed here: nanoclaw run-all as root drives rootful "
                      "Podman (agents run as an unprivileged uid in their containers); install.sh makes it "
                      "for the systemd units")
            self.note("/etc/subuid, /etc/subgid", "not needed for a run-all as root (the service user's "
                      "rootless Podman needs a range: install.sh adds it)")
        else:
            me = pwd.getpwuid(os.getuid()).pw_name
            for f in ("/etc/subuid", "/etc/subgid"):
                text = Path(f).read_text() if Path(f).exists() else ""
                self.check(f"{f} range for {me}", any(line.split(":")[0] in (me, str(os.getuid()))
                                                      for line in text.splitlines()),
                           f"rootless Podman (nanoclaw run-all as {me}) maps the agents' ids into it",
                           f"sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {me}")

    def _check_voice(self, podman: tuple[str, ...], as_service_user: bool) -> None:
        """The voice engine: the transcription image is here (it holds the model and the engine)."""
        v = self.cfg.voice
        if not v.enabled:
            self.note("voice engine", "off ([voice] enabled = false): voice notes reach agents as files")
            return
        exists = image_exists(podman, v.image)
        self.check(f"voice engine: transcription image {v.image}", exists,
                   "faster-whisper, model in the image" if exists else
                   "missing: voice notes reach agents untranscribed, each with one line to the chat",
                   "nanoclaw image build" + (" (as the nanoclaw user: sudo -u nanoclaw nanoclaw image build)"
                                             if as_service_user else ""))

    def _check_containers(self) -> None:
        cfg = self.cfg
        podman = self.podman or podman_as_service_user(cfg)
        as_service_user = podman[0] != "podman"
        image, base = cfg.container.image, cfg.container.base_image
        exists = image_exists(podman, image)
        self.check(f"agent image {image}", exists, "" if exists else "missing: no agent can answer until it is built",
                   "nanoclaw image build" + (" (as the nanoclaw user: sudo -u nanoclaw nanoclaw image build)"
                                             if as_service_user else ""))
        if not exists and not image_exists(podman, base):
            self.note("container options", f"not tried: neither {image} nor {base} is here to try them with")
            return
        self._check_voice(podman, as_service_user)
        result = check_runtime(cfg, image if exists else base, podman)
        self.check("a container starts with the configured options", result.ok,
                   result.error or " ".join(result.podman_args()) or "podman defaults",
                   storage_hint(result.error) if "fuse" in result.error else "nanoclaw doctor --redetect"
                   + ("" if os.geteuid() == 0 or not as_service_user else " (as root)"))
        driver = storage_driver(cfg, podman) if self.show_ok else ""
        if driver:
            # vfs copies the whole image for every container: seconds per agent start
            self.check("podman storage driver", driver != "vfs", driver + (" (copies the image for every "
                       "container: slow starts)" if driver == "vfs" else ""),
                       "apt-get install fuse-overlayfs, then run install.sh again (it moves the images)")

    def _check_credential(self) -> None:
        cfg = self.cfg
        path = credential_path(cfg)
        if not (os.geteuid() == 0 or path.exists() or not self.units):
            return  # under the units the file is root's: only root can look
        try:
            load_credential(cfg)
            ok, detail = True, str(path)
        except CredentialError as exc:  # its own hint says sudo; the fix below says what applies here
            ok, detail = False, str(exc).partition(": set it with")[0]
        writable = os.access(cfg.config_dir if cfg.config_dir.exists() else cfg.config_dir.parent, os.W_OK)
        self.check("Anthropic credential", ok, detail,
                   ("" if writable and not self.units else "sudo ") + "nanoclaw credential set")

    def _check_timers(self) -> None:
        """Scheduled tasks need systemd's timers (the units) or cron (crontab lines)."""
        from nanoclaw.daemons.scheduler import backend_kind
        if backend_kind(self.cfg) != "crontab" or self.cfg.crontab_file:
            return
        program = crontab_program()
        if self.check("cron for scheduled tasks", program is not None,
                      f"crontab at {program}" if program else "no crontab program on PATH: scheduled tasks "
                      "are kept, but none can fire until there is one", CRON_FIX):
            self.check("cron daemon running", cron_daemon_running(),
                       "" if cron_daemon_running() else "crontab lines are written, but nothing runs them",
                       "service cron start (or run cron as root)")

    def _check_daemons(self) -> None:
        cfg = self.cfg
        if self.units:
            for unit in UNITS:
                state = unit_state(unit)
                self.check(f"unit {unit}", state == "active", state,
                           f"systemctl start {unit}; journalctl -u {unit} -n 50")
        elif systemd_is_pid1():
            self.note("systemd units", "not installed: the daemons run under nanoclaw run-all "
                      "(install.sh installs the units)")
        replies = {name: ask_status(cfg, name) for name in registry.NAMES}
        if all(reply is None for reply, _ in replies.values()):
            self.check("daemons answer", False, "none does: " + ("their units are not running" if self.units
                                                                  else "nanoclaw run-all is not running"),
                       "systemctl start nanoclaw.target" if self.units else RUN_ALL_FIX)
            return
        for name, (reply, error) in replies.items():
            if reply is None:
                self.check(f"{name} answers", False, error, f"systemctl restart nanoclaw-{name}" if self.units
                           else f"see its lines in nanoclaw run-all's output (it restarts it); or {RUN_ALL_FIX}")
                continue
            status = reply.get("status", "")
            timers = name == "scheduler" and status.startswith(("NO CRONTAB PROGRAM", "TIMERS FAILING"))
            self.check(f"{name} answers", bool(reply.get("ok")) and "NOT STORED" not in status and not timers
                       and faults.MARK not in status, status,
                       "free space where nanoclaw keeps its state" if "disk is full" in status
                       else "check the disk where nanoclaw keeps its state" if faults.MARK in status
                       else CRON_FIX if timers else "")
            if name == "proxy" and reply.get("ok"):
                # The file may be there and still unreadable to the proxy (LoadCredential=).
                self.check("the proxy holds a credential", "NO CREDENTIAL" not in reply.get("status", ""),
                           fix=("sudo " if self.units else "") + "nanoclaw credential set")

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

    def _check_disk(self) -> None:
        target = self.cfg.state_dir if self.cfg.state_dir.exists() else Path("/")
        free = shutil.disk_usage(target).free
        low = faults.low_space(target)
        if low is not None:
            self.check("disk space", False, f"{low}; messages cannot be stored and no agent starts",
                       f"free space on the filesystem of {target}")
        else:
            self.check("disk space", free >= 2**30, f"{free / 2**30:.1f} GiB free on {target}",
                       "free space: images need ~1 GiB")
