"""The owner's stop, inside the container: interrupt the running turn on a ``stop`` in ``in/``.

SYNOPSIS
    async with StopWatch(inbox, seen, job, turn, interrupt, log) as watch: ...
    watch.stopped                    the owner stopped this turn (its result has no answer)

DESCRIPTION
    The host (the queue, on the owner's ``stop`` in the main chat or
    ``nanoclaw stop GROUP``) writes ``{"job": J, "turn": T}`` as a ``stop``
    file into ``/workspace/ipc/in``. While turn T of job J runs,
    :class:`StopWatch` waits on its own inotify watch of ``in/new`` and, on
    that file, calls the SDK's interrupt (``Session.interrupt``): the CLI
    ends the turn (a running tool is killed), the session and the container
    stay, and the next prompt is answered as usual. A stop for another job or
    turn (one that came too late) is ignored; prompts are left for the agent
    runner's loop, which reads them after the turn.

READS
    ``/workspace/ipc/in`` (read-only here: only the host writes it). Writes
    nothing; stop files read are added to the runner's ``seen``.

HOSTILE INPUT
    None: nothing in this container can write, forge or redirect a stop file,
    since ``in/`` is the host's and mounted read-only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from inotify_simple import INotify, flags
from protocol import BadMessage, Spool


class StopWatch:
    """Watches for a stop of one turn for as long as an ``async with`` block runs it."""

    def __init__(self, inbox: Spool, seen: set[str], job: int, turn: int,
                 interrupt: Callable[[], Awaitable[None]], log: Callable[[str], None]) -> None:
        self.inbox, self.seen, self.job, self.turn = inbox, seen, job, turn
        self.interrupt, self.log = interrupt, log
        self.stopped = False  # the owner stopped this turn
        self._task: asyncio.Task | None = None
        self._notify: INotify | None = None

    async def __aenter__(self) -> "StopWatch":
        self._notify = INotify()
        self._notify.add_watch(str(self.inbox.new), flags.MOVED_TO | flags.CLOSE_WRITE)
        self._task = asyncio.get_running_loop().create_task(self._watch())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None and self._notify is not None
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._notify.close()

    def _stop_here(self) -> bool:
        """Whether a stop of this turn waits in ``in/``. Stop files are marked seen (the agent
        runner's loop skips them); prompts are left to that loop."""
        for path in self.inbox.unseen(self.seen):
            if not path.name.endswith(".stop"):
                continue
            self.seen.add(path.name)
            try:
                env = self.inbox.read(path)
            except BadMessage as exc:
                self.log(f"ignoring {path.name}: {exc}")
                continue
            if env.type == "stop" and env.body["job"] == self.job and env.body["turn"] == self.turn:
                return True
        return False

    async def _watch(self) -> None:
        assert self._notify is not None
        loop = asyncio.get_running_loop()
        woke = asyncio.Event()
        loop.add_reader(self._notify.fd, lambda: (self._notify.read(timeout=0), woke.set()))
        try:
            while not self._stop_here():
                woke.clear()
                await woke.wait()
            self.stopped = True
            self.log(f"the owner stopped turn {self.turn}; interrupting it")
            await self.interrupt()
        finally:
            loop.remove_reader(self._notify.fd)
