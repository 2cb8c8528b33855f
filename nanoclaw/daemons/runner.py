"""runner: turns ``job`` files into agent containers, and containers back into events.

SUMMARY
    Starts ``nanoclaw-<folder>-<job>`` through the Podman API with only that
    group's directories mounted, waits for it under a hard deadline, and
    reports ``started``/``exited`` to the queue.

    A scheduled task's job may carry a pre-check: a shell command run first in
    ``nanoclaw-<folder>-<job>-check``, a container of the same image confined
    more than an agent's (no network at all, no proxy sockets, no IPC, no
    session, the group's folder read-only, a short time limit). If it fails,
    times out or prints nothing, the job is reported ``skipped`` and no agent
    starts; otherwise its output (capped) is added to the agent's prompt.

READS
    ``spool/runner`` (``job``); the Podman API (``podman system service``);
    a pre-check container's stdout and stderr, up to a cap.
    A job file stays in ``cur/`` for its container's whole life, so a
    restarted runner re-attaches instead of killing the agent; containers no
    job file accounts for are orphans and are removed.

    Under ``nanoclaw run-all`` (``NANOCLAW_RUNNER_STOPS_AGENTS=1``) a stop ends
    the agents too, since the Podman API they hang on stops with it: each is
    asked to close (an idle one exits at once, a busy one may finish its turn
    within ``STOP_GRACE``), the rest are killed, and every exit is reported
    ``stopped``, so the queue counts no failure and runs the messages of
    unfinished turns again at the next start. No container starts once that
    began; a job not started yet keeps its file for the next runner.

WRITES
    The first prompt into ``ipc/<group>/in`` (host-only); the group's
    directories (``prepare_dirs``: ``out/new``, ``out/tmp`` made again where a
    container replaced them); ``job_event`` files to ``spool/queue``.

    A full disk: no container is started while the state directory's disk (or
    Podman's) is nearly full or refuses writes (``core.faults``); the job waits
    for space, and a start that failed on the disk is not counted as a try. A
    report the disk refuses is written again until it is: the job's container
    and file are kept until then, so not even a restart loses it.

PRIVILEGE
    The service user, driving its own rootless Podman (agents run as it,
    ``--userns=keep-id``, every capability dropped, no network). Rootful
    (tests), the agent's uid is handed its directories with ``Dir.give``.

HOSTILE INPUT
    The group's folder, ``ipc/out`` and session directory, which the previous
    container wrote: only touched through ``safefs`` (no link followed, no
    recursive chown). A container's own logs, shown in our log as its last words.
    A pre-check's command is the owner's or the group's own agent's, and its
    output is whatever it read: read up to a cap, escaped into the prompt
    (``core.prompt.precheck_block``), control characters removed from the reason.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import re
import shutil
import struct
import threading
import time
from pathlib import Path
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError
from requests.exceptions import ReadTimeout

from nanoclaw.core import binds as binds_mod
from nanoclaw.core import faults
from nanoclaw.core import model_choice
from nanoclaw.core import mounts as mounts_mod
from nanoclaw.core import team as team_mod
from nanoclaw.core.agent_sockets import proxy_dir
from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.prompt import precheck_block
from nanoclaw.core.protocol import Envelope, Spool, nudge, request, unique_name
from nanoclaw.core.safefs import Dir
from nanoclaw.core.skeleton import Daemon

log = logging.getLogger("nanoclaw.runner")
START_TRIES = 3  # attempts to start (or re-attach to) a job's container before it fails
SPACE_CHECK = 2.0  # seconds between looks at the disk while a job waits for space
LABEL = "nanoclaw.job"
DEADLINE_LABEL = "nanoclaw.deadline"  # epoch seconds: the container's life ends then, whatever restarts
PRECHECK_LABEL = "nanoclaw.precheck"
# The pre-check's command ($1) runs with its stdout through `head -c $2`, the rest drained, so
# an honest command's output is cut inside the container (its head kept) and its exit status is
# its own. A hostile one can get past this (writing to /proc/1/fd/1): the log's size cap and the
# host's bounded read are the limits that hold against it.
PRECHECK_WRAPPER = """exec 3>&1
status=$( { { /bin/sh -c "$1" 3>&- 4>&-; echo $? >&4; } | { head -c "$2" >&3; cat >/dev/null; } 3>&3; } 4>&1 )
exit "${status:-1}"
"""
_UNPRINTABLE = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]+")  # all but newlines
STOP_ENV = "NANOCLAW_RUNNER_STOPS_AGENTS"  # set by `nanoclaw run-all`: stopping the runner ends its agents
STOP_GRACE = 5.0  # seconds agents asked to close (run-all stopping) get before they are killed
STOP_WAIT = 20.0  # seconds after that for the killed ones' exits to be recorded


class Draining(Exception):
    """`nanoclaw run-all` is stopping: nothing starts; the job's file stays for the next runner."""


class Stopped(Exception):
    """The runner is stopping while a job's thread waits for the disk: leave the job as it is
    (its file stays in cur/ for the next runner)."""


def unwritable(directory: Path) -> str | None:
    """Why a small new file cannot be written in ``directory`` (a spool's ``tmp/``: a read-only
    or failing disk), or None when it can. Named as a spool writer's file, so one left by a
    runner killed right then is swept as a dead writer's."""
    probe = directory / unique_name("probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, b"x")
        finally:
            os.close(fd)
            probe.unlink(missing_ok=True)
    except OSError as exc:
        return faults.storage_error(exc)
    return None


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


def start_failure(exc: BaseException) -> str:
    """One line for the chat and the job's record: why the container did not start."""
    text = getattr(exc, "explanation", None) or str(exc)
    text = text.split("error during container init: ")[-1]
    if "no space left on device" in text.lower() or getattr(exc, "errno", None) == errno.ENOSPC:
        text = f"the disk is full ({text})"
    elif "image not known" in text:  # a newcomer's first message, before the image was built
        text = f"{text} (build it: nanoclaw image build)"
    return "the container could not start: " + " ".join(text.split())[:200]


def group_dirs(cfg: Config, folder: str, agent: str = "") -> dict[str, Path]:
    """The host directories a container of a group's agent may see (made by :func:`prepare_dirs`):
    the group's folder (the team's shared workspace) and global memory, and the agent's own
    IPC and session."""
    return {
        "group": cfg.groups_dir / folder,
        "team": cfg.groups_dir / folder / team_mod.AGENTS,
        "global": cfg.global_dir,
        "in": cfg.agent_ipc(folder, agent) / "in",
        "out": cfg.agent_ipc(folder, agent) / "out",
        "session": cfg.agent_session(folder, agent),
        "proxy": proxy_dir(cfg, folder, agent),  # a member's own: its calls are counted as its
    }


def prepare_dirs(cfg: Config, folder: str, is_main: bool = False, agent: str = "") -> dict[str, Path]:
    """Make the directories of a group's agent before its container starts.

    ``in/`` is the host's (the container sees it read-only) and is made
    normally. The rest is the container's to write: each is a trusted base
    whose contents are walked without following links (:mod:`safefs`); an
    ``out/new`` or ``out/tmp`` that an earlier container replaced by a link
    is removed and made again. In rootful runs the agent's uid is handed the
    directories it writes, non-recursively (:meth:`safefs.Dir.give`).
    """
    dirs = group_dirs(cfg, folder, agent)
    Spool(dirs["in"]).ensure()
    for key in ("group", "global", "session", "proxy"):
        dirs[key].mkdir(parents=True, exist_ok=True)
    with Dir.open(dirs["group"]) as group:  # the team's files: mounted read-only over the shared folder
        group.ensure_dir(team_mod.AGENTS).close()
    owner = agent_owner(cfg)
    with Dir.open(dirs["out"], create=True) as out:
        for sub in ("new", "tmp"):
            with out.ensure_dir(sub) as d:
                if owner:
                    d.give(*owner, children=False)
        if owner:
            out.give(*owner, children=False)
    if owner:
        for key in ("group", "session") + (("global",) if is_main else ()):
            with Dir.open(dirs[key]) as d:
                d.give(*owner, children=key != "session")  # the CLAUDE.md (and inbox/) the host made
    return dirs


def container_name(folder: str, job: int, agent: str = "") -> str:
    return f"nanoclaw-{folder}--{agent}-{job}" if agent else f"nanoclaw-{folder}-{job}"


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


def agent_owner(cfg: Config) -> tuple[int, int] | None:
    """The (uid, gid) to hand writable directories to: only when the agent runs
    under another uid than this daemon (rootful Podman)."""
    user = agent_identity(cfg)[0]
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0 or not uid.isdigit() or not (gid or uid).isdigit():
        return None
    return int(uid), int(gid or uid)


def job_model(cfg: Config, job: dict) -> str:
    """The model for a job's container: the one the queue chose and recorded (a job file
    from an older queue has none: chosen here by the same rule, core/model_choice.py)."""
    if isinstance(job.get("model"), str):
        return job["model"]
    return model_choice.for_job(cfg, job["group"], job.get("agent", "")).model


def _ulimit(spec: str) -> dict[str, Any]:
    name, _, values = spec.partition("=")
    soft, _, hard = values.partition(":")
    return {"Name": name, "Soft": int(soft), "Hard": int(hard or soft)}


def container_kwargs(cfg: Config, job: dict, extra: list[binds_mod.Bind] | None = None) -> dict[str, Any]:
    """Everything Podman needs to start one job's container, from configuration.

    Mounts: the group's folder (rw; its ``agents/`` ro), global memory (ro;
    rw for main), the agent's IPC dirs (``in`` read-only, ``out`` rw), its
    session state and its API socket (ro), and ``extra``: the owner's folders
    for it as :func:`mounts.for_container` opened and checked them (verified in
    the container before it runs: :meth:`RunnerDaemon._create`). Nothing else
    of the host. A team member (``job["agent"]``) gets its own IPC and session,
    never the lead's.
    """
    c = cfg.container
    agent = job.get("agent", "")
    dirs = group_dirs(cfg, job["group"], agent)
    mounts = [
        {"type": "bind", "source": str(dirs["group"]), "target": "/workspace/group"},
        # The team's member files, read-only over the shared folder: no agent makes or changes one.
        {"type": "bind", "source": str(dirs["team"]), "target": f"/workspace/group/{team_mod.AGENTS}",
         "read_only": True},
        {"type": "bind", "source": str(dirs["global"]), "target": "/workspace/global",
         "read_only": not job["is_main"]},
        # Host to agent read-only (prompts, tasks.json): the host never writes where the agent can.
        {"type": "bind", "source": str(dirs["in"]), "target": "/workspace/ipc/in", "read_only": True},
        {"type": "bind", "source": str(dirs["out"]), "target": "/workspace/ipc/out"},
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
        "NANOCLAW_MODEL": job_model(cfg, job),
        "NANOCLAW_AGENT": agent,
        "HOME": "/tmp/home",  # the image is read-only; session state lives in /workspace/session
    }
    for pair in c.extra_env:
        key, _, value = pair.partition("=")
        env[key] = value
    kwargs: dict[str, Any] = {
        "name": container_name(job["group"], job["job"], agent),
        "labels": {LABEL: str(job["job"]), "nanoclaw.group": job["group"], "nanoclaw.agent": agent,
                   DEADLINE_LABEL: f"{time.time() + c.timeout:.0f}"},
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
    extra = extra or []
    mounts += [b.spec() for b in extra]  # the owner's folders (and their guards), checked now
    env["NANOCLAW_MOUNTS"] = ",".join(f"{b.name}:{'ro' if b.read_only else 'rw'}" for b in extra if b.name)
    for spec in c.volumes:
        source, target, *mode = spec.split(":")
        mounts.append({"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    if c.runtime:
        kwargs["runtime"] = c.runtime
    if userns:
        kwargs["userns_mode"] = userns
    kwargs["user"] = user
    return kwargs


def precheck_name(folder: str, job: int) -> str:
    return f"{container_name(folder, job)}-check"


def precheck_kwargs(cfg: Config, job: dict, extra: list[binds_mod.Bind] | None = None) -> dict[str, Any]:
    """How a task's pre-check container is started: as confined as an agent's or more.

    The same image, user, capabilities (none), read-only root, memory, pids and ulimits as
    an agent; beyond that no network namespace with a way out (``none`` whatever
    ``[container] network`` says), none of the agent's IPC, session or proxy sockets (so no
    API and no web), no credentials or extra environment, and the group's folder (and the
    owner's folders for it, ``extra``, opened with ``read_only``) read-only. Its log is a
    size-capped file, since what it prints is read back.
    """
    c = cfg.container
    folder = job["group"]
    user, userns = agent_identity(cfg)
    mounts = [
        {"type": "bind", "source": str(cfg.groups_dir / folder), "target": "/workspace/group", "read_only": True},
        {"type": "tmpfs", "source": "tmpfs", "target": "/tmp", "size": "64m"},
    ]
    mounts += [{**b.spec(), "read_only": True} for b in extra or []]
    for spec in c.volumes:  # what this host needs for any container to start (e.g. the cgroup tree)
        source, target, *mode = spec.split(":")
        mounts.append({"type": "bind", "source": source, "target": target, "read_only": mode == ["ro"]})
    kwargs: dict[str, Any] = {
        "name": precheck_name(folder, job["job"]),
        "command": ["/bin/sh", "-c", PRECHECK_WRAPPER, "nanoclaw-precheck", job["precheck"],
                    str(c.precheck_max_output + 1)],
        "labels": {LABEL: str(job["job"]), "nanoclaw.group": folder, PRECHECK_LABEL: "1",
                   DEADLINE_LABEL: f"{time.time() + c.precheck_timeout:.0f}"},
        "environment": {"TZ": cfg.tz, "HOME": "/tmp", "NANOCLAW_GROUP": folder},
        "mounts": mounts,
        "working_dir": "/workspace/group",
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "ulimits": [_ulimit(u) for u in c.ulimits],
        "log_config": {"Type": "k8s-file", "Config": {"size": max(65536, 4 * c.precheck_max_output)}},
        "user": user,
    }
    if c.memory:
        kwargs["mem_limit"] = c.memory
    if c.pids_limit > 0:
        kwargs["pids_limit"] = c.pids_limit
    if c.runtime:
        kwargs["runtime"] = c.runtime
    if userns:
        kwargs["userns_mode"] = userns
    return kwargs


def read_logs(ctr: Any, *, stdout: bool, stderr: bool, cap: int, tail: int = 0) -> tuple[bytes, bool]:
    """A stopped container's output (its last ``tail`` lines if given), at most ``cap`` bytes
    of it, and whether there was more.

    Read frame by frame from the API (podman-py's ``logs`` would hold it all in memory)."""
    params = {"stdout": str(stdout).lower(), "stderr": str(stderr).lower()}
    if tail:
        params["tail"] = str(tail)
    resp = ctr.client.get(f"/containers/{ctr.id}/logs", params=params, stream=True)
    resp.raise_for_status()
    out = bytearray()
    try:
        while True:
            header = resp.raw.read(8)
            if len(header) < 8:
                return bytes(out), False
            (size,) = struct.unpack_from(">L", header, 4)
            take = min(size, cap - len(out))
            out += resp.raw.read(take) if take else b""
            if take < size:
                return bytes(out), True
    finally:
        resp.close()


class RunnerDaemon(Daemon):
    name = "runner"

    def setup(self) -> None:
        self.spool = Spool(self.cfg.spool_dir / "runner", max_bytes=self.cfg.max_spool_bytes).ensure()
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        self.watch(self.spool.new)
        self.running: dict[int, asyncio.Task] = {}
        self.tries: dict[int, int] = {}  # failed start attempts per job
        self.failures: dict[int, int] = {}  # runs of a job that failed for a bug: its retry's backoff
        self.waiting_space: dict[int, str] = {}  # jobs not started for a full disk, and why
        self.reporting: set[int] = set()  # jobs whose report the disk refuses (their threads retry)
        self.graph_root: Path | None = None  # Podman's image and container store, once known
        self.loop = asyncio.get_running_loop()
        self.bodies: dict[int, dict] = {}  # the jobs in self.running, for a stop that ends their agents
        self.stops_agents = os.environ.get(STOP_ENV) == "1"
        self.draining = False
        self.gate = threading.Lock()  # a container starts, or draining begins: never both at once
        self._recovering = self.spool.take(self.spool.leftovers())
        if self._recovering:
            self.log.info("re-attaching %d job(s) left in cur/", len(self._recovering))
        self._swept = False

    def client(self, timeout: float | None = 60) -> PodmanClient:
        return PodmanClient(base_url=self.cfg.podman_socket, timeout=timeout)

    def _sweep_orphans(self, keep: set[str]) -> None:
        """Remove nanoclaw containers that no job file accounts for (a crashed runner's)."""
        with self.client() as client:
            try:
                self.graph_root = Path(client.info()["store"]["graphRoot"])
            except (APIError, KeyError, TypeError):
                pass
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
            keep = {container_name(e.body["group"], e.body["job"], e.body.get("agent", "")) for e in envs if e.type == "job"}
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
            self.running[job] = self.spawn(self._run(env), "the run of a job", lambda exc, env=env: self._again(env),
                                           job=job)
            self.bodies[job] = env.body
        return None

    def _again(self, env: Envelope) -> None:
        """A job's run failed for a bug: its file is still in cur/, so run it again, later each
        time (2 s doubling to a minute), rather than leave its group waiting for a restart."""
        job = env.body["job"]
        n = self.failures[job] = self.failures.get(job, 0) + 1

        def retry() -> None:
            self._recovering.append(env)
            self.wake.set()
        self.loop.call_later(min(2.0 ** n, 60.0), retry)

    async def _run(self, env: Envelope) -> None:
        job = env.body["job"]
        try:
            try:
                await in_daemon_thread(self._run_job, env)
            except (APIError, RequestsConnectionError, OSError) as exc:
                disk = faults.storage_error(exc)
                if disk is not None and self._disk_problem() is not None:
                    # The disk, not Podman: a start now would fail again. Not a try: the job's
                    # next run waits for space first (_await_disk).
                    self.log.error("cannot start: %s; the job waits for space", disk, extra=log_fields(job=job))
                    await asyncio.sleep(SPACE_CHECK)
                    self._recovering.append(env)
                    self.wake.set()
                    return
                # Podman failed us: try again a few times (the API may be restarting), then give the
                # job up as failed so the queue's retries, notice and status take over.
                tries = self.tries[job] = self.tries.get(job, 0) + 1
                what = f"cannot start: {disk}" if disk else f"podman error: {exc}"
                if tries < START_TRIES:
                    self.log.error("%s; try %d of %d, again in %ds", what, tries, START_TRIES, 2 ** tries,
                                   extra=log_fields(job=job))
                    await asyncio.sleep(2 ** tries)
                    self._recovering.append(env)
                    self.wake.set()
                    return
                self.log.error("%s; giving the job up after %d tries", what, tries, extra=log_fields(job=job))
                await in_daemon_thread(self._give_up, env.body, start_failure(exc))
        except Stopped:
            return  # the job's file stays in cur/: the next runner takes it up
        except Draining:
            self.log.info("not started: nanoclaw run-all is stopping; it starts at the next run",
                          extra=log_fields(group=env.body["group"], job=job))
            return  # likewise
        finally:
            self.running.pop(job, None)
            self.bodies.pop(job, None)
        self.spool.done(env.path)  # everything about the job is reported
        self.tries.pop(job, None)
        self.failures.pop(job, None)

    def _disk_problem(self) -> str | None:
        """Why no agent should start now: the state directory's disk (or Podman's) is nearly
        full, or refuses writes. None when it is fine."""
        for path in (self.cfg.state_dir, self.graph_root):
            why = faults.low_space(path) if path is not None else None
            if why is not None:
                return why
        return unwritable(self.spool.tmp)

    def _await_disk(self, body: dict) -> None:
        """Hold this job's thread until there is room to start its container: an agent started
        on a full disk fails its turn. The queue tells the chat (once); raises Stopped if the
        runner stops first."""
        job = body["job"]
        while (why := self._disk_problem()) is not None:
            first = job not in self.waiting_space
            self.waiting_space[job] = why  # in the status before anyone is told of it
            if first:
                self.log.warning("not started: %s; waiting for space", why,
                                 extra=log_fields(group=body["group"], job=job))
                nudge(self.cfg.socket("queue"))  # it looks at the disk, and tells the chat
            if self.stopping:
                raise Stopped()
            time.sleep(SPACE_CHECK)
        if self.waiting_space.pop(job, None) is not None:
            self.log.info("space again; starting", extra=log_fields(group=body["group"], job=job))

    def _give_up(self, body: dict, reason: str) -> None:
        """The container cannot start: remove what is left of it and report the job failed."""
        name = container_name(body["group"], body["job"], body.get("agent", ""))
        try:
            with self.client() as client:
                client.containers.get(name).remove(force=True)
        except (APIError, NotFound, RequestsConnectionError, OSError):
            pass
        self._event(body["job"], "exited", exit_code=-1, error=reason, container=name)

    def _event(self, job: int, event: str, **extra: Any) -> None:
        """Report to the queue (from a job's thread). A report the disk refuses is written again
        until it is, and the thread waits for it: the job's container and file are kept until
        then, so a runner that restarts meanwhile reports it again."""
        def refusal(exc: OSError) -> None:
            self.reporting.add(job)
            self.loop.call_soon_threadsafe(self.refused, exc)

        written = self.queue_spool.put_until_written("job_event", {"job": job, "event": event, **extra},
                                                     stop=lambda: self.stopping, on_refused=refusal)
        if job in self.reporting:
            self.reporting.discard(job)
            self.log.info("%s reported after the disk refused it", event, extra=log_fields(job=job))
            self.loop.call_soon_threadsafe(self.wake.set)  # the loop ends the episode
        if written is None:
            raise Stopped()
        nudge(self.cfg.socket("queue"))

    def disk_waits(self) -> int:
        return len(self.reporting)

    def _run_job(self, env: Envelope) -> None:
        """Start (or re-attach to) one job's container and wait for it; runs in a thread."""
        body = env.body
        name = container_name(body["group"], body["job"], body.get("agent", ""))
        with self.client(timeout=None) as client:  # container waits are long
            try:
                ctr = client.containers.get(name)
                self.log.info("re-attached to %s (state %s)", name, ctr.status,
                              extra=log_fields(group=body["group"], job=body["job"]))
                deadline = self._deadline(ctr)
                if ctr.status in ("created", "configured", "initialized"):
                    # Made by a runner that died before it started it: its mounts were never
                    # checked in it (_create), and nothing ran in it yet. Made again.
                    ctr.remove(force=True)
                    raise NotFound(f"{name} was never started")
                if ctr.status in ("running", "stopping", "paused") and not self._alive(ctr):
                    # Its processes were killed behind podman's back (its monitor died with them,
                    # as when nanoclaw-podman restarts): podman still says "running", or on 4.3
                    # "stopping", and would for the whole timeout.
                    self.log.warning("container %s is %s in name only; removing", name, ctr.status,
                                     extra=log_fields(group=body["group"], job=body["job"]))
                    ctr.remove(force=True)
                    self._event(body["job"], "exited", exit_code=-1, error="the container died with its monitor",
                                container=name)
                    return
            except NotFound:
                self._await_disk(body)
                if body.get("precheck"):
                    go, said = self._precheck(client, body)
                    if self.draining:  # it was killed: its answer says nothing; it runs again next time
                        raise Draining()
                    if not go:
                        self._event(body["job"], "skipped", reason=said)
                        return
                    body = {**body, "prompt": body["prompt"] + said}
                ctr = self._start(client, body)
                deadline = self._deadline(ctr)
            self._event(body["job"], "started", container=name)
            code, error = self._wait(ctr, deadline, body)
            if self.draining:  # ended by run-all's stop (or while it stopped): not the agent's failure
                self._event(body["job"], "exited", exit_code=code, error="stopped by nanoclaw run-all",
                            container=name, stopped=True)
                self._remove(ctr)
                self.log.info("container %s stopped with nanoclaw run-all", name,
                              extra=log_fields(group=body["group"], job=body["job"]))
                return
            if code != 0:
                try:
                    tail = ctr.logs(stdout=True, stderr=True, tail=20)
                    text = b"".join(tail if not isinstance(tail, bytes) else [tail]).decode(errors="replace")
                    error = error or text.strip()[-1000:] or f"exit code {code}"
                except (APIError, NotFound):
                    pass
            if code != 0:  # the agent's own last words (a traceback, not chat text) say why
                self.log.warning("container %s failed: %s", name, (error or "")[-400:].replace("\n", " | "),
                                 extra=log_fields(group=body["group"], job=body["job"]))
            self._event(body["job"], "exited", exit_code=code, error=error or "", container=name)
            self._remove(ctr)
            self.log.info("container %s exited code=%s", name, code,
                          extra=log_fields(group=body["group"], job=body["job"]))

    @staticmethod
    def _remove(ctr: Any) -> None:
        try:
            ctr.remove(force=True)
        except NotFound:
            pass

    def _start(self, client: PodmanClient, body: dict) -> Any:
        dirs = prepare_dirs(self.cfg, body["group"], body["is_main"], body.get("agent", ""))
        if body.get("agent"):
            nudge(self.cfg.socket("ipc"))  # a member's out/ may be new: ipc watches it from its next pass
        inbox = Spool(dirs["in"])
        # Prompts left from an earlier container are covered by this job's prompt
        # (it holds every message since the cursor): clear them. in/ is host-only.
        for d in (inbox.new, inbox.cur, inbox.tmp):
            shutil.rmtree(d, ignore_errors=True)
        inbox.ensure().put("prompt", {"job": body["job"], "turn": 0, "prompt": body["prompt"],
                                      "session_id": body["session_id"]}, durable=False)  # see Spool.put
        for daemon, lost in (("proxy", "the API"), ("egress", "the web")):
            try:
                ready = request(self.cfg.socket(daemon), {"op": "ensure", "group": body["group"],
                                                          "agent": body.get("agent", "")}, timeout=5)
                if not ready.get("ok"):
                    self.log.warning("%s has no socket for this agent", daemon,
                                     extra=log_fields(group=body["group"], agent=body.get("agent")))
            except (OSError, ValueError) as exc:
                self.log.warning("%s unreachable (%s); the agent cannot reach %s", daemon, exc, lost,
                                 extra=log_fields(group=body["group"], agent=body.get("agent")))
        t0 = time.monotonic()
        with self.gate:  # a stop that began kills what started before it; nothing starts after
            if self.draining:
                raise Draining()
            extra = mounts_mod.for_container(self.cfg, body["group"], self.log)
            ctr = self._create(client, self.cfg.container.image, container_kwargs(self.cfg, body, extra), extra,
                               body)
            ctr.start()
        self.log.info("started %s in %.2fs", ctr.name, time.monotonic() - t0,
                      extra=log_fields(group=body["group"], job=body["job"]))
        return ctr

    def _create(self, client: PodmanClient, image: str, kwargs: dict, extra: list[binds_mod.Bind],
                body: dict) -> Any:
        """Create a container. With the owner's folders (``extra``), also set it up (``init``:
        its mounts made, nothing run in it yet) and check each of them from inside; one that is
        not what was checked removes it before anything ran (BindError: a start failure, which
        is tried again as any is)."""
        try:
            ctr = client.containers.create(image, **kwargs)
            if extra:
                try:
                    ctr.init()
                    ctr.reload()
                    binds_mod.verify(int(ctr.attrs["State"]["Pid"]), extra)
                except (OSError, KeyError, TypeError, ValueError) as exc:
                    self.log.error("container %s removed before it ran: %s", ctr.name, exc,
                                   extra=log_fields(group=body["group"], job=body["job"]))
                    ctr.remove(force=True)
                    raise binds_mod.BindError(errno.EXDEV, f"a mounted folder changed while the container was "
                                                           f"made ({exc})") from None
            return ctr
        finally:
            binds_mod.close(extra)

    def _precheck(self, client: PodmanClient, body: dict) -> tuple[bool, str]:
        """Run a task's pre-check; (True, what to add to the prompt) or (False, why it is skipped).

        Podman failures raise (the job is retried as any start is); the command failing,
        timing out or printing nothing is an answer, not a failure.
        """
        c = self.cfg.container
        name = precheck_name(body["group"], body["job"])
        try:  # one left by a runner that died while it ran: run it again from the start
            client.containers.get(name).remove(force=True)
        except NotFound:
            pass
        (self.cfg.groups_dir / body["group"]).mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        ctr = None
        try:
            with self.gate:
                if self.draining:
                    raise Draining()
                extra = mounts_mod.for_container(self.cfg, body["group"], self.log, read_only=True)
                ctr = self._create(client, c.image, precheck_kwargs(self.cfg, body, extra), extra, body)
                ctr.start()
            code, error = self._wait(ctr, time.time() + c.precheck_timeout, body, limit=c.precheck_timeout,
                                     what="pre-check")
            took = time.monotonic() - t0
            out, cut = read_logs(ctr, stdout=True, stderr=False, cap=c.precheck_max_output)
            err, _ = read_logs(ctr, stdout=False, stderr=True, cap=4096, tail=10)
        finally:
            if ctr is not None:
                self._remove(ctr)
        text = out.decode(errors="replace")
        if code != 0:
            said = _UNPRINTABLE.sub(" ", err.decode(errors="replace"))
            lines = [" ".join(line.split()) for line in said.splitlines()]
            tail = " | ".join(line for line in lines if line)[-300:]  # its last words, on one line
            reason = error or f"the pre-check exited with code {code}"
            reason += f": {tail}" if tail and not error else ""
        elif not text.strip():
            reason = "the pre-check printed nothing"
        else:
            self.log.info("pre-check printed %d bytes%s in %.2fs; starting the agent", len(out),
                          " (cut)" if cut else "", took,
                          extra=log_fields(group=body["group"], job=body["job"]))
            return True, precheck_block(text, cut_at=c.precheck_max_output if cut else None)
        self.log.info("pre-check says skip (%.2fs): %s", took, reason[:200],
                      extra=log_fields(group=body["group"], job=body["job"]))
        return False, reason

    def _deadline(self, ctr: Any) -> float:
        """When the container must be gone: ``timeout`` after it was made, kept on a label,
        so re-attaching after a runner restart does not give it a fresh allowance."""
        try:
            return float(ctr.labels[DEADLINE_LABEL])
        except (KeyError, TypeError, ValueError):
            return time.time() + self.cfg.container.timeout

    @staticmethod
    def _alive(ctr: Any) -> bool:
        """Whether a 'running' container really has processes (podman reads them from /proc)."""
        try:
            return bool(ctr.top().get("Processes"))
        except (APIError, NotFound, ValueError):  # podman 4.3 answers an empty body: no processes
            return False

    def _wait(self, ctr: Any, deadline: float, body: dict, limit: float | None = None,
              what: str = "container") -> tuple[int, str]:
        """Wait for the container to exit; a timer kills it at the deadline."""
        timed_out = threading.Event()
        limit = self.cfg.container.timeout if limit is None else limit

        def kill() -> None:
            timed_out.set()
            self.log.error("%s timed out after %.0fs; killing", what, limit,
                           extra=log_fields(group=body["group"], job=body["job"]))
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
            return 124, f"{'the pre-check ' if what == 'pre-check' else ''}timed out after {limit:.0f}s"
        return (code if isinstance(code, int) else -1), ""

    def status(self) -> str:
        line = f"{len(self.running) - len(self.waiting_space)} container(s) running"
        waiting = dict(self.waiting_space)
        if waiting:
            line += f"; {len(waiting)} job(s) {faults.MARK}: {next(iter(waiting.values()))}"
        return line

    async def shutdown(self) -> None:
        if self.stops_agents:
            await self._stop_agents()
        # Otherwise (systemd) containers keep running: their job files stay in cur/ and the
        # next runner re-attaches. Only our waiting threads stop.
        for task in self.running.values():
            task.cancel()

    async def _stop_agents(self) -> None:
        """run-all is stopping: ask every agent to close, kill what is left after STOP_GRACE,
        and wait for the exits to be reported (``_run_job`` reports them ``stopped``)."""
        def begin() -> None:
            with self.gate:
                self.draining = True
        await in_daemon_thread(begin)
        tasks = list(self.running.values())
        if not tasks:
            return
        self.log.info("stopping %d agent container(s): asked to close, killed after %.0fs", len(tasks), STOP_GRACE)
        for job, body in list(self.bodies.items()):
            # after the prompts already there: an agent answers those it can within the grace
            Spool(self.cfg.agent_ipc(body["group"], body.get("agent", "")) / "in").ensure().put(
                "close", {"job": job}, durable=False)
        _, pending = await asyncio.wait(tasks, timeout=STOP_GRACE)
        if pending:
            try:
                killed = await in_daemon_thread(self._kill_all)
                self.log.info("killed %s", ", ".join(killed) or "none (they were ending)")
            except (APIError, RequestsConnectionError, OSError) as exc:
                self.log.error("cannot kill agent containers: %s", exc)
            _, pending = await asyncio.wait(pending, timeout=STOP_WAIT)
        if pending:
            self.log.error("%d agent container(s) did not end; the next runner re-attaches to them", len(pending))

    def _kill_all(self) -> list[str]:
        """Kill every running container of ours (agents and pre-checks); their names."""
        killed = []
        with self.client() as client:
            for ctr in client.containers.list(filters={"label": LABEL}):
                try:
                    ctr.kill()
                    killed.append(ctr.name)
                except (APIError, NotFound):
                    pass
        return killed


main = RunnerDaemon.main
