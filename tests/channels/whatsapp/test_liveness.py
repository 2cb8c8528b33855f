"""The WhatsApp client's steps that must end in time (liveness.py): a connect or stop that never
ends is reported stuck, and what systemd then sees: the watchdog no longer fed, or an exit to be
restarted. On the recording client, and the real channel daemon with neonize's real client."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from neonize.aioze.events import ConnectedEv, StreamReplacedEv

from whatsapp_harness import OWNER, connects, run, wait_until
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture
from whatsapp_offline import SilentProxy, link_session


def test_a_connect_that_never_concludes_is_reported_stuck(harness):
    """A dial through a silent network, a connect no event ever concludes: past client_timeout
    the channel says it is stuck (and so stops feeding systemd's watchdog)."""
    async def go():
        h = await harness(client_timeout=0.2).start(connected=False)
        await wait_until(lambda: connects(h) == 1)
        early = h.daemon.stuck()
        await wait_until(lambda: h.daemon.stuck())
        stuck, status = h.daemon.stuck(), h.daemon.status()
        await h.fire(ConnectedEv(status=True))
        after = h.daemon.stuck()
        await h.close()
        return early, stuck, status, after
    early, stuck, status, after = run(go())
    assert early == "" and after == ""
    assert stuck.startswith("the WhatsApp client is stuck: connecting for ")
    assert "STUCK: the WhatsApp client is stuck" in status


def test_a_stop_that_never_ends_is_reported_stuck_and_shutdown_does_not_wait_for_it(harness):
    async def go():
        h = await harness(client_timeout=0.2).start()
        h.client.stop_ends_task = False
        await h.fire(StreamReplacedEv())
        await wait_until(lambda: h.daemon.stuck())
        stuck = h.daemon.stuck()
        started = time.monotonic()
        await h.close()
        return stuck, time.monotonic() - started, h.wa.lingering
    stuck, took, lingering = run(go())
    assert stuck.startswith("the WhatsApp client is stuck: stopping for ")
    assert took < 15 and lingering


class NotifyListener:
    """systemd's end of NOTIFY_SOCKET: what the daemon tells it, with when."""

    def __init__(self, path: Path) -> None:
        import socket as socket_mod
        self.sock = socket_mod.socket(socket_mod.AF_UNIX, socket_mod.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []

    def read(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            try:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
            except TimeoutError:
                pass

    def drain(self) -> None:
        """Read what is already queued (stamped with the time it is read, not sent)."""
        self.sock.setblocking(False)
        try:
            while True:
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))
        except BlockingIOError:
            pass
        finally:
            self.sock.settimeout(0.2)

    def pings_after(self, t: float) -> int:
        return sum(1 for at, line in self.got if at > t and line == "WATCHDOG=1")


def hung_channel(make_system, tmp_path, proxy: SilentProxy, **env: str):
    """The real channel daemon, its real client dialing a server that never answers."""
    s = make_system(channels=["whatsapp", "terminal"], whatsapp={"proxy": proxy.url, "client_timeout": 1.0})
    link_session(s.state / "whatsapp" / "session.db", OWNER)
    s.env.update(env)
    return s


def test_a_channel_whose_client_hangs_stops_feeding_the_watchdog(make_system, tmp_path):
    """What systemd sees: READY, WATCHDOG=1 while the connect is young, none once it is
    overdue (systemd would now replace the process: tests/system). SIGTERM then still ends
    the process promptly, though the real client's dial lasts a minute."""
    proxy = SilentProxy()
    listener = NotifyListener(tmp_path / "notify")
    s = hung_channel(make_system, tmp_path, proxy, NOTIFY_SOCKET=str(tmp_path / "notify"), WATCHDOG_USEC="400000")
    try:
        s.start("channel")
        listener.read(0.6)
        fed_while_young = listener.pings_after(0)
        s.wait_for(lambda: "STUCK" in s.request("channel", {"op": "status"})["status"], 10, what="stuck")
        listener.drain()  # pings sent before it was stuck
        stuck_at = time.monotonic()
        listener.read(2.0)
        fed_while_stuck = listener.pings_after(stuck_at)
        proc = s.procs["channel"]
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(30)
        took = time.monotonic() - started
    finally:
        proxy.close()
    assert proxy.accepted  # the real client was dialing
    assert fed_while_young >= 1 and fed_while_stuck == 0
    assert any(line.startswith("STATUS=") and "STUCK: the WhatsApp client is stuck: connecting" in line
               for _, line in listener.got)
    assert rc == 0 and took < 20
    assert "watchdog no longer fed: the WhatsApp client is stuck" in s.log("channel")


def test_without_a_watchdog_a_channel_whose_client_hangs_exits_to_be_restarted(make_system, tmp_path):
    proxy = SilentProxy()
    s = hung_channel(make_system, tmp_path, proxy)
    try:
        s.start("channel")
        rc = s.procs["channel"].wait(30)
    finally:
        proxy.close()
    assert rc == 70
    assert "exiting to be restarted: the WhatsApp client is stuck: connecting" in s.log("channel")
