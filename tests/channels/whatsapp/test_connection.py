"""The WhatsApp connection (connection.py): the connect loop, its retries and halts, shutdown; on
the recording client, and on neonize's real one offline. Stuck clients and the watchdog:
test_liveness.py."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

from neonize.aioze.events import (
    ConnectedEv,
    ConnectFailureEv,
    DisconnectedEv,
    LoggedOutEv,
    StreamReplacedEv,
    TemporaryBanEv,
)

from nanoclaw.core.models import Group

from whatsapp_harness import ALICE, OWNER, ROOT, TESTS, RecordingClient, connects, run, wait_until
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture


def test_failed_connects_are_retried_with_capped_backoff_then_connected(harness):
    from neonize.exc import NeonizeError

    async def go():
        h = harness()
        waits: list[float] = []
        h_start = h.start(connected=False)
        # no network at boot: four failures, then WhatsApp answers
        orig = RecordingClient.__init__

        def init(self, session):
            orig(self, session)
            self.connect_failures = [NeonizeError("dial tcp: no route to host")] * 4
        RecordingClient.__init__ = init
        try:
            await h_start
        finally:
            RecordingClient.__init__ = orig
        wa = h.wa
        real_wait = wa.conn._wait

        statuses: list[str] = []

        async def recording_wait(timeout):
            if timeout is not None:
                waits.append(timeout)
                statuses.append(wa.status())
            await real_wait(0)
        wa.conn._wait = recording_wait
        await wait_until(lambda: sum(c == ("connect",) for c in h.client.calls) == 5)
        status_while_retrying = statuses[0]
        await h.fire(ConnectedEv(status=True))
        connected = wa.status()
        # a drop of a logged-in session: whatsmeow reconnects itself, we only report it
        await h.fire(DisconnectedEv(status=True))
        reconnecting = wa.status()
        daemon_status = h.daemon.status()
        await h.close()
        return waits, status_while_retrying, connected, reconnecting, daemon_status, h.wa.conn.backoff.attempt
    waits, retrying, connected, reconnecting, daemon_status, attempt = run(go())
    assert waits[:4] == [0.01, 0.02, 0.04, 0.04]  # reconnect_min doubling, capped at reconnect_max
    assert retrying == "disconnected — next attempt in 0s (connect failed: dial tcp: no route to host)"
    assert connected == f"connected as {OWNER}@s.whatsapp.net" and attempt == 0  # backoff reset
    assert reconnecting == "disconnected — reconnecting"
    assert daemon_status.startswith("whatsapp: disconnected — reconnecting; terminal:")


def test_logged_out_stops_retrying_and_says_so_once(harness, caplog):
    from neonize.proto.Neonize_pb2 import LoggedOut

    async def go():
        h = await harness().start()
        await wait_until(lambda: ("connect",) in h.client.calls)
        ev = LoggedOutEv.FromString(LoggedOut(OnConnect=False, Reason=1).SerializeToString())
        await h.fire(ev)
        await h.fire(ev)  # WhatsApp may say it twice: one error line
        await wait_until(h.wa.conn.parked.is_set)  # the loop waits for pairing: no new connect attempt
        connects = sum(c == ("connect",) for c in h.client.calls)
        status = h.wa.status()
        send = await h.deliver({"chat": h.main.jid, "text": "hi", "outbox_id": 3})
        await h.close()
        return connects, status, send, h.client.calls
    with caplog.at_level("WARNING", logger="nanoclaw.whatsapp"):
        connects, status, send, calls = run(go())
    assert connects == 1 and ("stop",) in calls
    assert status == "logged out — run `nanoclaw pair`"
    assert [r.levelname for r in caplog.records if "logged out" in r.getMessage()] == ["ERROR"]
    assert not send["ok"] and "logged out" in send["error"]


def test_stream_replaced_also_stops_retrying(harness):
    async def go():
        h = await harness().start()
        await wait_until(lambda: ("connect",) in h.client.calls)
        await h.fire(StreamReplacedEv())
        await wait_until(h.wa.conn.parked.is_set)
        connects = sum(c == ("connect",) for c in h.client.calls)
        status = h.wa.status()
        await h.close()
        return connects, status
    connects, status = run(go())
    assert connects == 1 and status.startswith("replaced — another program uses this WhatsApp session")


def test_an_unpaired_session_is_never_connected_by_the_channel(harness):
    """The defect: the channel's client connected an unlinked session, whatsmeow went into its
    QR phase, and stopping it there never ends in neonize 0.5.2 (the channel hung for good)."""
    async def go():
        h = await harness(paired=False).start(connected=False)
        await wait_until(h.wa.conn.parked.is_set)
        status, stuck = h.wa.status(), h.daemon.stuck()
        await h.close()
        return status, stuck, h.client.calls
    status, stuck, calls = run(go())
    assert status == "not paired — run `nanoclaw pair`" and stuck == ""
    assert ("connect",) not in calls


def test_a_temporary_ban_is_waited_out_then_the_channel_connects_again(harness):
    """The defect: a ban only set a status, and whatsmeow never reconnects after one:
    WhatsApp stayed dead until someone restarted the unit."""
    async def go():
        h = await harness().start()
        banned_at = time.monotonic()
        await h.fire(TemporaryBanEv(Code=TemporaryBanEv.SEND_TO_TOO_MANY_PEOPLE, Expire=1))
        status, stopped = h.wa.status(), ("stop",) in h.client.calls
        send = await h.deliver({"chat": h.main.jid, "text": "hi", "outbox_id": 4})
        still_one = connects(h)
        await wait_until(lambda: connects(h) == 2, 5)
        waited = time.monotonic() - banned_at
        await h.connect()
        after = h.wa.status()
        await h.close()
        return status, stopped, send, still_one, waited, after
    status, stopped, send, still_one, waited, after = run(go())
    assert status.startswith("temporarily banned by WhatsApp (send to too many people); next attempt at ")
    assert stopped and still_one == 1 and not send["ok"]
    assert waited >= 0.9  # not before the ban's expiry
    assert after == f"connected as {OWNER}@s.whatsapp.net"


def test_a_connect_failure_is_retried_with_backoff(harness):
    from neonize.proto.Neonize_pb2 import Node

    async def go():
        h = await harness().start()
        statuses: list[str] = []
        h.daemon.notify = lambda line: statuses.append(line)
        failure = ConnectFailureEv(Reason=ConnectFailureEv.DESCRIPTOR.fields_by_name["Reason"].enum_type
                                   .values_by_name["INTERNAL_SERVER_ERROR"].number, Message="", Raw=Node(Tag="failure"))
        await h.fire(failure)
        await wait_until(lambda: connects(h) == 2)
        await h.fire(failure)  # again: the backoff grows
        await wait_until(lambda: connects(h) == 3)
        await h.connect()
        await h.close()
        return statuses, h.wa.conn.backoff.attempt
    statuses, attempt = run(go())
    retrying = [s for s in statuses if "next attempt" in s]
    assert retrying and "connect failure: internal server error" in retrying[0]
    assert attempt == 0  # reset once connected


def test_a_lost_session_is_told_in_the_main_chat_when_that_is_on_another_channel(harness):
    from nanoclaw.core.protocol import Spool

    async def go():
        h = await harness().start()
        Group.update(jid="main@term").where(Group.folder == "main").execute()
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))  # said twice: told once
        spool = Spool(h.cfg.spool_dir / "router")
        notices = [e.body for e in spool.take(spool.claim_new())]
        await h.close()
        return notices, h.wa.status()
    notices, status = run(go())
    assert status == "logged out — run `nanoclaw pair`"
    assert len(notices) == 1
    assert notices[0]["chat"] == "main@term" and notices[0]["kind"] == "notice"
    assert notices[0]["text"].startswith("whatsapp: WhatsApp logged this server out")


def test_a_qr_code_on_the_channels_own_client_throws_the_process_away(harness):
    """The store lost its device after the channel looked: the client shows QR codes, and
    neonize 0.5.2 can never stop it there. Only a new process helps: stuck at once."""
    async def go():
        h = await harness().start(connected=False)
        await wait_until(lambda: connects(h) == 1)
        await h.fire(b"2@qrdata,1,2,3", "qr")
        stuck, status = h.daemon.stuck(), h.wa.status()
        await h.close()
        return stuck, status
    stuck, status = run(go())
    assert stuck.startswith("the WhatsApp client is stuck: asking for a QR scan")
    assert status == "not paired — run `nanoclaw pair`"


def test_terminal_keeps_working_beside_a_disconnected_whatsapp(harness):
    from neonize.exc import NeonizeError

    async def go():
        h = harness()
        orig = RecordingClient.__init__

        def init(self, session):
            orig(self, session)
            self.connect_failures = [NeonizeError("no network")] * 1000
        RecordingClient.__init__ = init
        try:
            await h.start(connected=False)
        finally:
            RecordingClient.__init__ = orig
        got = await h.daemon.handle({"op": "inbound", "group": "term", "text": "hello from the terminal",
                                     "id": "t1"}, None)
        sent = await h.deliver({"chat": "term@term", "text": "**hi**", "outbox_id": 1})
        mode = oct(h.wa.conn.dir.stat().st_mode & 0o777)
        await h.close()
        return got, sent, h.rows("term@term"), mode
    got, sent, rows, mode = run(go())
    assert got["ok"] and sent["ok"]
    assert [(r.text, r.is_bot) for r in rows] == [("hello from the terminal", False), ("**hi**", True)]
    assert mode == "0o700"


def test_session_file_is_private(harness):
    async def go():
        h = await harness().start()
        await wait_until(lambda: h.wa.conn.session.exists())
        await h.fire(ConnectedEv(status=True))
        mode = h.wa.conn.session.stat().st_mode & 0o777
        await h.close()
        return mode
    assert run(go()) == 0o600


def test_a_state_change_is_published_at_once(harness):
    """systemd's STATUS= follows a logout when it happens, not at the next work pass."""
    async def go():
        h = await harness().start()
        published = []
        h.daemon.notify = published.append
        await h.fire(LoggedOutEv(OnConnect=True, Reason=1))
        await asyncio.sleep(0)
        await h.close()
        return published
    published = run(go())
    assert any(p.startswith("STATUS=") and "logged out" in p for p in published), published


REAL_LIFECYCLE = r"""
import asyncio, ctypes, json, sys, time
from pathlib import Path
sys.path[:0] = [sys.argv[2], sys.argv[3]]
import whatsapp_harness as t
from whatsapp_offline import SilentProxy, link_session, map_lid
from neonize.aioze.events import ConnectedEv, MessageEv
from neonize.events import EVENT_TO_INT
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import ImageMessage
from nanoclaw.core import config as config_mod, groups as groups_mod
from nanoclaw.core.models import Message, open_db
from nanoclaw.daemons.channel import ChannelDaemon
from nanoclaw.daemons.channel.deliver import deliver

tmp = Path(sys.argv[1])
proxy = SilentProxy()
cfg = config_mod.Config(state_dir=tmp / "state", runtime_dir=tmp / "run", config_dir=tmp / "etc",
                        channels=("whatsapp", "terminal"),
                        whatsapp=config_mod.WhatsAppConfig(proxy=proxy.url, reconnect_min=0.05, reconnect_max=0.1))
cfg.runtime_dir.mkdir(parents=True)
open_db(cfg.db_path)
groups_mod.add_group(cfg, "main", jid=f"{t.OWNER}@s.whatsapp.net", is_main=True)
groups_mod.add_group(cfg, "alice", jid=f"{t.ALICE}@s.whatsapp.net")
session = cfg.state_dir / "whatsapp" / "session.db"
link_session(session, t.OWNER)
map_lid(session, t.ALICE_LID, t.ALICE)
out = {}


def dispatch(client, ev):  # what neonize's Go callback does, on its own thread
    data = ev.SerializeToString()
    buf = ctypes.create_string_buffer(data, len(data))
    client.event.execute(0, ctypes.addressof(buf), len(data), EVENT_TO_INT[type(ev)])


async def until(pred, timeout=20):
    end = time.monotonic() + timeout
    while not pred():
        assert time.monotonic() < end, "condition not reached"
        await asyncio.sleep(0.01)


def rows():
    return [(m.chat, m.sender, m.channel_id) for m in Message.select().order_by(Message.id)]


async def main():
    d = ChannelDaemon(cfg)
    await d.setup()
    wa = d.whatsapp()
    await until(lambda: proxy.accepted)  # the real client dials through the proxy, which says nothing
    out["dialing"] = [wa.conn.state, d.stuck()]
    await asyncio.to_thread(dispatch, wa.conn.client, ConnectedEv(status=True))
    await until(lambda: wa.conn.me)
    out["me"] = wa.conn.me  # GetMe on the real client, which loaded the linked store
    lid_dm = t.message_ev(t.jid(t.ALICE_LID, "lid"), t.jid(t.ALICE_LID, "lid"), "R1", "only my lid")
    await asyncio.to_thread(dispatch, wa.conn.client, lid_dm)
    await until(lambda: rows())
    out["mapped"] = rows()  # GetPNFromLID on the real client, from whatsmeow's own store
    # stop while the real client is still dialing: it ends once the dial does (here: the proxy
    # hangs up); then stop again, twice, on the backend and on the client itself
    stopping = asyncio.ensure_future(wa.stop())
    await until(lambda: wa.conn._stopped_by_us)
    proxy.close()
    await asyncio.wait_for(stopping, 30)
    out["after_stop"] = [wa.connected, wa.lingering, wa.conn._task.done()]
    await wa.stop()
    await wa.conn.client.stop()
    await wa.conn.client.stop()
    # events and calls after the stop: GetMe and GetPNFromLID would kill the process now
    await asyncio.to_thread(dispatch, wa.conn.client, ConnectedEv(status=True))
    await asyncio.to_thread(dispatch, wa.conn.client, t.message_ev(t.jid("77000000000055", "lid"),
                                                              t.jid("77000000000055", "lid"), "R2", "late"))
    await asyncio.to_thread(dispatch, wa.conn.client, t.message_ev(
        t.jid("77000000000055", "lid"), t.jid("77000000000055", "lid"), "R3", "late, with my number",
        sender_alt=t.jid(t.ALICE)))
    await until(lambda: len(rows()) == 2)  # R3 stored after R2 (same chat, in order): R2 was handled
    out["late"] = [rows()[-1], wa.connected]
    out["deliver"] = await deliver(d, {"chat": f"{t.ALICE}@s.whatsapp.net", "text": "hi", "outbox_id": 1})
    await wa.typing(f"{t.ALICE}@s.whatsapp.net", True)
    out["discover"] = await wa.discover()
    out["pair"] = await wa.pair(None, None)
    out["client_calls"] = {}
    from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WAMessage
    for name, call in (("send", lambda: wa.conn.client.send_message(t.jid(t.ALICE), WAMessage(conversation="x"))),
                       ("groups", wa.conn.client.get_joined_groups),
                       ("download", lambda: wa.conn.client.download_any(WAMessage(imageMessage=ImageMessage(
                           URL="https://mmg.whatsapp.net/x", directPath="/v/x", mediaKey=b"k" * 32)))),
                       ("pairphone", lambda: wa.conn.client.PairPhone("491700000001", True))):
        try:
            await call()
            out["client_calls"][name] = "returned"
        except Exception as exc:
            out["client_calls"][name] = str(exc)[:40]
    print(json.dumps(out), flush=True)

asyncio.run(main())
"""


def test_the_real_client_connects_stops_and_is_called_after_stop_without_harm(tmp_path):
    """neonize's real client on a linked store, dialing a server that never answers: connected
    (through neonize's own dispatch), a bare-LID DM mapped by the real store, a stop while
    dialing, stops twice, then late events and every call the channel makes. GetMe and
    GetPNFromLID kill the process once the client is stopped; the channel never makes them then."""
    proc = subprocess.run([sys.executable, "-c", REAL_LIFECYCLE, str(tmp_path), str(ROOT), str(TESTS)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    alice = f"{ALICE}@s.whatsapp.net"
    assert out["dialing"] == ["connecting", ""]
    assert out["me"] == f"{OWNER}@s.whatsapp.net"
    assert out["mapped"] == [[alice, alice, "R1"]]
    assert out["after_stop"] == [False, False, True]
    assert out["late"] == [[alice, alice, "R3"], False]
    assert not out["deliver"]["ok"] and "not connected" in out["deliver"]["error"]
    assert not out["discover"]["ok"]
    assert out["pair"]["ok"] and out["pair"]["already"]
    assert out["client_calls"] == {"send": "client is nil", "groups": "client is nil", "download": "client is nil",
                                   "pairphone": out["client_calls"]["pairphone"]}
    assert "client is nil" in out["client_calls"]["pairphone"]
