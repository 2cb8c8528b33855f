"""A throw-away Debian server with systemd as PID 1, for the system tests and bench.

It is a privileged rootful Podman container booted from a fresh Debian image
made with debootstrap (``build-machine-image.sh``: systemd and nothing of
nanoclaw's, not even Python). It has the ordinary network (the package
mirrors and PyPI), this host's CA store (as a real machine has its own), and
``/tmp`` as a ``nosuid,nodev`` tmpfs, as on Debian 13 and many servers. The
working tree is copied to ``/root/nanoclaw`` and installed exactly as the
README says: ``cd /root/nanoclaw && sudo ./install.sh``. A reboot is a
restart of the container.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from nanoclaw import registry

ROOT = Path(__file__).resolve().parents[2]
UNITS = [unit.removesuffix(".service") for unit in registry.running()]  # every daemon, and Podman's API
CA_STORE = "/etc/ssl/certs/ca-certificates.crt"
FAKE_API_PORT = 18080
AS_NANOCLAW = "runuser -u nanoclaw -- env XDG_RUNTIME_DIR=/run/nanoclaw/xdg HOME=/var/lib/nanoclaw/home"


def podman(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, timeout=timeout)


def machine_image(suite: str) -> str:
    """``localhost/nanoclaw-machine:<suite>-<digest of its script>``, made with debootstrap on first
    use; a changed script makes a new tag, so no image outlives the script that made it."""
    script = ROOT / "tests" / "system" / "build-machine-image.sh"
    image = f"localhost/nanoclaw-machine:{suite}-{hashlib.sha256(script.read_bytes()).hexdigest()[:10]}"
    subprocess.run(["bash", str(script), suite, image], check=True, capture_output=True, text=True, timeout=1200)
    return image


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


def export_repository(dest: Path) -> str:
    """This clone's git history at ``dest``, with the working tree as its newest commit when it
    differs from HEAD (tests run on uncommitted work too): a checkout whose owner upgrades with
    ``git checkout``. Returns that commit."""
    git = ["git", "-C", str(dest), "-c", "user.name=nanoclaw system test", "-c", "user.email=test@localhost"]
    subprocess.run(["git", "clone", "-q", "--no-checkout", str(ROOT), str(dest)], check=True, capture_output=True)
    export_source(dest)
    subprocess.run([*git, "add", "-A"], check=True, capture_output=True)  # the index was empty: what is here
    if subprocess.run([*git, "diff", "--cached", "--quiet", "HEAD"]).returncode != 0:
        subprocess.run([*git, "commit", "-q", "-m", "the working tree under test"], check=True, capture_output=True)
    return subprocess.run([*git, "rev-parse", "--short=12", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()


class Machine:
    """One booted Debian machine; ``sh`` runs a shell command inside it as root."""

    def __init__(self, name: str, suite: str) -> None:
        self.name, self.suite = name, suite
        self.install_seconds = 0.0
        self.install_output = ""

    @classmethod
    def boot(cls, suite: str) -> "Machine":
        image = machine_image(suite)
        # Probed only now: the image the probe runs must exist (on a new machine it did not).
        options = host_container_options(image)
        name = f"nc-{suite}-{uuid.uuid4().hex[:8]}"
        podman("run", "-d", "--name", name, "--hostname", name, "--privileged", "--systemd=always", *options,
               "--tmpfs", "/tmp:rw,nosuid,nodev", "-v", f"{CA_STORE}:{CA_STORE}:ro", image, "/sbin/init")
        m = cls(name, suite)
        m.wait_booted()
        return m

    def wait_booted(self, timeout: float = 120) -> None:
        state = ""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.sh("systemctl is-system-running", check=False).stdout.strip()
            if state in ("running", "degraded"):
                return
            time.sleep(0.5)
        raise RuntimeError(f"systemd in {self.name} did not come up: {state}")

    def sh(self, script: str, check: bool = True, timeout: float = 300, stdin: str | None = None
           ) -> subprocess.CompletedProcess:
        r = subprocess.run(["podman", "exec", *(["-i"] if stdin is not None else []), self.name, "bash", "-c",
                            script], capture_output=True, text=True, timeout=timeout, input=stdin)
        if check and r.returncode != 0:
            raise AssertionError(f"in {self.name}: {script!r} exited {r.returncode}\n"
                                 f"stdout: {r.stdout[-4000:]}\nstderr: {r.stderr[-4000:]}")
        return r

    def checkout(self) -> None:
        """The working tree at /root/nanoclaw, in root's own 0700 home, as `git clone` leaves it."""
        with tempfile.TemporaryDirectory(prefix="nc-export-") as tmp:
            src = export_source(Path(tmp) / "nanoclaw")
            podman("cp", str(src), f"{self.name}:/root/nanoclaw")
        self.sh("chmod 0700 /root && chown -R root:root /root/nanoclaw")

    def clone(self) -> str:
        """This clone's history at /root/nanoclaw (root's 0700 home), as `git clone` leaves it,
        the working tree its newest commit (returned)."""
        with tempfile.TemporaryDirectory(prefix="nc-clone-") as tmp:
            commit = export_repository(Path(tmp) / "nanoclaw")
            podman("cp", str(Path(tmp) / "nanoclaw"), f"{self.name}:/root/nanoclaw")
        self.sh("chmod 0700 /root && chown -R root:root /root/nanoclaw")
        return commit

    def install_as_readme_says(self, timeout: float = 1500) -> subprocess.CompletedProcess:
        """`cd /root/nanoclaw && sudo ./install.sh`, timed; its whole output is kept."""
        t0 = time.time()
        r = self.sh("cd /root/nanoclaw && sudo ./install.sh 2>&1", check=False, timeout=timeout)
        self.install_seconds = time.time() - t0
        self.install_output = r.stdout
        if r.returncode != 0:
            raise AssertionError(f"install.sh exited {r.returncode} in {self.name}:\n{r.stdout[-6000:]}")
        return r

    def serve_fake_api(self, units: list[str] | None = None) -> None:
        """The fake Messages API on the machine's loopback, as a unit that comes back after a reboot,
        and the proxy pointed at it; then ``units`` (all of this tree's) are active."""
        self.sh(f"""cat > /etc/systemd/system/nc-fake-api.service <<'EOF'
[Unit]
Description=fake Anthropic Messages API (nanoclaw system test)
[Service]
ExecStart=/opt/nanoclaw/bin/python /root/nanoclaw/tests/system/fake_api_main.py {FAKE_API_PORT} /var/log/fake-api.log
[Install]
WantedBy=multi-user.target
EOF
systemctl daemon-reload && systemctl enable --now nc-fake-api
grep -q '^proxy_upstream' /etc/nanoclaw/config.toml || \\
    sed -i '1i proxy_upstream = "http://127.0.0.1:{FAKE_API_PORT}"' /etc/nanoclaw/config.toml
systemctl restart nanoclaw.target""")
        self.wait_active(units=units)

    def restart_fake_api(self) -> None:
        self.sh("systemctl restart nc-fake-api")
        probe = f"/opt/nanoclaw/bin/python -c 'import socket; socket.create_connection((\"127.0.0.1\", {FAKE_API_PORT}))'"
        self.wait_for(lambda: self.sh(probe, check=False).returncode == 0, 30, "the fake API listening")

    def api_log(self) -> list[dict]:
        out = self.sh("cat /var/log/fake-api.log 2>/dev/null", check=False).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def reboot(self) -> None:
        podman("restart", "-t", "20", self.name, timeout=300)
        self.wait_booted()

    def installed_units(self) -> list[str]:
        """Those of this tree's units the installed release has (an older one has fewer)."""
        return [u for u in UNITS if self.sh(f"systemctl cat {u}", check=False).returncode == 0]

    def wait_active(self, timeout: float = 90, units: list[str] | None = None) -> None:
        self.wait_for(lambda: all(self.state(u) == "active" for u in units or UNITS), timeout, "every unit active")

    def state(self, unit: str) -> str:
        return self.sh(f"systemctl is-active {unit}", check=False).stdout.strip()

    def show(self, unit: str, prop: str) -> str:
        return self.sh(f"systemctl show -p {prop} --value {unit}").stdout.strip()

    def nanoclaw(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess:
        return self.sh("nanoclaw " + " ".join(shlex.quote(a) for a in args), check=check, timeout=timeout)

    def as_service_user(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """``nanoclaw ARGS`` as the service user (as install.sh runs its own): what it makes in
        the state directory (a group's folder) is then the agents' to write."""
        return self.sh(f"cd / && {AS_NANOCLAW} nanoclaw " + " ".join(shlex.quote(a) for a in args), timeout=timeout)

    def send(self, text: str, wait: int = 120) -> str:
        return self.nanoclaw("send", "main", "--wait", str(wait), text, timeout=wait + 30).stdout

    def query(self, code: str):
        """Run Python against the installed package and its database; returns the printed JSON."""
        prog = ("import json; from pathlib import Path; from nanoclaw.core.models import *; "
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


def host_container_options(image: str) -> list[str]:
    """Options this host's rootful podman needs to run the machine (found by trying)."""
    sys.path.insert(0, str(ROOT))
    from nanoclaw.admin.hostcheck import Probe, try_run
    tried = []
    for probe in (Probe(limits=False), Probe("runc", ("nofile=1024:1024", "nproc=4096:4096"), limits=False)):
        result = try_run(image, probe)
        if result.ok:
            return probe.podman_args()
        tried.append(result.error)
    raise RuntimeError(f"no podman options run a container on this host: {tried}")


@contextmanager
def kept_on_failure(m: Machine) -> Iterator[Machine]:
    """Around making a machine ready: if that fails (or is interrupted), print its units'
    status and journal, and remove it unless NANOCLAW_KEEP_MACHINE is set; then re-raise."""
    try:
        yield m
    except BaseException:
        print(m.sh("systemctl --no-pager status 'nanoclaw*'; journalctl --no-pager -n 200 -u 'nanoclaw*'",
                   check=False).stdout[-20000:])
        if not os.environ.get("NANOCLAW_KEEP_MACHINE"):
            m.remove()
        raise


def booted_and_upgraded(suite: str, secret: str, previous: str) -> Machine:
    """A machine of ``suite`` on which release ``previous`` was installed as its README says,
    its credential set, and used (``upgrade.use_the_previous_release``: what it held is kept
    in ``m.before``), then upgraded to this working tree as the README says: ``git checkout``
    and ``sudo ./install.sh``. ``install_output`` is the upgrade's."""
    from .upgrade import use_the_previous_release
    m = Machine.boot(suite)
    with kept_on_failure(m):
        m.new_commit = m.clone()
        m.sh(f"cd /root/nanoclaw && git checkout -q {previous}")
        m.install_as_readme_says()
        print(f"system test: install.sh of {previous} on {suite} took {m.install_seconds:.0f} s", flush=True)
        m.serve_fake_api(units=m.installed_units())  # the previous release has fewer units
        m.credential_output = m.sh("nanoclaw credential set", stdin=secret + "\n").stdout
        t0 = time.time()
        m.before = use_the_previous_release(m)
        m.use_seconds = time.time() - t0
        m.sh(f"cd /root/nanoclaw && git checkout -q {m.new_commit}")
        m.install_as_readme_says()  # the upgrade
        m.restart_fake_api()  # this tree's fake, as on a machine installed from it
        print(f"system test: using {previous} took {m.use_seconds:.0f} s, the upgrade's install.sh "
              f"{m.install_seconds:.0f} s", flush=True)
    return m


def booted_and_installed(suite: str, secret: str) -> Machine:
    """A machine of ``suite`` installed as the README says, its credential set with
    `nanoclaw credential set`, answering through the fake API. Kept when
    NANOCLAW_KEEP_MACHINE is set (the name is printed)."""
    m = Machine.boot(suite)
    with kept_on_failure(m):
        m.checkout()
        m.install_as_readme_says()
        print(f"system test: install.sh on {suite} took {m.install_seconds:.0f} s", flush=True)
        m.serve_fake_api()
        m.credential_output = m.sh("nanoclaw credential set", stdin=secret + "\n").stdout
    return m
