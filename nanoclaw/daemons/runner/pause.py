"""Paused containers: an idle agent frozen instead of stopped, and handed its agent's next job.

SUMMARY
    A new container's first answer waits most of a second for Python to import the SDK.
    So where ``[container] paused_memory_mib`` allows (0: never), an agent's container that
    has been idle for ``idle_timeout`` is paused (``podman pause``: its processes frozen,
    no CPU) rather than stopped, and the next job of the same group's agent is handed to it:
    the runner writes that job's prompt into its inbox, renames it for the job and unpauses
    it, in milliseconds. The agent runner in it takes a prompt naming another job as that
    job's first turn (``container/agent_runner.py``).

    The queue says when a job is idle long enough (a ``park`` file); the runner decides
    whether, here, from what the host sees: within the budget, counting each paused
    container's memory (the PSS of its processes, read from ``/proc``) as it was paused;
    over it, the longest paused is stopped. A container that alone is over the budget,
    whose memory cannot be read, or that Podman cannot pause (rootless on cgroups v1) is
    asked to close instead, as an idle one always was. Nothing the container says counts.

    A paused container is handed a job only if that job's container would be made exactly
    as it was (``Spec.made_as``: image, model, environment, mounts, an owner's folder by the
    inode checked; and the image the tag names now); otherwise it is stopped and a new one made, so a changed configuration,
    a new image or a folder the owner took back takes effect at the next job as before.

SYNOPSIS
    pool = Pool(daemon)
    pool.park(job)                     (a thread) pause a job's idle container, or close it
    pool.was_parked(job, ctr, body) -> bool   after its wait returned: was it paused by us?
    pool.take(client, body) -> container, still paused, or None;  pool.hand_over(ctr, body, t0)
    pool.reattached(ctr, body) -> bool   a paused one found named for its job at a restart
    pool.adopt(ctr) -> bool            at start: a paused container no job file accounts for
    pool.stop_all();  pool.listing() -> [(group, agent, bytes)]
    memory(ctr) -> bytes or None;  kill(ctr)

HOSTILE INPUT
    None read from the container: its processes' memory comes from the kernel
    (``/proc/<pid>/cgroup``, ``cgroup.procs``, ``smaps_rollup``), its state from Podman.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from podman.errors import APIError, NotFound

from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Job
from nanoclaw.core.protocol import Spool
from nanoclaw.daemons.runner import binds, owner_folders, validate
from nanoclaw.daemons.runner.spec import MADE_AS_LABEL, PRECHECK_LABEL, agent_spec, container_name
from nanoclaw.daemons.runner.validate import SpecError

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon

MiB = 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


@dataclass
class Parked:
    id: str
    name: str
    group: str
    agent: str
    since: float  # when it was paused (or, after a restart, found paused)
    memory: int  # bytes (PSS) when it was paused


class Pool:
    def __init__(self, daemon: RunnerDaemon) -> None:
        self.d = daemon
        self.budget = daemon.cfg.container.paused_memory_mib * MiB
        self.lock = threading.Lock()
        self.parked: dict[tuple[str, str], Parked] = {}
        self.parking: dict[int, int] = {}  # jobs being paused by us -> their memory
        self.cannot = ""  # why Podman cannot pause here, once found out

    # -- pausing -----------------------------------------------------------------
    def park(self, job: int) -> None:
        """The queue found ``job`` idle: pause its container within the budget, else ask it to
        close. Its waiting thread sees the pause (``was_parked``) and reports the job ended."""
        body = self.d.bodies.get(job)
        if body is None:
            return  # not running here (it ended meanwhile)
        fields = log_fields(group=body["group"], agent=body.get("agent") or None, job=job)
        name = container_name(body["group"], job, body.get("agent", ""))
        with self.d.client() as client:
            try:
                ctr = client.containers.get(name)
            except NotFound:
                return
            if ctr.status != "running":
                return  # already paused (a park read again after a restart), or ending
            used = memory(ctr)
            why = ""
            if self.budget <= 0:
                why = "paused_memory_mib is 0"
            elif self.cannot:
                why = self.cannot
            elif used is None:
                why = "its memory cannot be read"
            elif used > self.budget:
                why = f"it uses {used / MiB:.0f} MiB, more than paused_memory_mib ({self.budget // MiB})"
            if not why:
                self.parking[job] = used or 0
                try:
                    ctr.pause()
                    self.d.log.info("idle: paused %s (%.0f MiB)", name, (used or 0) / MiB, extra=fields)
                    return
                except (APIError, NotFound) as exc:
                    self.parking.pop(job, None)
                    self.cannot = why = f"podman cannot pause containers here: {exc}"
        self.d.log.info("idle: not paused (%s); asked to close", why, extra=fields)
        Spool(self.d.cfg.agent_ipc(body["group"], body.get("agent", "")) / "in").ensure().put(
            "close", {"job": job}, durable=False)

    def was_parked(self, job: int, ctr: Any, body: dict) -> bool:
        """Whether the container of ``job``, whose wait just returned, is paused by us (kept
        here for the agent's next job). The caller reports the job ended."""
        if job not in self.parking:
            return False
        try:
            ctr.reload()
        except (APIError, NotFound):
            self.parking.pop(job, None)
            return False
        if ctr.status != "paused":
            self.parking.pop(job, None)
            return False
        self.keep(ctr, body["group"], body.get("agent", ""), self.parking.pop(job))
        return True

    def keep(self, ctr: Any, group: str, agent: str, used: int) -> None:
        """Add a paused container; stop the longest paused while the budget is exceeded."""
        with self.lock:
            before = self.parked.pop((group, agent), None)
            self.parked[(group, agent)] = Parked(ctr.id, ctr.name, group, agent, time.time(), used)
            over = [before] if before is not None else []
            while sum(p.memory for p in self.parked.values()) > self.budget and self.parked:
                oldest = min(self.parked.values(), key=lambda p: p.since)
                over.append(self.parked.pop((oldest.group, oldest.agent)))
        for p in over:
            self.d.log.info("stopping paused %s: over paused_memory_mib (%d MiB)", p.name, self.budget // MiB,
                            extra=log_fields(group=p.group, agent=p.agent or None))
            self._stop(p)

    # -- handing a job over ------------------------------------------------------------
    def take(self, client: Any, body: dict) -> Any:
        """The agent's paused container if ``body``'s would be made exactly as it was (still
        paused: the caller renames and unpauses it); None if there is none or it is stopped."""
        key = (body["group"], body.get("agent", ""))
        with self.lock:
            p = self.parked.pop(key, None)
        if p is None:
            return None
        try:
            ctr = client.containers.get(p.id)
        except NotFound:
            return None
        if ctr.status != "paused":
            self._stop(p)
            return None
        extra, allow = owner_folders.for_container(self.d.cfg, body["group"], self.d.log)
        try:
            spec = agent_spec(self.d.cfg, body, extra)
            validate.validate(spec, self.d.cfg, allow)
            # the image by what the tag names now: one built again under the same tag is another
            same = ctr.labels.get(MADE_AS_LABEL) == spec.labels[MADE_AS_LABEL] and \
                ctr.attrs.get("Image") == client.images.get(spec.image).id
        except (SpecError, APIError, NotFound):
            same = False  # made anew: a refusal is said there
        finally:
            binds.close(extra)
        if not same:
            self.d.log.info("paused %s was made otherwise than this job's would be; stopped", p.name,
                            extra=log_fields(group=p.group, agent=p.agent or None, job=body["job"]))
            self._stop(p)
            return None
        return ctr

    def hand_over(self, ctr: Any, body: dict, t0: float) -> Any:
        """Rename the paused container for ``body``'s job (a restarted runner finds it by that
        name, as a new one) and unpause it; its prompt is in its inbox already."""
        old, name = ctr.name, container_name(body["group"], body["job"], body.get("agent", ""))
        ctr.rename(name)
        ctr.unpause()
        ctr.reload()
        self.d.log.info("unpaused %s as %s in %.3fs", old, name, time.monotonic() - t0,
                        extra=log_fields(group=body["group"], job=body["job"]))
        return ctr

    # -- after a restart, at a stop -----------------------------------------------------
    def reattached(self, ctr: Any, body: dict) -> bool:
        """A paused container found named for its job at a restart. Paused after the queue
        asked (the job is closing): its end was not reported; it is, and the container kept
        (True). Otherwise it was being handed the job: unpaused, to go on (False)."""
        job = Job.get_or_none(Job.id == body["job"])
        if job is not None and job.closing:
            self.d._event(body["job"], "exited", exit_code=0, error="", container=ctr.name)
            self.keep(ctr, body["group"], body.get("agent", ""), memory(ctr) or self.budget)
            return True
        ctr.unpause()
        return False

    def adopt(self, ctr: Any) -> bool:
        """A paused agent container no job file accounts for (a runner before this one paused
        it): kept, within the budget. False: the caller removes it."""
        labels = ctr.labels or {}
        try:
            ctr.reload()  # a listing's entry has its state as a word, not its inspection
        except (APIError, NotFound):
            return False
        if self.budget <= 0 or ctr.status != "paused" or labels.get(PRECHECK_LABEL) or \
                MADE_AS_LABEL not in labels or "nanoclaw.group" not in labels:
            return False
        used = memory(ctr)
        if used is None or used > self.budget:
            return False
        self.d.log.info("kept paused %s (%.0f MiB) from before the restart", ctr.name, used / MiB)
        self.keep(ctr, labels["nanoclaw.group"], labels.get("nanoclaw.agent", ""), used)
        return True

    def stop_all(self) -> None:
        with self.lock:
            gone, self.parked = list(self.parked.values()), {}
        for p in gone:
            self._stop(p)

    def listing(self) -> list[tuple[str, str, int]]:
        with self.lock:
            return [(p.group, p.agent, p.memory) for p in sorted(self.parked.values(), key=lambda p: p.since)]

    def _stop(self, p: Parked) -> None:
        try:
            with self.d.client() as client:
                kill(client.containers.get(p.id))
        except (APIError, NotFound, OSError) as exc:
            self.d.log.warning("cannot remove paused %s: %s", p.name, exc)


def kill(ctr: Any) -> None:
    """Remove a container, paused or not, at once (a stop would wait out its grace frozen)."""
    try:
        ctr.kill()
    except (APIError, NotFound):
        pass
    try:
        ctr.remove(force=True)
    except NotFound:
        pass


def memory(ctr: Any) -> int | None:
    """The PSS of the container's processes (bytes), from /proc; None if it cannot be read."""
    try:
        ctr.reload()
        pid = int(ctr.attrs["State"]["Pid"])
    except (APIError, NotFound, KeyError, TypeError, ValueError):
        return None
    if pid <= 0:
        return None
    total, seen = 0, False
    for p in _processes(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as fh:
                for line in fh:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1]) * 1024
                        seen = True
                        break
        except (OSError, ValueError):
            continue  # gone meanwhile
    return total if seen else None


def _processes(pid: int) -> list[int]:
    """Every process in ``pid``'s cgroup (the container's), or just ``pid``."""
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return [pid]
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":
            where = CGROUP_ROOT / path.lstrip("/")  # cgroups v2
        elif "pids" in controllers.split(",") or "memory" in controllers.split(","):
            where = CGROUP_ROOT / controllers.split(",")[0] / path.lstrip("/")
        else:
            continue
        try:
            procs = [int(x) for x in (where / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            continue
        if pid in procs:
            return procs
    return [pid]
