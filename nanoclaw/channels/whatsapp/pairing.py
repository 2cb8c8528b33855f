"""One `nanoclaw pair` as the channel daemon runs it: the pairing process, its events, its end.

``pair`` decides whether there is anything to pair: a linked session is left
alone (and reconnected if it had stopped for good); otherwise the channel's
client is stopped and handed back to its connect loop once pairing has ended.

The daemon only relays: it starts pairproc as a child, passes each QR code or
phone code on to the CLI, and takes the child's final line as the outcome. A
child that outlives its own timeout (neonize hung in it) is killed, so is one
whose terminal went away or that a newer `nanoclaw pair` replaced: a pairing
can be abandoned and started again without restarting anything.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Awaitable, Callable

from nanoclaw.channels.whatsapp.connection import NOT_PAIRED, Connection
from nanoclaw.channels.whatsapp.convert import is_phone, phone_digits
from nanoclaw.channels.whatsapp.session import SessionError, linked_account

log = logging.getLogger("nanoclaw.whatsapp")

PAIR_COMMAND = (sys.executable, "-m", "nanoclaw.channels.whatsapp.pairproc")
GRACE = 10.0  # past the child's own timeout before it is taken as hung and killed
EXIT_WAIT = 5.0  # after its last line: how long the child may take to exit by itself
SUPERSEDED = "another `nanoclaw pair` took over"

Emit = Callable[[dict], Awaitable[None]]


async def pair(conn: Connection, command: tuple[str, ...] | list[str], phone: str | None, emit: Emit) -> dict:
    """Link this server as a device; stream QR codes (or the phone code) to ``emit``.

    A linked session is left alone (and reconnected if it had stopped for good): this
    never disconnects a working or connecting client. Otherwise our client is stopped
    and the pairing process (``command``: :mod:`pairproc`) does the work; a `nanoclaw
    pair` already running is ended in favour of this one (its terminal may be long gone)."""
    if phone is not None and not is_phone(phone):
        return {"ok": False, "error": f"not a phone number: {phone!r} (international format, e.g. +49 170 1234567)"}
    if conn.pairing is not None:
        conn.pairing.cancel()
        await conn.pairing.end()
    try:
        account = linked_account(conn.session)
    except SessionError as exc:
        return {"ok": False, "error": str(exc)}
    if account and conn.state != "logged_out":
        if conn.state in ("replaced", "outdated", "unpaired", "waiting"):
            conn.set("starting", f"linked as {account}; connecting")
            conn.wake()
        return {"ok": True, "paired": account, "already": True, "status": conn.status}
    if not await conn.release_client():
        return {"ok": False, "error": "the WhatsApp client did not stop; the channel will be restarted "
                                      "by its watchdog: run `nanoclaw pair` again then"}
    wcfg = conn.wcfg
    run = conn.pairing = PairingRun(command, {
        "session": str(conn.session), "phone": phone_digits(phone) if phone else None,
        "timeout": wcfg.pair_timeout, "proxy": wcfg.proxy}, wcfg.pair_timeout)
    log.info("pairing started (%s)", "phone code" if phone else "QR code")
    conn.set("pairing", "pairing — waiting for the phone")
    try:
        result = await run.run(emit)
    except (ConnectionError, OSError, asyncio.TimeoutError):  # the CLI is gone or stopped reading
        log.info("pairing abandoned: the terminal went away")
        result = {"ok": False, "error": "abandoned"}
    finally:
        if conn.pairing is run:
            conn.pairing = None
    if conn.pairing is None and not conn.stopping:  # not taken over by a newer pairing
        if result.get("ok"):
            log.info("whatsapp paired as %s", result.get("paired"))
            conn.backoff.reset()
            conn.set("starting", f"paired as {result.get('paired')}; connecting")
        else:
            log.warning("whatsapp pairing failed: %s", result.get("error"))
            conn.set("unpaired", NOT_PAIRED)
        conn.wake()
    return result


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
