"""The pairing child as the channel daemon sees it: started, relayed, cancelled, ended.

SUMMARY
    One ``PairingRun`` per `nanoclaw pair`: it starts pairproc (the child that runs
    neonize's pairing in its own process), writes it the request, passes each event it
    prints on to ``emit`` and returns its final line as the outcome. The connection holds
    the run in progress (``Connection.pairing``) so that a newer `nanoclaw pair` or a
    shutdown can cancel it; pairing.py decides when one runs.

SYNOPSIS
    run = PairingRun(command, request, timeout)
    await run.run(emit) -> dict     the child's outcome, or why there was none
    run.cancel()                    end it now (run answers SUPERSEDED)
    await run.end(force=True)       return once the child is gone

HOSTILE INPUT
    None from outside: the child is our own program; a line of it that is not JSON is
    ignored, one that hangs past its timeout and GRACE is killed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("nanoclaw.whatsapp")

GRACE = 10.0  # past the child's own timeout before it is taken as hung and killed
EXIT_WAIT = 5.0  # after its last line: how long the child may take to exit by itself
SUPERSEDED = "another `nanoclaw pair` took over"

Emit = Callable[[dict], Awaitable[None]]


class PairingRun:
    """The pairing child for one `nanoclaw pair`: ``run`` relays, ``cancel`` ends it early."""

    def __init__(self, command: tuple[str, ...] | list[str], request: dict, timeout: float) -> None:
        self.command = list(command)
        self.request = request
        self.timeout = timeout
        self.proc: asyncio.subprocess.Process | None = None
        self.cancelled = False

    async def run(self, emit: Emit) -> dict:
        """Start the child and relay its events; the outcome as the child reported it, or why
        there was none. ``emit`` raising (the CLI went away) ends the child and propagates."""
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                start_new_session=True)  # a signal to the daemon's group is not the child's
        except OSError as exc:
            return {"ok": False, "error": f"cannot start the pairing process: {exc}"}
        answered = False  # the child said its last word: let it exit by itself
        try:
            try:
                self.proc.stdin.write(json.dumps(self.request).encode() + b"\n")
                await self.proc.stdin.drain()
                self.proc.stdin.close()
            except (ConnectionError, OSError):
                pass  # it died at once: its exit status is the answer, below
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout + GRACE
            while True:
                try:
                    line = await asyncio.wait_for(self.proc.stdout.readline(), max(0.0, deadline - loop.time()))
                except asyncio.TimeoutError:
                    log.error("whatsapp pairing process still running %.0fs after its timeout; killed", GRACE)
                    return {"ok": False, "error": f"no phone linked within {self.timeout:.0f}s (the pairing "
                                                  "process hung and was stopped); run `nanoclaw pair` again"}
                if not line:
                    if self.cancelled:
                        return {"ok": False, "error": SUPERSEDED}
                    code = await self._wait_exit(EXIT_WAIT)
                    return {"ok": False, "error": f"the pairing process ended without an answer (exit status {code})"}
                try:
                    event = json.loads(line)
                except ValueError:
                    log.warning("whatsapp pairing process wrote a line that is not JSON; ignored")
                    continue
                if event.pop("final", False):
                    answered = True
                    return event
                await emit(event)
        finally:
            await self.end(force=not answered)

    def cancel(self) -> None:
        """End the child now (``run`` then answers SUPERSEDED)."""
        self.cancelled = True
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()

    async def end(self, force: bool = True) -> None:
        """Kill the child (unless ``force`` is off: then it has a moment to exit by itself);
        return once it is gone."""
        if self.proc is None or self.proc.returncode is not None:
            return
        if await self._wait_exit(0.0 if force else EXIT_WAIT) is None:
            self.proc.kill()
            await self.proc.wait()  # SIGKILL: no Go thread can hold this up

    async def _wait_exit(self, timeout: float) -> int | None:
        try:
            return await asyncio.wait_for(self.proc.wait(), timeout)
        except asyncio.TimeoutError:
            return None
