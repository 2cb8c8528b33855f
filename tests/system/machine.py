"""A throw-away machine with systemd as PID 1, for the system tests and bench.

It is a privileged rootful Podman container booted from an image made offline
with debootstrap (``build-systemd-image.sh``). The checked-out source is
exported into it and ``install.sh`` runs there exactly as an owner would run
it, with Python packages from a wheelhouse prepared on this host (the machine
has no network) and the agent image loaded from an archive.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SYSTEMD_IMAGE = "localhost/nanoclaw-systemd:bookworm"
CACHE = Path.home() / ".cache" / "nanoclaw-test"
UNITS = ["nanoclaw-podman", "nanoclaw-proxy", "nanoclaw-queue", "nanoclaw-runner", "nanoclaw-ipc",
         "nanoclaw-router", "nanoclaw-channel", "nanoclaw-scheduler"]


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, timeout=timeout)


def export_source(dest: Path) -> Path:
    """The working tree as a user's checkout would hold it: tracked and new files, no caches."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, check=True,
                           capture_output=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def wheelhouse(python_version: str) -> Path:
    """Wheels for nanoclaw's dependencies (and the build backend) that install on the machine's
    Python (``python_version``, e.g. Debian 12's 3.11.2), cached by pyproject.toml."""
    import tomllib
    project = (ROOT / "pyproject.toml").read_bytes()
    digest = hashlib.sha256(project + python_version.encode()).hexdigest()[:12]
    d = CACHE / f"system-wheels-{digest}"
    if not (d / ".complete").exists():
        d.mkdir(parents=True, exist_ok=True)
        print(f"system test: downloading wheels into {d}", flush=True)
        # Packages published only as sources are built here first ...
        subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "-w", str(d), str(ROOT)], check=True)
        # ... then every requirement again as the machine's Python would choose it (Requires-Python).
        deps = tomllib.loads(project.decode())["project"]["dependencies"]
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "-d", str(d), "--find-links", str(d),
                        "--only-binary=:all:", "--python-version", python_version, *deps,
                        "setuptools>=77", "wheel"], check=True)
        for own in d.glob("nanoclaw-*.whl"):
            own.unlink()  # the source is installed from the checkout, not from here
        (d / ".complete").touch()
    return d


class Machine:
    """One booted systemd container; ``sh`` runs a shell command inside it as root."""

    def __init__(self, name: str) -> None:
        self.name = name

    @classmethod
    def boot(cls, workdir: Path, images: list[str]) -> "Machine":
        subprocess.run(["bash", str(ROOT / "tests" / "system" / "build-systemd-image.sh"), SYSTEMD_IMAGE],
                       check=True, capture_output=True)
        # Probed only now: the image the probe runs must exist (on a new machine it did not).
        host_options = host_container_options()
        src = export_source(workdir / "src")
        image_dir = workdir / "images"
        image_dir.mkdir()
        for i, image in enumerate(images):
            podman("save", "-q", "-o", str(image_dir / f"{i}.tar"), image)
        name = f"nc-system-{uuid.uuid4().hex[:8]}"
        py = podman("run", "--rm", "--network", "none", *host_options, SYSTEMD_IMAGE, "python3", "-c",
                    "import platform; print(platform.python_version())").stdout.strip()
        podman("run", "-d", "--name", name, "--privileged", "--systemd=always", *host_options,
               "-v", f"{src}:/src", "-v", f"{wheelhouse(py)}:/wheels:ro", "-v", f"{image_dir}:/images:ro",
               SYSTEMD_IMAGE, "/sbin/init")
        m = cls(name)
        deadline = time.time() + 120
        while time.time() < deadline:
            state = m.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return m
            time.sleep(0.5)
        raise RuntimeError(f"systemd in {name} did not come up: {state}")

    def sh(self, script: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", "exec", self.name, "bash", "-c", script], capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"in {self.name}: {script!r} exited {r.returncode}\n"
                                 f"stdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}")
        return r

    def install(self, *options: str) -> subprocess.CompletedProcess:
        opts = " ".join(shlex.quote(o) for o in options)
        return self.sh(f"PIP_NO_INDEX=1 PIP_FIND_LINKS=/wheels /src/install.sh --no-apt {opts}", timeout=900)

    def use_agent(self, image: str) -> None:
        """Point the installed service at an agent image (the scripted test agent: no model
        here) and restart it; returns once every unit is active again."""
        self.sh(f"sed -i 's#^\\[container\\]$#[container]\\nimage = \"{image}\"#' /etc/nanoclaw/config.toml"
                " && systemctl restart nanoclaw.target")
        self.wait_active()

    def wait_active(self, timeout: float = 60) -> None:
        self.wait_for(lambda: all(self.state(u) == "active" for u in UNITS), timeout, "every unit active")

    def state(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit}", check=False).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def nanoclaw(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.sh("nanoclaw " + " ".join(shlex.quote(a) for a in args), check=check, timeout=timeout)

    def query(self, code: str):
        """Run Python against the installed package and its database; returns the printed JSON."""
        prog = ("import json; from pathlib import Path; from nanoclaw.models import *; "
                "open_db(Path('/var/lib/nanoclaw/nanoclaw.db'))\n"
                + code)
        r = self.sh(f"/opt/nanoclaw/bin/python -c {shlex.quote(prog)}")
        return json.loads(r.stdout)

    def replies(self, chat: str = "") -> list[str]:
        where = f"(Message.chat == {chat!r}) & " if chat else ""
        return self.query(f"print(json.dumps([m.text for m in Message.select().where({where}"
                          "(Message.is_bot == True)).order_by(Message.id)]))")

    def wait_for(self, predicate, timeout: float = 90, what: str = "condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(0.3)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")

    def journal(self, *args: str) -> str:
        return self.sh("journalctl --no-pager -o cat " + " ".join(shlex.quote(a) for a in args)).stdout

    def remove(self) -> None:
        podman("rm", "-f", "-t", "0", self.name, check=False)


def host_container_options() -> list[str]:
    """Options this host's rootful podman needs to run the systemd machine (found by trying)."""
    sys.path.insert(0, str(ROOT))
    from nanoclaw.hostcheck import Probe, try_run
    for probe in (Probe(limits=False), Probe("runc", ("nofile=1024:1024", "nproc=4096:4096"), limits=False)):
        if try_run(SYSTEMD_IMAGE, probe).ok:
            return probe.podman_args()
    raise RuntimeError("no podman options run a container on this host")


def workdir() -> Path:
    return Path(tempfile.mkdtemp(prefix="nc-system-"))
