"""What the channel relies on in neonize itself, checked: it works offline, loads only where
WhatsApp is on, acks before we store, and still has the callback pairing listens to."""

from __future__ import annotations

import asyncio
import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

from neonize.aioze.events import MessageEv

from whatsapp_harness import ALICE, FAMILY, jid, message_ev, run, wait_until


OFFLINE_PROBE = r"""
import asyncio, ctypes, json, socket, sys
from pathlib import Path
connects = []
def audit(event, args):
    if event == "socket.connect":
        sock, address = args[0], args[1]
        if sock.family != socket.AF_UNIX:
            connects.append(repr(address))
sys.addaudithook(audit)
import logging
logging.basicConfig(level=logging.INFO, force=True)
import neonize  # must not download the Go library
from neonize.aioze.client import NewAClient
from neonize.aioze import events as events_mod
from neonize.events import EVENT_TO_INT
from neonize.aioze.events import MessageEv
tmp = Path(sys.argv[1])
client = NewAClient(str(tmp / "session.db"))
got = []

async def main():
    events_mod.event_global_loop = asyncio.get_running_loop()  # what connect() would set
    async def handler(c, ev):
        got.append((ev.Info.ID, ev.Message.conversation))
    client.event(MessageEv)(handler)
    data = bytes.fromhex(sys.argv[2])
    buf = ctypes.create_string_buffer(data, len(data))
    # the entry point the Go callback uses
    client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[MessageEv])
    for _ in range(50):
        await asyncio.sleep(0.01)
        if got:
            break
asyncio.run(main())
print(json.dumps({"connects": connects, "got": got, "session_exists": (tmp / "session.db").exists()}))
"""


def test_neonize_imports_and_builds_a_client_offline(tmp_path):
    """No download at import, no network at construction; events arrive through neonize's own dispatch."""
    ev = message_ev(jid(FAMILY, "g.us"), jid(ALICE), "OFF1", "through neonize")
    proc = subprocess.run([sys.executable, "-c", OFFLINE_PROBE, str(tmp_path), ev.SerializeToString().hex()],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"})
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["connects"] == []
    assert result["got"] == [["OFF1", "through neonize"]]
    assert result["session_exists"] is False  # created at connect(), not before


def test_the_channel_without_whatsapp_never_loads_neonize():
    code = ("import sys; import nanoclaw.daemons.channel, nanoclaw.admin.cli, nanoclaw.daemons.queue; "
            "print('neonize' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_neonize_cannot_hold_the_ack_until_the_message_is_stored():
    """whatsmeow acknowledges a message once its Go event handler returns (SynchronousAck
    would make it wait for that handler). neonize's handler only queues the event for
    Python, and neonize's Python dispatch (Event.execute, what the Go callback calls)
    returns before our handler has even started; neonize exposes no SynchronousAck. So the
    ack always precedes the store: what a crash can lose is said in the README."""
    import inspect

    import neonize
    from neonize.aioze import events as events_mod
    from neonize.aioze.client import NewAClient
    from neonize.aioze.events import Event
    from neonize.events import EVENT_TO_INT

    finished: list[str] = []

    async def go():
        loop = asyncio.get_running_loop()
        saved, events_mod.event_global_loop = events_mod.event_global_loop, loop
        release = asyncio.Event()
        try:
            dispatch = Event(None)

            async def handler(client, ev):  # our store, still going
                await release.wait()
                finished.append(ev.Info.ID)
            dispatch.list_func[EVENT_TO_INT[MessageEv]] = handler
            data = message_ev(jid(FAMILY, "g.us"), jid(ALICE), "ACK1", "hello").SerializeToString()
            buf = ctypes.create_string_buffer(data, len(data))

            def go_callback() -> list[str]:
                dispatch.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[MessageEv])
                return list(finished)  # execute returned: the Go side goes on (and acks)
            seen = await asyncio.wait_for(asyncio.to_thread(go_callback), 5)
            release.set()
            await wait_until(lambda: finished)
            return seen
        finally:
            release.set()
            events_mod.event_global_loop = saved
    assert run(go()) == []
    sources = "".join(p.read_text(errors="replace") for p in Path(neonize.__file__).parent.rglob("*.py"))
    assert "SynchronousAck" not in sources
    assert list(inspect.signature(NewAClient.connect).parameters) == ["self", "proxy_settings"]


def test_neonize_still_has_the_login_status_callback_pairing_listens_to():
    """pairproc hears how the QR phase ended through neonize's private __onLoginStatus; an
    upgrade that renames it must fail here, not leave pairing deaf."""
    from neonize.aioze.client import NewAClient
    assert callable(getattr(NewAClient, "_NewAClient__onLoginStatus", None))
    assert "_NewAClient__onLoginStatus" in NewAClient.connect_with_proxy.__code__.co_consts[-1].co_names or \
        "_NewAClient__onLoginStatus" in NewAClient.connect_with_proxy.__code__.co_names
