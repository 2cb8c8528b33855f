"""The runner daemon: turns ``job`` files into agent containers and back into events.

For each job in ``spool/runner`` it writes the first prompt into the group's
``ipc/<group>/in``, starts ``nanoclaw-<folder>-<job>`` through the Podman API
(``podman system service``) with only that group's directories mounted, waits
for it under a hard timeout, and reports ``started``/``exited`` events to the
queue. The job file stays in ``cur/`` for the container's whole life, so a
runner that dies and restarts finds it there and re-attaches to the container
that is still running — an agent is never killed just because we restarted.
Containers whose job file is gone are orphans and are removed.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from .config import Config
from .daemon import Daemon
from .protocol import Envelope, Spool, nudge, request

LABEL = "nanoclaw.job"


async def in_daemon_thread(func: Any, *args: Any) -> Any:
    """Run blocking Podman calls off the loop in a daemon thread.

    Not the default executor: its threads are joined at exit, and a thread
    blocked in a container wait would hold up ``systemctl stop``.
    """
    loop = asyncio.get_running_loop()
    fut = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if fut.done():
            return
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)

    def target() -> None:
        try:
            result, error = func(*args), None
        except BaseException as exc:  # handed to the awaiting coroutine
            result, error = None, exc
        loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=target, daemon=True).start()
    return await fut


def container_name(folder: str, job: int) -> str:
    return f"nanoclaw-{folder}-{job}"


def group_dirs(cfg: Config, folder: str) -> dict[str, Path]:
    """The host directories a group's container may see, created if missing."""
    from .proxy import proxy_dir
    dirs = {
        "group": cfg.groups_dir / folder,
        "global": cfg.global_dir,
        "ipc": cfg.ipc_dir / folder,
        "session": cfg.sessions_dir / folder,
        "proxy": proxy_dir(cfg, folder),
    }
    for sub in ("in/tmp", "in/new", "in/cur", "out/tmp", "out/new"):
        (dirs["ipc"] / sub).mkdir(parents=True, exist_ok=True)
    for d in dirs.values():
        d.mkdir(parents=True, exist_ok=True)
    return dirs


def agent_identity(cfg: Config) -> tuple[str, str]:
    """(user, userns) for agent containers: never root inside.

    Rootless (the normal install), ``keep-id`` maps the service user into the
    container, so the agent runs as it and owns what it writes. Rootful (the
    runner running as root), the agent runs as an unprivileged uid and is
    handed its writable directories.
    """
    c = cfg.container
    if os.geteuid() != 0:
        return c.user or f"{os.getuid()}:{os.getgid()}", c.userns or "keep-id"
    return c.user or "1000:1000", c.userns


def hand_over(paths: list[Path], user: str) -> None:
    """Rootful only: give the container's uid the directories it may write."""
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0 or not uid.isdigit():
        return
    for top in paths:
        for root, dirnames, filenames in os.walk(top):
            for name in [root, *(os.path.join(root, n) for n in dirnames + filenames)]:
                os.lchown(name, int(uid), int(gid or uid))


def _ulimit(spec: str) -> dict[str, Any]:
    name, _, values = spec.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}


def container_kwargs(cfg: Config, job: dict) -> dict[str, Any]:
    """Everything Podman needs to start one job's container, from configuration.

    Mounts: the group's folder (rw), global memory (ro; rw for main), the
    group's IPC dir and its agent session state. Nothing else of the host.
    """
    c = cfg.container
    dirs = group_dirs(cfg, job["group"])
    mounts = [
        {"type": "bind", "source": str(dirs["group"]), "target": "/workspace/group"},
        {"type": "bind", "source": str(dirs["global"]), "target": "/workspace/global",
         "read_only": not job["is_main"]},
        {"type": "bind", "source": str(dirs["ipc"]), "target": "/workspace/ipc"},
        {"type": "bind", "source": str(dirs["session"]), "target": "/workspace/session"},
        {"type": "bind", "source": str(dirs["proxy"]), "target": "/run/nanoclaw-proxy", "read_only": True},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": "512m"},
    ]
    user, userns = agent_identity(cfg)
    env = {
        "TZ": cfg.tz,
        "NANOCLAW_JOB": str(job["job"]),
        "NANOCLAW_GROUP": job["group"],
        "NANOCLAW_IS_MAIN": "1" if job["is_main"] else "0",
        "NANOCLAW_IDLE_TIMEOUT": str(c.idle_timeout),
        "NANOCLAW_MODEL": cfg.model,
        "HOME": "/tmp/home",  # the image is read-only; session state lives in /workspace/session
    }
    for pair in c.extra_env:
        key, _, value = pair.partition("=")
        env[key] = value
    kwargs: dict[str, Any] = {
        "name": container_name(job["group"], job["job"]),
        "labels": {LABEL: str(job["job"]), "nanoclaw.group": job["group"]},
        "environment": env,
        "mounts": mounts,
        "working_dir": "/workspace/group",
        "network_mode": c.network,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "ulimits": [_ulimit(u) for u in c.ulimits],
    }
    if c.memory:
        kwargs["mem_limit"] = c.memory
    if c.pids_limit > 0:
        kwargs["pids_limit"] = c.pids_limit
    for spec in c.volumes:
        source, target, *mode = spec.split(":")
        mounts.append({"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    if c.runtime:
        kwargs["runtime"] = c.runtime
    if userns:
        kwargs["userns_mode"] = userns
    kwargs["user"] = user
    return kwargs


class RunnerDaemon(Daemon):
    name = "runner"

    def setup(self) -> None:
        self.spool = Spool(self.cfg.spool_dir / "runner", max_bytes=self.cfg.max_spool_bytes).ensure()
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        self.watch(self.spool.new)
        self.running: dict[int, asyncio.Task] = {}
        self._recovering = self.spool.take(self.spool.leftovers())
        if self._recovering:
            self.log.info("re-attaching %d job(s) left in cur/", len(self._recovering))
        self._swept = False

    def client(self, timeout: float | None = 60) -> PodmanClient:
        return PodmanClient(base_url=self.cfg.podman_socket, timeout=timeout)

    def _sweep_orphans(self, keep: set[str]) -> None:
        """Remove nanoclaw containers that no job file accounts for (a crashed runner's)."""
        with self.client() as client:
            for ctr in client.containers.list(all=True, filters={"label": LABEL}):
                if ctr.name in keep:
                    continue
                self.log.warning("removing orphan container %s (no job file)", ctr.name)
                try:
                    ctr.remove(force=True)
                except (APIError, NotFound) as exc:
                    self.log.error("cannot remove orphan %s: %s", ctr.name, exc)

    async def work(self) -> float | None:
        envs = self._recovering + self.spool.take(self.spool.claim_new())
        self._recovering = []
        if not self._swept:
            keep = {container_name(e.body["group"], e.body["job"]) for e in envs if e.type == "job"}
            try:
                await in_daemon_thread(self._sweep_orphans, keep)
                self._swept = True
            except (APIError, RequestsConnectionError, OSError) as exc:
                self.log.error("podman API unreachable at %s: %s", self.cfg.podman_socket, exc)
                self._recovering = envs  # keep them; try again shortly
                return 2.0
        for env in envs:
            if env.type != "job":
                self.spool.reject(env.path, f"type {env.type!r} is not for the runner")
                continue
            job = env.body["job"]
            if job in self.running:
                continue
            self.running[job] = asyncio.create_task(self._run(env))
        return None

    async def _run(self, env: Envelope) -> None:
        job = env.body["job"]
        try:
            await in_daemon_thread(self._run_job, env)
            self.spool.done(env.path)
        except (APIError, RequestsConnectionError, OSError) as exc:
            # Podman itself failed us: keep the job file so a later pass retries it.
            self.log.error("job=%s podman error: %s; will retry", job, exc)
            await asyncio.sleep(2)
            self._recovering.append(env)
            self.wake.set()
        finally:
            self.running.pop(job, None)

    def _event(self, job: int, event: str, **extra: Any) -> None:
        self.queue_spool.put("job_event", {"job": job, "event": event, **extra})
        nudge(self.cfg.socket("queue"))

    def _run_job(self, env: Envelope) -> None:
        """Start (or re-attach to) one job's container and wait for it; runs in a thread."""
        b = env.body
        name = container_name(b["group"], b["job"])
        with self.client(timeout=None) as client:  # container waits are long
            try:
                ctr = client.containers.get(name)
                self.log.info("group=%s job=%s re-attached to %s (state %s)", b["group"], b["job"],
                              name, ctr.status)
                deadline = time.time() + self.cfg.container.timeout
                if ctr.status in ("created", "configured"):
                    ctr.start()
                elif ctr.status == "running" and not self._alive(ctr):
                    # Its processes were killed behind podman's back (its monitor died with
                    # them): podman still says "running" and would for the whole timeout.
                    self.log.warning("group=%s job=%s container %s is running in name only; removing",
                                     b["group"], b["job"], name)
                    ctr.remove(force=True)
                    self._event(b["job"], "exited", exit_code=-1, error="the container died with its monitor",
                                container=name)
                    return
            except NotFound:
                ctr = self._start(client, b)
                deadline = time.time() + self.cfg.container.timeout
            self._event(b["job"], "started", container=name)
            code, error = self._wait(ctr, deadline, b)
            if code != 0:
                try:
                    tail = ctr.logs(stdout=True, stderr=True, tail=20)
                    text = b"".join(tail if not isinstance(tail, bytes) else [tail]).decode(errors="replace")
                    error = error or text.strip()[-1000:] or f"exit code {code}"
                except (APIError, NotFound):
                    pass
            if code != 0:  # the agent's own last words (a traceback, not chat text) say why
                self.log.warning("group=%s job=%s container %s failed: %s", b["group"], b["job"], name,
                                 (error or "")[-400:].replace("\n", " | "))
            self._event(b["job"], "exited", exit_code=code, error=error or "", container=name)
            try:
                ctr.remove(force=True)
            except NotFound:
                pass
            self.log.info("group=%s job=%s container %s exited code=%s", b["group"], b["job"], name, code)

    def _start(self, client: PodmanClient, b: dict) -> Any:
        dirs = group_dirs(self.cfg, b["group"])
        inbox = Spool(dirs["ipc"] / "in")
        # Prompts left from an earlier container are covered by this job's prompt
        # (it holds every message since the cursor): clear them.
        for d in (inbox.new, inbox.cur, inbox.tmp):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True, exist_ok=True)
        inbox.put("prompt", {"job": b["job"], "turn": 0, "prompt": b["prompt"],
                             "session_id": b["session_id"]})
        hand_over([dirs["group"], dirs["ipc"], dirs["session"]] + ([dirs["global"]] if b["is_main"] else []),
                  agent_identity(self.cfg)[0])
        try:
            ready = request(self.cfg.socket("proxy"), {"op": "ensure", "group": b["group"]}, timeout=5)
            if not ready.get("ok"):
                self.log.warning("group=%s proxy has no socket for this group", b["group"])
        except (OSError, ValueError) as exc:
            self.log.warning("group=%s credential proxy unreachable (%s); the agent cannot reach the API",
                             b["group"], exc)
        t0 = time.monotonic()
        ctr = client.containers.create(self.cfg.container.image, **container_kwargs(self.cfg, b))
        ctr.start()
        self.log.info("group=%s job=%s started %s in %.2fs", b["group"], b["job"], ctr.name,
                      time.monotonic() - t0)
        return ctr

    @staticmethod
    def _alive(ctr: Any) -> bool:
        """Whether a 'running' container really has processes (podman reads them from /proc)."""
        try:
            return bool(ctr.top().get("Processes"))
        except (APIError, NotFound, ValueError):  # podman 4.3 answers an empty body: no processes
            return False

    def _wait(self, ctr: Any, deadline: float, b: dict) -> tuple[int, str]:
        """Wait for the container to exit; a timer kills it at the deadline."""
        timed_out = threading.Event()

        def kill() -> None:
            timed_out.set()
            self.log.error("group=%s job=%s timed out after %.0fs; killing", b["group"], b["job"],
                           self.cfg.container.timeout)
            try:
                ctr.kill()
            except (APIError, NotFound):
                pass

        timer = threading.Timer(max(0.0, deadline - time.time()), kill)
        timer.daemon = True
        timer.start()
        try:
            while True:
                try:
                    code = ctr.wait(condition=["exited", "stopped"])
                    break
                except NotFound:
                    return -1, "container disappeared"
                except (APIError, ReadTimeout, RequestsConnectionError):
                    time.sleep(1)  # the API service restarted or a long wait broke: wait again
        finally:
            timer.cancel()
        if timed_out.is_set():
            return 124, f"timed out after {self.cfg.container.timeout:.0f}s"
        return (code if isinstance(code, int) else -1), ""

    def status(self) -> str:
        return f"{len(self.running)} container(s) running"

    async def shutdown(self) -> None:
        # Containers keep running: their job files stay in cur/ and the next
        # runner re-attaches. Only our waiting threads stop.
        for task in self.running.values():
            task.cancel()


def main() -> None:
    RunnerDaemon().run()
