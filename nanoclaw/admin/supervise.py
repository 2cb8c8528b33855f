"""``nanoclaw run-all``: the daemons (and the Podman API) as child processes.

A stand-in for systemd where there is none (a laptop, a container): each daemon is its own
OS process, its output prefixed with its name; a child that dies is restarted after a second,
as ``Restart=on-failure`` would.

Before starting it makes the checks of ``nanoclaw doctor`` that a first message needs (the
agent image, that a container starts with the configured options, the credential, cron for
scheduled tasks) and prints doctor's lines for what fails, then starts anyway: the terminal
chat, groups and tasks work without any of them, the problems are on screen before the first
message, and each can be fixed (an image built, a credential set) while it runs.

Stopping (Ctrl-C, SIGTERM, the terminal closing) stops what it started, in order: the queue,
scheduler and runner first, so no new work starts and the runner ends the agent containers
(asked to close, killed after a grace; recorded ``stopped``, so their unanswered messages run
at the next start); then the other daemons; the Podman API service last, since the runner
needs it to the end. The children have a process group of their own, so a Ctrl-C in the
terminal reaches run-all alone, which orders the stop, and they get SIGTERM should run-all
itself die. A container of ours still running at the end is named, with how long it can live.
"""

from __future__ import annotations

import ctypes
import os
import selectors
import signal
import subprocess
import sys
import time

from nanoclaw import registry
from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file
from nanoclaw.daemons.runner.drain import STOP_ENV, STOP_GRACE, STOP_WAIT
from nanoclaw.daemons.runner.spec import DEADLINE_LABEL, LABEL

FIRST = ("queue", "scheduler", "runner")  # stopped first: nothing new starts, and agents end
PR_SET_PDEATHSIG = 1


def podman_service_cmd(cfg: config_mod.Config) -> list[str] | None:
    """The command serving the Podman API socket, unless one is configured elsewhere."""
    if cfg.container.podman_url:
        return None
    return ["podman", "system", "service", "--time=0", cfg.podman_socket]


def podman_cli(cfg: config_mod.Config) -> tuple[str, ...]:
    """The podman command that sees what run-all's agents will use: this user's own, or the
    configured service's."""
    return ("podman", "--url", cfg.container.podman_url) if cfg.container.podman_url else ("podman",)


def preflight(cfg: config_mod.Config) -> int:
    """Doctor's checks that a first message needs; prints only the failures. Their number."""
    from nanoclaw.admin.checks import Doctor
    problems = Doctor(cfg, podman=podman_cli(cfg), show_ok=False).preflight()
    if problems:
        print(f"run-all: {problems} problem(s) above (as nanoclaw doctor says them); starting anyway: "
              "what works can be tried while they are fixed", flush=True)
    return problems


def _die_with_parent() -> None:
    """In the child: SIGTERM should run-all die without stopping it (SIGKILL, a crash)."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class Supervisor:
    def __init__(self, commands: dict[str, list[str]]) -> None:
        self.commands = commands
        self.procs: dict[str, subprocess.Popen] = {}
        self.sel = selectors.DefaultSelector()
        self.buffers: dict[str, bytes] = {}
        self.width = max(map(len, [*commands, "run-all"]))
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", STOP_ENV: "1"}

    def say(self, name: str, text: str) -> None:
        sys.stdout.write(f"{name:<{self.width}} | {text}\n")
        sys.stdout.flush()

    def start(self, name: str) -> None:
        proc = subprocess.Popen(self.commands[name], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=self.env, process_group=0,
                                preexec_fn=_die_with_parent)
        self.procs[name] = proc
        os.set_blocking(proc.stdout.fileno(), False)
        self.sel.register(proc.stdout, selectors.EVENT_READ, name)

    def pump(self, timeout: float) -> None:
        """Copy what the children wrote, line by line with their names, for up to ``timeout``."""
        for key, _ in self.sel.select(timeout=timeout):
            name = key.data
            try:
                chunk = key.fileobj.read()
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                self.sel.unregister(key.fileobj)
                continue
            *lines, self.buffers[name] = (self.buffers.get(name, b"") + chunk).split(b"\n")
            for line in lines:
                self.say(name, line.decode(errors="replace"))

    def stop(self, names: list[str], wait: float) -> None:
        """SIGTERM these children, copy their last words while they stop, SIGKILL any left."""
        alive = [n for n in names if n in self.procs and self.procs[n].poll() is None]
        for name in alive:
            self.procs[name].terminate()
        deadline = time.monotonic() + wait
        while any(self.procs[n].poll() is None for n in alive) and time.monotonic() < deadline:
            self.pump(0.1)
        for name in alive:
            if self.procs[name].poll() is None:
                self.say("run-all", f"{name} did not stop within {wait:.0f}s; killing it")
                self.procs[name].kill()
                self.procs[name].wait()
        self.pump(0)


def left_running(cfg: config_mod.Config) -> list[str]:
    """Our containers still running (the runner could not end them): one line each."""
    from podman import PodmanClient
    lines = []
    try:
        with PodmanClient(base_url=cfg.podman_socket, timeout=10) as client:
            for ctr in client.containers.list(filters={"label": LABEL}):
                try:
                    until = time.strftime("%H:%M", time.localtime(float(ctr.labels[DEADLINE_LABEL])))
                except (KeyError, TypeError, ValueError):
                    until = "its time limit"
                lines.append(f"{ctr.name}: it exits after {cfg.container.idle_timeout:.0f}s without work (its idle "
                             f"timeout), at {until} at the latest (its time limit); the next run-all re-attaches "
                             "to it")
    except Exception as exc:  # the API is gone: say that we could not look
        lines.append(f"could not ask Podman which agent containers still run ({exc}); "
                     f"see: {' '.join(podman_cli(cfg))} ps --filter label={LABEL}")
    return lines


def run_all(check: bool = True) -> int:
    cfg = config_file.get()
    cfg.runtime_dir.mkdir(parents=True, exist_ok=True)
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    from nanoclaw.core.models import open_db
    try:  # a database of another version: said once here, not by seven children in a loop
        open_db(cfg.db_path).close()
    except SchemaError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return EX_SCHEMA
    commands = {d: [sys.executable, "-m", "nanoclaw", d] for d in registry.NAMES}
    podman = podman_service_cmd(cfg)
    if podman:
        commands = {"podman": podman, **commands}
        # as nanoclaw-podman.service's ExecStartPre: a pause process that died with the units
        # (they were stopped) makes Podman refuse everything until it is reset
        subprocess.run(["podman", "system", "migrate"], capture_output=True)
    if check:
        preflight(cfg)
    sup = Supervisor(commands)
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        if stopping:  # os.write: a handler may run inside a print, which must not be re-entered
            os.write(1, f"run-all: still stopping: the agents get up to {STOP_GRACE + STOP_WAIT:.0f}s to "
                        "end\n".encode())
        stopping = True

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, stop)
    for name in commands:
        sup.start(name)
        if name == "podman":
            time.sleep(0.5)  # let the API socket appear before the runner dials it
    while not stopping:
        sup.pump(1.0)
        for name, proc in list(sup.procs.items()):
            if proc.poll() is not None and not stopping:
                sup.say(name, f"exited with {proc.returncode}; restarting in 1s")
                time.sleep(1)
                sup.start(name)
    sup.say("run-all", "stopping: the queue, scheduler and runner first (the runner ends the agent containers)")
    sup.stop(list(FIRST), STOP_GRACE + STOP_WAIT + 10)
    sup.stop([d for d in registry.NAMES if d not in FIRST], 10)
    left = left_running(cfg)
    for line in left:
        sup.say("run-all", f"left running: {line}")
    if podman:
        sup.stop(["podman"], 10)
    sup.say("run-all", "stopped" + ("" if left else "; no agent container of this run is left running"))
    return 0
