"""runner: turns ``job`` files into agent containers, and containers back into events.

SUMMARY
    Starts ``nanoclaw-<folder>-<job>`` through the Podman API with only that
    group's directories mounted, waits for it under a hard deadline, and
    reports ``started``/``exited`` to the queue.

    Every container is said once, as a spec (``spec.py``: image, user,
    environment, mounts, labels, resources, network, time limit), and made
    only once ``validate.py`` has classified each of its mounts; a spec it
    refuses is never made, and its job fails at once. Podman's options are
    built from the spec in one place (``driver.py``).

    A scheduled task's job may carry a pre-check: a shell command run first in
    ``nanoclaw-<folder>-<job>-check``, whose spec is the agent's made narrower
    (``precheck.py``: no network at all, no proxy sockets, no IPC, no session,
    everything read-only, a short time limit). If it fails, times out or prints
    nothing, the job is reported ``skipped`` and no agent starts; otherwise its
    output (capped) is added to the agent's prompt.

    A voice note is transcribed in ``nanoclaw-<folder>-voice-<message>`` when the queue
    asks (``transcribe.py``: no network, read-only, the note alone, a time limit); the
    transcript goes back to the queue as hostile text.

READS
    ``spool/runner`` (``job``); the Podman API (``podman system service``);
    a pre-check container's stdout and stderr, up to a cap.
    A job file stays in ``cur/`` for its container's whole life, so a
    restarted runner re-attaches instead of killing the agent; containers no
    job file accounts for are orphans and are removed.

    Under ``nanoclaw run-all`` a stop ends the agents too (``drain.py``).

    ``park`` files (from the queue: a job idle for ``idle_timeout``): its container is
    paused, not stopped, within ``[container] paused_memory_mib``, and handed its agent's
    next job (``pause.py``). Paused containers found at the start are kept likewise.

WRITES
    The first prompt into ``ipc/<group>/in`` (host-only); the group's
    directories (``prepare_dirs``: ``out/new``, ``out/tmp`` made again where a
    container replaced them); ``job_event`` files to ``spool/queue``.

    A full disk: no container is started while the state directory's disk (or
    Podman's) is nearly full or refuses writes (``disk.py``). A report the disk
    refuses is written again until it is: the job's container and file are kept
    until then, so not even a restart loses it.

PRIVILEGE
    The service user, driving its own rootless Podman (agents run as it,
    ``--userns=keep-id``, every capability dropped, no network). Rootful
    (tests), the agent's uid is handed its directories with ``Dir.give``.

HOSTILE INPUT
    The group's folder, ``ipc/out`` and session directory, which the previous
    container wrote: only touched through ``safefs`` (no link followed, no
    recursive chown). The owner's folders, which a container may be able to
    swap for a link: opened without following one, and checked again inside the
    container before it runs (``binds.py``). A container's own logs, shown in
    our log as its last words. A pre-check's command and output
    (``precheck.py``).

FILES
    ``__init__.py`` the daemon: jobs in, events out;  ``spec.py`` a container said once;
    ``validate.py`` the check every spec passes;  ``driver.py`` Podman;  ``dirs.py`` a
    group's directories;  ``owner_folders.py`` and ``binds.py`` the owner's folders,
    checked and pinned;  ``precheck.py``;  ``disk.py`` disk waits;  ``drain.py`` run-all's
    stop;  ``kill.py`` the queue's ``kill`` of a container whose stopped turn did not end;
    ``transcribe.py`` voice notes;  ``pause.py`` idle containers paused and handed the next
    job;  ``orphans.py`` containers no job file accounts for, removed at the start.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path
from typing import Any

from podman import PodmanClient
from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from nanoclaw.core import faults
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Job
from nanoclaw.core.protocol import Envelope, Spool, nudge, request
from nanoclaw.core.skeleton import Daemon
from nanoclaw.daemons.runner import binds, disk, drain, driver, kill, owner_folders, pause, precheck, validate
from nanoclaw.daemons.runner.dirs import clear_inbox, prepare_dirs
from nanoclaw.daemons.runner.disk import SPACE_CHECK, Stopped
from nanoclaw.daemons.runner.drain import STOP_ENV, Draining
from nanoclaw.daemons.runner.driver import in_daemon_thread, start_failure
from nanoclaw.daemons.runner.orphans import sweep_orphans
from nanoclaw.daemons.runner.spec import agent_spec, container_name
from nanoclaw.daemons.runner.transcribe import Transcriber
from nanoclaw.daemons.runner.validate import SpecError

START_TRIES = 3  # attempts to start (or re-attach to) a job's container before it fails


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
        self.transcriber = Transcriber(self)
        self.pool = pause.Pool(self)

    def client(self, timeout: float | None = 60) -> PodmanClient:
        return PodmanClient(base_url=self.cfg.podman_socket, timeout=timeout)

    async def work(self) -> float | None:
        envs = self._recovering + self.spool.take(self.spool.claim_new())
        self._recovering = []
        if not self._swept:
            try:
                await in_daemon_thread(sweep_orphans, self, envs)
                self._swept = True
            except (APIError, RequestsConnectionError, OSError) as exc:
                self.log.error("podman API unreachable at %s: %s", self.cfg.podman_socket, exc)
                self._recovering = envs  # keep them; try again shortly
                return 2.0
        for env in envs:
            if env.type == "transcribe":  # a voice note, in a container of its own (transcribe.py)
                self.transcriber.take(env)
                continue
            if env.type == "park":
                self.spawn(self._park(env), "a park", lambda exc: None, job=env.body["job"])
                continue
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

    async def _park(self, env: Envelope) -> None:
        await in_daemon_thread(self.pool.park, env.body["job"])
        self.spool.done(env.path)

    async def handle(self, req: dict, writer: Any) -> dict | None:
        if req.get("op") == "kill":  # the owner's stop, not heeded in time (kill.py)
            return await in_daemon_thread(kill.kill_job, self, req.get("job"))
        reply = await super().handle(req, writer)
        if req.get("op") == "status" and reply is not None:  # nanoclaw status lists the paused
            reply["paused"] = [{"group": g, "agent": a, "mib": round(m / pause.MiB)} for g, a, m in self.pool.listing()]
            reply["paused_budget_mib"] = self.cfg.container.paused_memory_mib
        return reply

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
                storage = faults.storage_error(exc)
                if storage is not None and disk.problem(self) is not None:
                    # The disk, not Podman: a start now would fail again. Not a try: the job's
                    # next run waits for space first (disk.await_space).
                    self.log.error("cannot start: %s; the job waits for space", storage, extra=log_fields(job=job))
                    await asyncio.sleep(SPACE_CHECK)
                    self._recovering.append(env)
                    self.wake.set()
                    return
                # Podman failed us: try again a few times (the API may be restarting), then give the
                # job up as failed so the queue's retries, notice and status take over.
                tries = self.tries[job] = self.tries.get(job, 0) + 1
                what = f"cannot start: {storage}" if storage else f"podman error: {exc}"
                if tries < START_TRIES:
                    self.log.error("%s; try %d of %d, again in %ds", what, tries, START_TRIES, 2 ** tries,
                                   extra=log_fields(job=job))
                    await asyncio.sleep(2 ** tries)
                    self._recovering.append(env)
                    self.wake.set()
                    return
                self.log.error("%s; giving the job up after %d tries", what, tries, extra=log_fields(job=job))
                await in_daemon_thread(self._give_up, env.body, start_failure(exc))
            except SpecError as exc:  # made again, it would be refused again: not tried again
                self.log.error("refused to make the container: %s", exc, extra=log_fields(job=job))
                await in_daemon_thread(self._give_up, env.body, f"the container was refused: {exc}"[:240])
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
                deadline = driver.deadline(ctr, self.cfg.container.timeout, body["job"])
                if ctr.status in ("created", "configured", "initialized"):
                    # Made by a runner that died before it started it: its mounts were never
                    # checked in it (driver.create), and nothing ran in it yet. Made again.
                    ctr.remove(force=True)
                    raise NotFound(f"{name} was never started")
                if ctr.status == "paused" and self.pool.reattached(ctr, body):
                    return
                if ctr.status in ("running", "stopping") and not driver.alive(ctr):
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
                disk.await_space(self, body)
                if not self._still_wanted(body):
                    return
                if body.get("precheck"):
                    go, said = precheck.run(self, client, body)
                    if self.draining:  # it was killed: its answer says nothing; it runs again next time
                        raise Draining()
                    if not go:
                        self._event(body["job"], "skipped", reason=said)
                        return
                    body = {**body, "prompt": body["prompt"] + said}
                ctr = self._start(client, body)
                deadline = driver.deadline(ctr, self.cfg.container.timeout, body["job"])
            self._event(body["job"], "started", container=name)
            code, error = driver.wait(ctr, deadline, self.cfg.container.timeout, "container", self.log, body,
                                      paused=self.pool.budget > 0)
            if self.pool.was_parked(body["job"], ctr, body):  # idle: kept paused for the agent's next job
                self._event(body["job"], "exited", exit_code=0, error="", container=name)
                return
            if self.draining:  # ended by run-all's stop (or while it stopped): not the agent's failure
                self._event(body["job"], "exited", exit_code=code, error="stopped by nanoclaw run-all",
                            container=name, stopped=True)
                driver.remove(ctr)
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
            driver.remove(ctr)
            self.log.info("container %s exited code=%s", name, code,
                          extra=log_fields(group=body["group"], job=body["job"]))

    def _still_wanted(self, body: dict) -> bool:
        """Whether the queue still waits for this job. It gives up on a job the runner has
        not started within its allowance (the runner was down, or waited for the disk) and
        answers its messages with another; a container started for it now would answer them
        twice. Read just before the start: nothing after it is slow."""
        job = Job.get_or_none(Job.id == body["job"])
        if job is not None and job.status in ("queued", "running"):
            return True
        self.log.info("not started: the queue gave the job up (%s)", job.status if job else "no such job",
                      extra=log_fields(group=body["group"], job=body["job"]))
        return False

    def _start(self, client: PodmanClient, body: dict) -> Any:
        """The job's container: its agent's paused one handed the job, or a new one."""
        dirs = prepare_dirs(self.cfg, body["group"], body["is_main"], body.get("agent", ""))
        if body.get("agent"):
            nudge(self.cfg.socket("ipc"))  # a member's out/ may be new: ipc watches it from its next pass
        # Prompts left from an earlier container are covered by this job's prompt
        # (it holds every message since the cursor): cleared.
        inbox = clear_inbox(Spool(dirs["in"]))
        inbox.put("prompt", {"job": body["job"], "turn": 0, "prompt": body["prompt"],
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
            ctr = self.pool.take(client, body)
            if ctr is not None:
                return self.pool.hand_over(ctr, body, t0)
            extra, allow = owner_folders.for_container(self.cfg, body["group"], self.log)
            try:
                spec = agent_spec(self.cfg, body, extra)
                validate.validate(spec, self.cfg, allow)
            except BaseException:
                binds.close(extra)
                raise
            ctr = driver.create(client, spec, self.log, body)
            ctr.start()
        self.log.info("started %s in %.2fs", ctr.name, time.monotonic() - t0,
                      extra=log_fields(group=body["group"], job=body["job"]))
        return ctr

    def status(self) -> str:
        line = f"{len(self.running) - len(self.waiting_space)} container(s) running"
        if self.transcriber.active:
            line += f", {len(self.transcriber.active)} voice note(s) being transcribed"
        if self.pool.parked:
            line += f", {len(self.pool.parked)} paused"
        waiting = dict(self.waiting_space)
        if waiting:
            line += f"; {len(waiting)} job(s) {faults.MARK}: {next(iter(waiting.values()))}"
        return line

    async def shutdown(self) -> None:
        if self.stops_agents:
            await drain.stop_agents(self)
        # Otherwise (systemd) containers keep running: their job files stay in cur/ and the
        # next runner re-attaches. Only our waiting threads stop.
        for task in self.running.values():
            task.cancel()


main = RunnerDaemon.main
