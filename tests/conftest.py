"""Test harness: real daemons as OS processes, a real Podman API, real containers."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
AGENT_DIR = ROOT / "tests" / "agent"
WHEELS = Path(os.environ.get("NANOCLAW_TEST_WHEELS", Path.home() / ".cache" / "nanoclaw-test" / "wheels"))
BASE_IMAGE = os.environ.get("NANOCLAW_TEST_BASE", "localhost/nanoclaw-base:bookworm-2")
from nanoclaw.registry import NAMES as DAEMONS  # noqa: E402


def need_podman() -> None:
    """Skip a test that needs Podman where it is missing, except in CI: there a missing
    Podman is a broken machine, and a skipped suite would pass without testing anything."""
    if shutil.which("podman") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("podman is not installed (CI=true: tests that need it fail rather than skip)")
        pytest.skip("podman is not installed")


def _podman(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, **kw)


# The debootstrap base's Python (bookworm's), for the wheel the scripted agent needs.
BASE_PYTHON = os.environ.get("NANOCLAW_TEST_BASE_PYTHON", "3.11")


def msgspec_wheel() -> Path:
    """The msgspec wheel the agent image pins (container/requirements.txt), for the base's
    Python: protocol.py reads spool messages with it. Fetched once into the test wheel cache."""
    import platform
    from nanoclaw.admin.image import PLATFORMS
    pin = next(line.split("#")[0].strip() for line in (ROOT / "container" / "requirements.txt").read_text().splitlines()
               if line.startswith("msgspec=="))
    version = pin.split("==")[1]
    tag = "cp" + BASE_PYTHON.replace(".", "")
    dest = WHEELS
    found = sorted(dest.glob(f"msgspec-{version}-{tag}-*.whl")) if dest.exists() else []
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
               "--dest", str(dest), "--only-binary=:all:", "--python-version", BASE_PYTHON, pin]
        for p in PLATFORMS:
            cmd += ["--platform", f"{p}_{platform.machine()}"]
        subprocess.run(cmd, check=True)
        found = sorted(dest.glob(f"msgspec-{version}-{tag}-*.whl"))
    return found[0]


def build_test_agent_image() -> str:
    """Build (once per content) the scripted test agent image from the debootstrap base."""
    ctx = Path(tempfile.mkdtemp(prefix="nc-agent-ctx-"))
    shutil.copy(AGENT_DIR / "Containerfile", ctx)
    shutil.copy(AGENT_DIR / "scripted_agent.py", ctx)
    import inotify_simple  # one pure-Python module: copied beside protocol.py, no wheel needed
    shutil.copy(inotify_simple.__file__, ctx)
    from nanoclaw.admin.image import SHARED_MODULES
    for module in SHARED_MODULES:
        shutil.copy(module, ctx)
    shutil.copy(msgspec_wheel(), ctx)
    subprocess.run([str(ROOT / "container" / "build-base.sh"), BASE_IMAGE], check=True)
    base_id = _podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
    # A rebuilt base makes a new tag too, so no image outlives the base it was built on.
    digest = hashlib.sha256(base_id.encode() + b"".join((ctx / f).read_bytes()
                                                        for f in sorted(os.listdir(ctx)))).hexdigest()[:12]
    tag = f"localhost/nanoclaw-testagent:{digest}"
    if _podman("image", "exists", tag, check=False).returncode != 0:
        _podman("build", "--network", "none", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, str(ctx))
    shutil.rmtree(ctx)
    return tag


def old_database(path: Path, more_sql: str = "") -> Path:
    """A database as an earlier nanoclaw left it: the "group" table before teams and models,
    with the main group, plus ``more_sql`` (older tables, rows): for the migration tests."""
    import sqlite3
    con = sqlite3.connect(path)
    con.executescript("""
        create table "group" (id integer primary key, jid varchar unique, name varchar, folder varchar unique,
            trigger varchar, requires_trigger integer, is_main integer, added_at real);
        insert into "group" values (1, 'main@term', 'main', 'main', '@Andy', 0, 1, 0);
    """ + more_sql)
    con.close()
    return path


# The release an upgrade starts from (issue 25): the main this round began from. Its code
# comes out of this clone's own history; CI's clone has it.
PREVIOUS_RELEASE = "c7472f1"


def need_commit(commit: str) -> None:
    """Skip a test that needs ``commit`` where this clone lacks it, except in CI (a shallow
    clone there would pass the upgrade tests without running them)."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True).returncode == 0
    if not known:
        reason = f"commit {commit} is not in this clone's history (a shallow clone?)"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


def release_tree(commit: str, dest: Path) -> Path:
    """The ``nanoclaw`` package as ``commit`` had it, under ``dest`` (for PYTHONPATH)."""
    import io
    import tarfile
    need_commit(commit)
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "nanoclaw"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory) -> Path:
    """A directory whose ``nanoclaw`` package is the previous release's code."""
    return release_tree(PREVIOUS_RELEASE, tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The scripted test agent image, built offline from the debootstrap base."""
    need_podman()
    return build_test_agent_image()


@pytest.fixture(scope="session")
def container_options(agent_image) -> dict:
    """Runtime options this host needs, found by trying (as install.sh does)."""
    from nanoclaw.admin.hostcheck import probe_container_options
    found, failures = probe_container_options(agent_image)
    if found is None:
        pytest.fail("no container runtime options work here: " + "; ".join(f.error for f in failures))
    return {"runtime": found.runtime, "ulimits": list(found.ulimits)}


@pytest.fixture(scope="session")
def transcribe_image(container_options) -> str:
    """The voice notes' transcription image, built by voice_image.build (cached by its sources' digest)."""
    need_podman()
    from nanoclaw.admin import voice_image
    from nanoclaw.core import config as config_mod
    cfg = config_mod.Config(container=config_mod.ContainerConfig(
        runtime=container_options["runtime"], ulimits=tuple(container_options["ulimits"]), base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-transcribe:test-{voice_image.source_digest(cfg)}"
    if not voice_image.current(cfg, tag):
        voice_image.build(cfg, tag=tag, wheels=WHEELS.parent / "wheels-voice",
                          progress=lambda line: print("image:", line), workdir=WHEELS.parent)
    return tag


@pytest.fixture(scope="session")
def podman_service():
    """A Podman API socket served by ``podman system service`` for the whole session."""
    need_podman()
    d = Path(tempfile.mkdtemp(prefix="nc-podman-"))
    sock = d / "podman.sock"
    err = d / "service.log"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                                stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.time() + 30
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the Podman API socket never appeared at {sock}: {err.read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)


class Journal:
    """The daemons' journal: a datagram socket that takes journald's native protocol, each
    datagram parsed back into its fields exactly as journald would (core.log.parse_datagram).
    Tests check fields here, never by reading them out of a line's text."""

    def __init__(self, path: Path) -> None:
        import socket as socket_mod
        import threading
        self.path = path
        self.entries: list[dict[str, str]] = []
        self.sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket_mod.SOL_SOCKET, socket_mod.SO_RCVBUF, 4 << 20)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        from nanoclaw.core.log import parse_datagram
        while True:
            try:
                data = self.sock.recv(1 << 20)
            except OSError:
                return
            self.entries.append(parse_datagram(data))

    def of(self, daemon: str, **match: str) -> list[dict[str, str]]:
        """Entries of ``nanoclaw-<daemon>`` whose fields equal ``match`` (GROUP="main", ...)."""
        return [e for e in list(self.entries) if e.get("SYSLOG_IDENTIFIER") == f"nanoclaw-{daemon}"
                and all(e.get(k) == v for k, v in match.items())]

    def close(self) -> None:
        self.sock.close()


JOURNAL_OWN = ("MESSAGE", "PRIORITY", "SYSLOG_IDENTIFIER", "LOGGER")


def subjects(entry: dict[str, str]) -> dict[str, str]:
    """A journal entry's subject fields (GROUP=, JOB=, ...), without the ones every entry has."""
    return {k: v for k, v in entry.items() if k not in JOURNAL_OWN}


class System:
    """One nanoclaw installation in temp dirs, its daemons as separate processes."""

    def __init__(self, base: Path, config: dict) -> None:
        self.base = base
        self.state = base / "state"
        self.run = Path(tempfile.mkdtemp(prefix="ncrun-"))  # short: AF_UNIX paths are limited
        self.confdir = base / "etc"
        self.confdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.confdir / "config.toml"
        self.config_path.write_text(_toml(config))
        self.journal = Journal(self.run / "journal.sock")
        self.env = {**os.environ, "NANOCLAW_CONFIG": str(self.config_path),
                    "NANOCLAW_JOURNAL_SOCKET": str(self.journal.path),
                    "NANOCLAW_STATE_DIR": str(self.state), "NANOCLAW_RUNTIME_DIR": str(self.run),
                    "NANOCLAW_CONFIG_DIR": str(self.confdir), "PYTHONUNBUFFERED": "1",
                    "PYTHONPATH": str(ROOT)}
        self.env.pop("NOTIFY_SOCKET", None)
        self.procs: dict[str, subprocess.Popen] = {}
        self.logs: dict[str, Path] = {}
        # A command a daemon is started under (e.g. a private mount namespace), by daemon name.
        self.wrap: dict[str, list[str]] = {}

    def set_credential(self, secret: str) -> Path:
        """The proxy's Anthropic credential, where `nanoclaw credential set` puts it (0600)."""
        cred = self.confdir / "credentials" / "anthropic-credential"
        cred.parent.mkdir(parents=True, exist_ok=True)
        cred.write_text(secret + "\n")
        cred.chmod(0o600)
        return cred

    def cli(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "nanoclaw", *args], env=self.env, text=True,
                              capture_output=True, check=check, timeout=timeout)

    def start(self, *names: str) -> None:
        for name in names or DAEMONS:
            if name in self.procs and self.procs[name].poll() is None:
                # a second one would serve the same socket and never be stopped
                raise AssertionError(f"{name} is already running (pid {self.procs[name].pid})")
        for name in names or DAEMONS:
            log = self.base / f"{name}.log"
            self.logs[name] = log
            with open(log, "ab") as fh:
                self.procs[name] = subprocess.Popen([*self.wrap.get(name, []), sys.executable, "-m", "nanoclaw", name],
                                                    env=self.env, stdout=fh, stderr=subprocess.STDOUT)
        for name in names or DAEMONS:
            self.wait_ready(name)

    def wait_ready(self, name: str, timeout: float = 20) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.procs[name].poll() is not None:
                raise AssertionError(f"{name} exited: {self.log(name)[-2000:]}")
            try:
                if self.request(name, {"op": "ping"}, timeout=1).get("ok"):
                    return
            except OSError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"{name} not ready: {self.log(name)[-2000:]}")

    def stop(self, *names: str, sig: int = signal.SIGTERM) -> None:
        for name in names or list(self.procs):
            proc = self.procs.pop(name, None)
            if proc and proc.poll() is None:
                proc.send_signal(sig)
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()

    def kill(self, name: str) -> None:
        self.stop(name, sig=signal.SIGKILL)

    def restart(self, name: str, sig: int = signal.SIGTERM) -> None:
        self.stop(name, sig=sig)
        self.start(name)

    def log(self, name: str) -> str:
        path = self.logs.get(name)
        return path.read_text(errors="replace") if path and path.exists() else ""

    def request(self, name: str, obj: dict, timeout: float = 10) -> dict:
        from nanoclaw.core.protocol import request
        return request(self.run / f"{name}.sock", obj, timeout)

    def nudge(self, name: str) -> None:
        from nanoclaw.core.protocol import nudge
        assert nudge(self.run / f"{name}.sock"), f"{name} is not listening"

    def send(self, group: str, text: str, msg_id: str | None = None, sender: str = "owner@term") -> dict:
        reply = self.request("channel", {"op": "inbound", "group": group, "text": text,
                                         "id": msg_id or os.urandom(8).hex(), "sender": sender})
        assert reply.get("ok"), reply
        return reply

    def watch(self, group: str) -> "Watcher":
        return Watcher(self.run / "channel.sock", group)

    def db(self):
        import sqlite3
        con = sqlite3.connect(self.state / "nanoclaw.db", timeout=10)
        con.row_factory = sqlite3.Row
        return con

    def replies(self, chat: str) -> list[str]:
        with self.db() as con:
            return [r["text"] for r in con.execute(
                "select text from message where chat=? and is_bot=1 order by id", (chat,))]

    def wait_for(self, predicate, timeout: float = 60, interval: float = 0.1, what: str = "condition"):
        deadline = time.time() + timeout
        while time.time() < deadline:
            value = predicate()
            if value:
                return value
            time.sleep(interval)
        logs = "\n".join(f"--- {n}\n{self.log(n)[-3000:]}" for n in self.logs)
        raise AssertionError(f"timed out waiting for {what}\n{logs}")

    def barrier(self, group: str = "main", timeout: float = 60, *, sender: str = "owner@term",
                trigger: str = "") -> str:
        """Send a fresh message and wait for its answer: everything before it has been through
        the pipeline (each daemon works in order), so a check for what must NOT have happened
        can be made now, instead of after a guessed sleep. Returns the answer's text. In a
        group that needs its trigger, pass it (and a ``sender`` its allowlist admits): the
        answer is then also the next thing the chat hears after what came before."""
        token = f"barrier {os.urandom(4).hex()}"
        w = self.watch(group)
        try:
            self.send(group, f"{trigger} {token}" if trigger else token, sender=sender)
            while (text := w.reply(timeout)) != f"echo: {token}":
                pass
        finally:
            w.close()
        return text

    def wait_replies(self, chat: str, n: int, timeout: float = 60) -> list[str]:
        return self.wait_for(lambda: r if len(r := self.replies(chat)) >= n else None, timeout,
                             what=f"{n} replies in {chat}")

    def close(self) -> None:
        self.stop()
        self.journal.close()
        shutil.rmtree(self.run, ignore_errors=True)


class Watcher:
    """A terminal watching one chat through the channel socket, as `nanoclaw chat` does."""

    def __init__(self, sock: Path, group: str) -> None:
        from nanoclaw.core.protocol import LineClient
        self.client = LineClient(sock, timeout=10)
        self.client.send({"op": "watch", "group": group})
        self.hello = self.client.recv()
        assert self.hello.get("ok"), self.hello

    def next(self, timeout: float) -> dict:
        self.client.sock.settimeout(timeout)
        return self.client.recv()

    def reply(self, timeout: float = 60) -> str:
        """The next message from the assistant."""
        deadline = time.time() + timeout
        while True:
            event = self.next(max(0.1, deadline - time.time()))
            if event.get("op") == "message" and event.get("from") == "assistant":
                return event["text"]

    def said(self, timeout: float = 60) -> tuple[str, str]:
        """The next message from the assistant or a team member: (the name it went out under, text)."""
        deadline = time.time() + timeout
        while True:
            event = self.next(max(0.1, deadline - time.time()))
            if event.get("op") == "message" and event.get("from") == "assistant":
                return event.get("name", ""), event["text"]

    def close(self) -> None:
        self.client.close()


def _toml(cfg: dict, prefix: str = "") -> str:
    lines, tables = [], []
    for k, v in cfg.items():
        (tables if isinstance(v, dict) else lines).append((k, v))
    out = [f"{k} = {json.dumps(v)}" for k, v in lines]
    for name, table in tables:  # nested dicts are sub-tables: [egress.groups.family]
        out.append(f"\n[{prefix}{name}]")
        out.append(_toml(table, f"{prefix}{name}.").rstrip("\n"))
    return "\n".join(out) + "\n"


@pytest.fixture
def make_system(tmp_path, request):
    """Factory for a System with test-friendly settings; everything is torn down after."""
    made: list[System] = []

    def make(container: dict | None = None, **settings) -> System:
        runtime = {}
        if container and "image" in container:
            runtime = request.getfixturevalue("container_options")
        base = tmp_path / f"sys{len(made)}"
        cfg = {"backoff_base": 0.2, "backoff_max": 1.0, "timezone": "UTC",
               "scheduler": "crontab", "crontab_file": str(base / "crontab"), **settings,
               # idle containers exit (the scripted agent knows no pause); tests of pausing set a budget
               "container": {"idle_timeout": 1.0, "timeout": 60.0, "paused_memory_mib": 0, **runtime,
                             **(container or {})}}
        system = System(base, cfg)
        made.append(system)
        return system

    yield make
    for system in made:
        system.close()


@pytest.fixture
def system(make_system, agent_image, podman_service) -> System:
    """A running nanoclaw with the scripted agent in real containers and a main group."""
    s = make_system(container={"image": agent_image, "podman_url": podman_service})
    s.cli("groups", "add", "main", "--main")
    s.start()
    yield s
    # containers this system started must not outlive it
    _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)



@pytest.fixture(scope="session")
def real_agent_image(container_options) -> str:
    """The real agent image (claude-agent-sdk + agent runner), built offline by `nanoclaw image build`."""
    from nanoclaw.admin import image
    from nanoclaw.core import config as config_mod
    cfg = config_mod.Config(container=config_mod.ContainerConfig(
        runtime=container_options["runtime"], ulimits=tuple(container_options["ulimits"]),
        base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-agent:test-{image.source_digest()}"
    if not image.image_exists(tag):
        image.build(cfg, tag=tag, wheels=WHEELS, progress=lambda line: print("image:", line), workdir=WHEELS.parent)
    return tag


@pytest.fixture
def fake_api():
    from fake_anthropic import FakeAnthropic
    api = FakeAnthropic().start()
    yield api
    api.stop()


SECRET = "sk-ant-api03-TESTSECRET-" + os.urandom(6).hex()


@pytest.fixture
def make_agent_system(make_system, real_agent_image, podman_service, fake_api):
    """A nanoclaw whose agents are the real image, talking to the fake API via the proxy."""
    def make(credential: str = SECRET, settings: dict | None = None, **container) -> System:
        s = make_system(proxy_upstream=fake_api.url, **(settings or {}),
                        container={"image": real_agent_image, "podman_url": podman_service,
                                   "idle_timeout": 2.0, "timeout": 120.0,
                                   "extra_env": ["CLAUDE_CODE_MAX_RETRIES=0"], **container})
        s.set_credential(credential)
        s.cli("groups", "add", "main", "--main")
        s.start()
        return s
    yield make
    _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)


@pytest.fixture
def need_root_and_strace():
    """strace, and root for it and for the private mount namespace (as in CI): network tests that prove a refusal."""
    missing = "strace is not installed" if subprocess.run(["which", "strace"], capture_output=True).returncode \
        else "not root (a private /etc/hosts needs a mount namespace)" if os.geteuid() != 0 else ""
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI=true: the refusal evidence needs it)")
        pytest.skip(missing)


@pytest.fixture
def offline_system(make_system) -> System:
    """A nanoclaw with no containers involved (daemons that do not need Podman)."""
    return make_system()
