"""One `nanoclaw pair` as the channel daemon runs it: the pairing process, its events, its end.

``pair`` decides whether there is anything to pair: a linked session is left
alone (and reconnected if it had stopped for good); otherwise the channel's
client is stopped and handed back to its connect loop once pairing has ended.

The daemon only relays: it starts pairproc as a child (pairchild.py), passes each
QR code or phone code on to the CLI, and takes the child's final line as the
outcome. A child that outlives its own timeout (neonize hung in it) is killed, so
is one whose terminal went away or that a newer `nanoclaw pair` replaced: a
pairing can be abandoned and started again without restarting anything.
"""

from __future__ import annotations

import asyncio
import logging
import sys

from nanoclaw.channels.whatsapp.connection import NOT_PAIRED, Connection
from nanoclaw.channels.whatsapp.convert import is_phone, phone_digits
from nanoclaw.channels.whatsapp.pairchild import Emit, PairingRun
from nanoclaw.channels.whatsapp.session import SessionError, linked_account

log = logging.getLogger("nanoclaw.whatsapp")

PAIR_COMMAND = (sys.executable, "-m", "nanoclaw.channels.whatsapp.pairproc")


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
