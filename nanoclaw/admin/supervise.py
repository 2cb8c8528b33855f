"""``nanoclaw run-all``: the seven daemons (and the Podman API) as child processes.

A development stand-in for systemd: each daemon is its own OS process, its
output prefixed with its name; a child that dies is restarted after a second,
as ``Restart=on-failure`` would. Ctrl-C stops them all.
"""

from __future__ import annotations

import os
import selectors
import signal
import subprocess
import sys
import time

from nanoclaw import DAEMONS
from nanoclaw.core import config as config_mod


def podman_service_cmd(cfg: config_mod.Config) -> list[str] | None:
    """The command serving the Podman API socket, unless one is configured elsewhere."""
    if cfg.container.podman_url:
        return None
    return ["podman", "system", "service", "--time=0", cfg.podman_socket]


def run_all() -> int:
    cfg = config_mod.get()
    cfg.runtime_dir.mkdir(parents=True, exist_ok=True)
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    from nanoclaw.core.models import open_db
    try:  # a database of another version: said once here, not by seven children in a loop
        open_db(cfg.db_path).close()
    except SchemaError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return EX_SCHEMA
    commands = {d: [sys.executable, "-m", "nanoclaw", d] for d in DAEMONS}
    podman = podman_service_cmd(cfg)
    if podman:
        commands = {"podman": podman, **commands}
        # as nanoclaw-podman.service's ExecStartPre: a pause process that died with the units
        # (they were stopped) makes Podman refuse everything until it is reset
        subprocess.run(["podman", "system", "migrate"], capture_output=True)
    sel = selectors.DefaultSelector()
    procs: dict[str, subprocess.Popen] = {}
    stopping = False

    def start(name: str) -> None:
        proc = subprocess.Popen(commands[name], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        procs[name] = proc
        os.set_blocking(proc.stdout.fileno(), False)
        sel.register(proc.stdout, selectors.EVENT_READ, name)

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for name in commands:
        start(name)
        if name == "podman":
            time.sleep(0.5)  # let the API socket appear before the runner dials it
    width = max(map(len, commands))
    buffers: dict[str, bytes] = {}
    while not stopping:
        for key, _ in sel.select(timeout=1.0):
            name = key.data
            try:
                chunk = key.fileobj.read()
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                sel.unregister(key.fileobj)
                continue
            buf = buffers.get(name, b"") + chunk
            *lines, buffers[name] = buf.split(b"\n")
            for line in lines:
                sys.stdout.write(f"{name:<{width}} | {line.decode(errors='replace')}\n")
            sys.stdout.flush()
        for name, proc in list(procs.items()):
            if proc.poll() is not None and not stopping:
                print(f"{name:<{width}} | exited with {proc.returncode}; restarting in 1s", flush=True)
                time.sleep(1)
                start(name)
    for proc in procs.values():
        if proc.poll() is None:
            proc.terminate()
    deadline = time.time() + 10
    for proc in procs.values():
        try:
            proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            proc.kill()
    return 0
