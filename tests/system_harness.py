"""One nanoclaw installation for a test: its daemons as OS processes on temp dirs (``System``),
the journal they log to (a journald stand-in), and a terminal watching a chat (``Watcher``).
The fixtures that make one (``make_system``, ``system``, ...) are in conftest.py."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from nanoclaw.registry import NAMES as DAEMONS

ROOT = Path(__file__).resolve().parent.parent

# The Anthropic credential a test system is given unless the test names one (make_agent_system).
SECRET = "sk-ant-api03-TESTSECRET-" + os.urandom(6).hex()


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

    def job_statuses(self) -> list[str]:
        """Every job's status, oldest first."""
        with self.db() as con:
            return [r[0] for r in con.execute("select status from job order by id")]

    def wait_idle(self, timeout: float = 60) -> None:
        """Wait until no job is queued or running: every container has exited."""
        self.wait_for(lambda: self.db().execute(
            "select count(*) from job where status in ('queued', 'running')").fetchone()[0] == 0,
            timeout, what="containers to exit")

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
