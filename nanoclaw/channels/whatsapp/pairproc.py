"""The pairing process: links this server to the owner's phone, then exits.

`nanoclaw pair` asks the channel daemon, which runs this module as a child
(``python -m nanoclaw.channels.whatsapp.pairproc``) while its own client is
stopped, and connects once it has ended. Pairing never runs inside the daemon:
in neonize 0.5.2 a connect that was stopped while showing QR codes never ends,
and after a QR timeout, a pairing error or a 405 its Go side waits forever for
an account id, so a hang must be one that dies with a process.

Protocol. stdin: one JSON line ``{session, phone, timeout, proxy}`` (so neither
number nor proxy shows in ``ps``). stdout: JSON lines ``{"event": "qr", "data"}``
or ``{"event": "code", "code"}`` while waiting, then one ``{"final": true, "ok",
"paired" | "error"}``. Go prints to file descriptor 1 itself ("Pair Code: …"),
so our stdout is moved to another descriptor first and fd 1 goes to /dev/null:
QR data and codes are for the owner's terminal, not for a log.

The process ends with ``os._exit``: neonize may have left a worker thread that
would keep the interpreter from exiting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nanoclaw.channels.whatsapp.convert import jid_str
from nanoclaw.channels.whatsapp.session import SessionError, linked_account

log = logging.getLogger("nanoclaw.whatsapp.pair")

PAIR_SUCCESS = 2  # neonize's PairStatus.SUCCESS
STOP_WAIT = 5.0  # after success: how long the now linked client may take to stop
RAN_OUT = ("no phone linked within {:.0f}s: the QR codes ran out (WhatsApp offers six, about "
           "160 s in all). Run `nanoclaw pair` again")
SILENT = ("WhatsApp sent no pairing code within {:.0f}s: is it reachable from here (network, "
          "[whatsapp] proxy)?")
OUTDATED = "WhatsApp refuses this version of neonize (client outdated): upgrade nanoclaw"
# whatsmeow's QR channel ends with one of these; neonize 0.5.2 only prints them.
LOGIN_STATUS = {
    "timeout": None,  # RAN_OUT, with the timeout filled in
    "err-client-outdated": OUTDATED,
    "err-scanned-without-multidevice": "the phone scanned the code without multi-device: update WhatsApp "
                                       "on the phone",
    "err-unexpected-state": "pairing failed: WhatsApp was in an unexpected state; run `nanoclaw pair` again",
}

Emit = Callable[[dict], None]


def new_pairing_client(session: Path) -> Any:
    """neonize's real client, also hearing how whatsmeow's QR phase ended ("timeout",
    "success", "err-…"), which neonize's own login-status callback drops."""
    from neonize.aioze.client import NewAClient

    class PairingClient(NewAClient):
        on_login_status: Callable[[str], None] = staticmethod(lambda status: None)

        # neonize's private callback, by its mangled name (tests check it still exists); Go calls
        # it on its own thread with C strings freed on return, so they are copied at once.
        def _NewAClient__onLoginStatus(self, uuid: int, status: int) -> None:  # noqa: N802
            import ctypes
            self.on_login_status(ctypes.string_at(status).decode(errors="replace") if status else "")

    return PairingClient(str(session))


async def pair(session: Path, phone: str | None, timeout: float, proxy: str, emit: Emit,
               client_factory: Callable[[Path], Any] = new_pairing_client) -> dict:
    """Pair the session at ``session``: stream QR codes (or the phone code) to ``emit``; return
    the outcome ({ok, paired} or {ok: False, error}) within ``timeout`` seconds."""
    from neonize.aioze.events import ClientOutdatedEv, PairStatusEv

    loop = asyncio.get_running_loop()
    outcome: asyncio.Future[dict] = loop.create_future()

    def finish(**fields: Any) -> None:
        if not outcome.done():
            outcome.set_result(fields)

    client = client_factory(session)
    asked = False
    shown = 0  # codes the owner was given

    async def on_qr(c: Any, data: bytes) -> None:
        nonlocal asked, shown
        shown += 1
        if phone is None:
            emit({"event": "qr", "data": data.decode() if isinstance(data, bytes) else str(data)})
        elif not asked:
            asked = True  # PairPhone works only once the first QR code came
            try:
                emit({"event": "code", "code": await c.PairPhone(phone, True)})
            except Exception as exc:
                finish(ok=False, error=f"WhatsApp refused the phone number: {exc}")

    async def on_pair_status(c: Any, ev: Any) -> None:
        if ev.Status == PAIR_SUCCESS:
            finish(ok=True, paired=jid_str(ev.ID))
        else:
            finish(ok=False, error=f"pairing failed: {ev.Error or 'unknown error'}")

    async def on_outdated(c: Any, ev: Any) -> None:
        finish(ok=False, error=OUTDATED)

    def login_status(status: str) -> None:
        if status == "success":
            try:
                account = linked_account(session)  # whatsmeow saved the device before saying so
            except SessionError:
                account = None
            if account:
                finish(ok=True, paired=account)
        elif status in LOGIN_STATUS:
            finish(ok=False, error=LOGIN_STATUS[status] or RAN_OUT.format(timeout))
        elif status.startswith("err"):
            finish(ok=False, error=f"pairing failed: {status}")

    def guarded(fn: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
        async def handler(c: Any, ev: Any) -> None:
            try:
                await fn(c, ev)
            except Exception as exc:  # an async handler's exception would be lost silently
                finish(ok=False, error=f"pairing failed: {exc}")
        return handler

    handlers = {PairStatusEv: guarded(on_pair_status), ClientOutdatedEv: guarded(on_outdated)}
    for event_type, fn in handlers.items():
        client.event(event_type)(fn)
    qr = guarded(on_qr)
    client.event.qr(qr)
    client.on_login_status = lambda status: loop.call_soon_threadsafe(login_status, status)
    args = ()
    if proxy:
        from neonize._binder import ProxySettings
        args = (ProxySettings(proxy_address=proxy),)
    try:
        task = await client.connect(*args)
    except Exception as exc:
        return {"ok": False, "error": f"cannot reach WhatsApp: {exc}"}

    def ended(t: asyncio.Task) -> None:
        if not t.cancelled():
            finish(ok=False, error=f"cannot reach WhatsApp: {t.exception() or 'the connection ended'}")
    task.add_done_callback(ended)
    try:
        result = await asyncio.wait_for(asyncio.shield(outcome), timeout)
    except asyncio.TimeoutError:
        result = {"ok": False, "error": (RAN_OUT if shown else SILENT).format(timeout)}
    if result.get("ok"):
        # Linked: stop it, so the channel's client is the only one online with this device.
        try:
            await asyncio.wait_for(client.stop(), STOP_WAIT)
        except Exception as exc:  # the daemon ends this process anyway
            log.warning("pairing: the linked client did not stop: %s", exc)
    return result


def main(client_factory: Callable[[Path], Any] = new_pairing_client) -> None:
    """Run one pairing as the protocol above says; never returns."""
    out = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # Go writes here
    os.close(null)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="pairing: %(message)s", force=True)

    def emit(event: dict) -> None:
        out.write(json.dumps(event) + "\n")
        out.flush()

    async def run() -> None:
        try:
            req = json.loads(sys.stdin.readline())
            result = await pair(Path(req["session"]), req.get("phone"), float(req["timeout"]),
                                req.get("proxy") or "", emit, client_factory)
        except Exception as exc:
            result = {"ok": False, "error": f"the pairing process failed: {exc}"}
        emit({"final": True, **result})
        os._exit(0)  # not asyncio.run's cleanup: it would wait for a stuck neonize thread

    asyncio.run(run())


if __name__ == "__main__":
    main()
