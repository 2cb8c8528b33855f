"""The skeleton every nanoclaw daemon is built on (as Postfix's server skeletons):
the wake-up loop, writes the disk may refuse, systemd talk. Its socket (reading and
answering request lines) is core/serve.py.

A daemon is a loop around ``work()``: do everything that is pending, say how
long until something becomes due, then sleep until a socket nudge, an inotify
event on a watched spool, or that deadline. ``work()`` always re-reads the
durable state (spools, database), so a missed wake-up costs latency, never a
message; a slow rescan timer is the last safety net.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import resource
import signal
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import sdnotify
from inotify_simple import INotify, flags

from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file
from nanoclaw.core import faults, serve
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import open_db
from nanoclaw.core.protocol import RETRY_FIRST, RETRY_MAX, Spool, unique_name

RESCAN_SECONDS = 30.0
STATUS_EVERY = 0.5  # seconds between status lines worked out after work passes
UNWATCHED_CHECK = 5.0  # without systemd's watchdog: how often stuck() is asked
EXIT_STUCK = 70  # EX_SOFTWARE: how a stuck daemon without a watchdog exits


def supervise(task: asyncio.Task, log: logging.Logger, what: str,
              on_error: Callable[[BaseException], None] | None = None, **subjects: Any) -> asyncio.Task:
    """See to it that a background task's failure is never left unretrieved: it is logged with
    its traceback (``subjects`` as journal fields) and handed to ``on_error``, which acts on it
    (tries again, wakes a loop). A cancelled task is not a failure."""
    def ended(t: asyncio.Task) -> None:
        if t.cancelled() or t.exception() is None:
            return
        exc = t.exception()
        log.error("%s failed: %s", what, exc, exc_info=exc, extra=log_fields(**subjects))
        if on_error is not None:
            try:
                on_error(exc)
            except Exception:
                log.exception("acting on the failure of %s failed", what, extra=log_fields(**subjects))

    task.add_done_callback(ended)
    return task


class Daemon:
    """A daemon's skeleton: subclasses set ``name`` and implement ``work``/``handle``."""

    name = "daemon"

    def __init__(self, cfg: config_mod.Config | None = None) -> None:
        self.cfg = cfg or config_file.get()
        self.log = logging.getLogger(f"nanoclaw.{self.name}")
        self.notifier = sdnotify.SystemdNotifier()
        self.wake = asyncio.Event()
        self.stopping = False
        self._inotify = INotify()
        self._watched: dict[Path, int] = {}
        self._last_status = ""
        self._status_at = float("-inf")  # when the status line was last worked out after a pass
        self._status_later: asyncio.TimerHandle | None = None
        self.held = faults.Held()  # spool files the disk refused, written at the next passes
        self.fault = ""  # why the disk refuses this daemon's writes, while it does
        self._fault_since = 0.0
        self._fault_passes = 0  # passes in a row that met a refusal: the retry's backoff
        self._refusal = False  # the current pass met one
        self._tasks: set[asyncio.Task] = set()  # spawn()'s, held until they end
        # Benchmark only: NANOCLAW_BENCH_POLL="queue=2,ipc=1" makes those daemons ignore
        # nudges and inotify and rescan on a fixed period, as a polling design would.
        polls = dict(p.split("=", 1) for p in os.environ.get("NANOCLAW_BENCH_POLL", "").split(",") if "=" in p)
        self.poll_period = float(polls[self.name]) if self.name in polls else 0.0

    # -- for subclasses ---------------------------------------------------
    def setup(self) -> Any:
        """Prepare directories and recover leftovers, before READY=1 (may be async)."""

    def work(self) -> float | None:
        """Process everything pending; return seconds until the next deadline, or None."""
        return None

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        """Answer one socket request. The base understands nudge, ping and status (core/serve.py)."""
        return serve.base_handle(self, req)

    def status(self) -> str:
        """A one-line live summary for systemd's STATUS= and ``nanoclaw status``."""
        return "running"

    def disk_waits(self) -> int:
        """How many things of this daemon wait for the disk outside its passes (a thread
        retrying a report): while any does, the fault is not over."""
        return 0

    def stuck(self) -> str:
        """What part of the daemon is stuck past its time ("" when nothing is). A daemon whose
        parts can hang where it cannot end them (a library's blocked call) overrides this:
        while it says something, the watchdog is not fed and the process gets replaced."""
        return ""

    async def shutdown(self) -> None:
        """Drain before exit (SIGTERM)."""

    def disconnected(self, writer: asyncio.StreamWriter) -> None:
        """A socket client went away (subclasses forget what they kept for it)."""

    # -- writes the disk may refuse ----------------------------------------
    def put(self, spool: Spool, kind: str, body: dict, *, durable: bool = True,
            then: Callable[[], None] | None = None) -> bool:
        """:meth:`Spool.put` for a write this daemon decided on its own (no spool file of its
        input stands for it): one the disk refuses is kept and written at a later pass, in
        order, and ``then()`` (a nudge, say) runs once it is written. True if written now.

        A write that must be durable before something else is recorded (a reply before the
        cursor moves) calls ``spool.put`` itself and lets the refusal stop that work."""
        write = faults.Write(spool, kind, body, unique_name(kind), durable, then)
        if self.held:  # behind what is already kept: the order of writes is kept
            self.held.add(write)
            return False
        try:
            spool.put(kind, body, name=write.name, durable=durable)
        except OSError as exc:
            if not self.refused(exc):
                raise
            self.held.add(write)
            return False
        if then is not None:
            then()
        return True

    def refused(self, exc: BaseException) -> bool:
        """Whether ``exc`` is the disk refusing a write. If so the daemon knows it: logged once
        per episode, shown in its status line, and the pass is tried again soon."""
        reason = faults.storage_error(exc)
        if reason is None:
            return False
        self._refusal = True
        if not self.fault:
            self._fault_since = time.monotonic()
            self.log.error("the disk refuses writes: %s; what was to be written is kept and written "
                           "once it can be", reason)
        if reason != self.fault:
            self.fault = reason
            self._set_status()
        return True

    def _begin_pass(self) -> None:
        """Before each pass: what the disk refused before is written first, in order."""
        self._refusal = False
        if self.held and (exc := self.held.flush(self.log)) is not None:
            self.refused(exc)

    def _after_pass(self, delay: float | None) -> float | None:
        """A pass that met a refusal is tried again soon (0.5 s, doubling to 5 s); the first
        pass that meets none, with nothing kept, ends the episode."""
        if self._refusal or self.held:
            self._fault_passes += 1
            retry = min(RETRY_FIRST * 2 ** (self._fault_passes - 1), RETRY_MAX)
            return retry if delay is None else min(delay, retry)
        if self.fault and not self.disk_waits():
            self.log.warning("the disk takes writes again (refused for %.0fs); nothing was lost",
                             time.monotonic() - self._fault_since)
            self.fault, self._fault_passes = "", 0
            self._set_status()
        return delay

    def status_line(self) -> str:
        """``status()`` and, while the disk refuses writes, what this daemon waits for."""
        line = self.status()
        if self.fault:
            kept = f", {len(self.held)} write(s) kept" if self.held else ""
            line += f"; {faults.MARK}: {self.fault}{kept}"
        return line

    # -- background tasks -----------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], what: str,
              on_error: Callable[[BaseException], None] | None = None, **subjects: Any) -> asyncio.Task:
        """Run ``coro`` in the background. Its failure is never left unretrieved: logged with its
        traceback (``subjects`` as journal fields), handed to ``on_error`` to act on, and the
        loop woken to look at the durable state again."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def failed(exc: BaseException) -> None:
            if on_error is not None:
                on_error(exc)
            self.wake.set()

        return supervise(task, self.log, what, failed, **subjects)

    # -- machinery ----------------------------------------------------------
    def watch(self, directory: Path) -> None:
        """Wake the loop when a file lands in ``directory`` (inotify)."""
        if directory in self._watched:
            return
        try:
            # DONT_FOLLOW: a directory a container can replace by a link must not make us watch elsewhere
            wd = self._inotify.add_watch(str(directory), flags.MOVED_TO | flags.CLOSE_WRITE
                                         | flags.DONT_FOLLOW | flags.ONLYDIR)
        except OSError as exc:
            self.log.warning("cannot watch %s: %s", directory, exc)
            return
        self._watched[directory] = wd

    def notify(self, msg: str) -> None:
        self.notifier.notify(msg)

    def _on_inotify(self) -> None:
        try:
            self._inotify.read(timeout=0)
        except OSError:
            pass
        self.wake.set()

    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One socket client, served until it leaves (core/serve.py)."""
        await serve.serve_client(self, reader, writer)

    async def _watchdog(self) -> None:
        """Feed systemd's watchdog every half period while nothing is ``stuck()``. Without
        one (``nanoclaw run-all``, a terminal), a stuck daemon exits itself instead, so that
        its supervisor starts it again: either way no hang outlives the process."""
        usec = int(os.environ.get("WATCHDOG_USEC", "0") or 0)
        period = usec / 1e6 / 2 if usec else UNWATCHED_CHECK
        told = ""
        while True:
            await asyncio.sleep(period)
            stuck = self.stuck()
            if not stuck:
                told = ""
                if usec:
                    self.notify("WATCHDOG=1")
                continue
            if not told:  # once per episode: the text counts seconds
                told = stuck
                self.log.error("%s: %s", "watchdog no longer fed" if usec else "exiting to be restarted", stuck)
                self._set_status()  # a status() that shows it is published now, not at the next pass
            if not usec:
                logging.shutdown()
                os._exit(EXIT_STUCK)  # a normal exit would wait for the stuck thread

    def _set_status(self) -> None:
        line = self.status_line()
        if line != self._last_status:
            self._last_status = line
            self.notify(f"STATUS={line}")

    def _status_after_pass(self) -> None:
        """The status line after a work pass, at most every STATUS_EVERY seconds (and once more
        at the end of a busy spell): under load a pass per message would spend as long
        counting rows for systemd's STATUS= as doing the work."""
        now = time.monotonic()
        if now - self._status_at >= STATUS_EVERY:
            self._status_at = now
            self._set_status()
        elif self._status_later is None:
            def later() -> None:
                self._status_later = None
                self._status_at = time.monotonic()
                self._set_status()
            self._status_later = asyncio.get_running_loop().call_later(STATUS_EVERY - (now - self._status_at), later)

    async def run_async(self) -> None:
        loop = asyncio.get_running_loop()
        # Many clients at once (terminals, the router, nudges) need file descriptors.
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (OSError, ValueError) as exc:  # a sandbox may forbid it: run with what we have
                self.log.warning("cannot raise the open-files limit from %d: %s", soft, exc)
        self.cfg.runtime_dir.mkdir(parents=True, exist_ok=True)
        open_db(self.cfg.db_path)
        sock = self.cfg.socket(self.name)
        server = await serve.listen(self, sock)
        loop.add_reader(self._inotify.fileno(), self._on_inotify)
        stop = asyncio.Event()

        def on_term() -> None:
            self.stopping = True
            self.notify("STOPPING=1")
            self.log.info("stopping on signal")
            stop.set()
            self.wake.set()

        loop.add_signal_handler(signal.SIGTERM, on_term)
        loop.add_signal_handler(signal.SIGINT, on_term)
        ready = self.setup()
        if inspect.isawaitable(ready):
            await ready
        watchdog = self.spawn(self._watchdog(), "the watchdog")
        self.notify("READY=1")
        self.log.info("ready socket=%s", sock)
        try:
            while not stop.is_set():
                self.wake.clear()
                started = time.monotonic()
                try:
                    self._begin_pass()
                    delay = self.work()
                    if inspect.isawaitable(delay):
                        delay = await delay
                except Exception as exc:
                    # Everything work() reads is durable and re-read next pass: log, pause, go on.
                    if self.refused(exc):
                        delay = None  # logged once for the episode; _after_pass sets the retry
                    else:
                        self.log.exception("work pass failed; retrying in 1s")
                        delay = 1.0
                delay = self._after_pass(delay)
                self._status_after_pass()
                took = time.monotonic() - started
                if took > 5:
                    self.log.warning("work pass took %.1fs", took)
                timeout = RESCAN_SECONDS if delay is None else max(0.0, min(delay, RESCAN_SECONDS))
                if self.poll_period:
                    await asyncio.sleep(max(0.0, self.poll_period - (time.monotonic() - started)))
                    continue
                try:
                    await asyncio.wait_for(self.wake.wait(), timeout)
                except asyncio.TimeoutError:
                    pass
        finally:
            watchdog.cancel()
            server.close()
            await self.shutdown()
            try:
                sock.unlink()
            except FileNotFoundError:
                pass
            self.log.info("stopped")

    def run(self) -> None:
        asyncio.run(self.run_async())

    @classmethod
    def main(cls) -> None:
        """What `nanoclaw <name>` (and so its unit) runs."""
        cls().run()

