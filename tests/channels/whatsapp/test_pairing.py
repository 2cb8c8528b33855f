"""`nanoclaw pair` (pairing.py, pairproc.py): the pairing process, relayed, abandoned, hung, replaced;
scripted in its own process, and neonize's real client offline."""

from __future__ import annotations

import asyncio
import msgspec
import os
import signal
import sys
import time

import pytest
from neonize.aioze.events import ConnectedEv, LoggedOutEv

from nanoclaw.channels.whatsapp import WhatsAppBackend
from nanoclaw.channels.whatsapp import pairchild
from nanoclaw.channels.whatsapp.pairing import PAIR_COMMAND
from nanoclaw.core import config as config_mod

from whatsapp_harness import (
    FAMILY,
    OWNER,
    ROOT,
    FakeWriter,
    alive,
    group_info,
    pair_script,
    run,
    wait_until,
)
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture
from whatsapp_offline import SilentProxy, closed_port, unlink_session


def test_pairing_runs_in_its_own_process_then_the_channel_connects(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@first,code"}, {"qr": "2@second,code"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        await wait_until(h.wa.conn.parked.is_set)
        connects_during_pairing: list[int] = []

        class Watching(FakeWriter):
            def write(self, data: bytes) -> None:  # each code shown: is the channel's client off?
                super().write(data)
                connects_during_pairing.append(h.client.calls.count(("connect",)))
        writer = Watching()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, writer), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)  # the channel connects after the child
        await h.fire(ConnectedEv(status=True))
        status = h.wa.status()
        again = await h.daemon.handle({"op": "pair"}, FakeWriter())
        await h.close()
        return writer.lines, reply, connects_during_pairing, status, again
    lines, reply, connects_during_pairing, status, again = run(go())
    assert lines == [{"op": "pair", "event": "qr", "data": "2@first,code"},
                     {"op": "pair", "event": "qr", "data": "2@second,code"}]
    assert reply == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}
    assert connects_during_pairing == [0, 0]  # the channel's own client stayed off while pairing ran
    assert status == f"connected as {OWNER}@s.whatsapp.net"
    assert again["ok"] and again["already"] and again["paired"] == f"{OWNER}@s.whatsapp.net"


def test_pairing_with_a_phone_number_streams_the_code_and_reports_failure(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@qr"}, {"pair": False, "error": "the phone said no"})

    async def go():
        h = await harness(paired=False).start(connected=False)
        writer = FakeWriter()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair", "phone": "+49 170 0000001"}, writer), 30)
        bad = await h.daemon.handle({"op": "pair", "phone": "call me maybe"}, FakeWriter())
        status = h.wa.status()
        await h.close()
        return writer.lines, reply, bad, status
    lines, reply, bad, status = run(go())
    assert lines == [{"op": "pair", "event": "code", "code": "ABCD-0001"}]  # PairPhone got the digits
    assert reply == {"ok": False, "error": "pairing failed: the phone said no"}
    assert not bad["ok"] and "phone number" in bad["error"]
    assert status == "not paired — run `nanoclaw pair`"


def test_when_the_codes_run_out_pairing_says_so_and_the_channel_stays_free(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@x"}, {"status": "timeout"})

    async def go():
        h = await harness(paired=False).start(connected=False)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await wait_until(h.wa.conn.parked.is_set)
        status, stuck = h.wa.status(), h.daemon.stuck()
        await h.close()
        return reply, status, stuck, h.client.calls
    reply, status, stuck, calls = run(go())
    assert not reply["ok"] and "the QR codes ran out" in reply["error"]
    assert "Run `nanoclaw pair` again" in reply["error"]
    assert status == "not paired — run `nanoclaw pair`" and stuck == "" and ("connect",) not in calls


def test_the_pairing_timeout_is_inside_whatsmeows_qr_window():
    assert config_mod.WhatsAppConfig().pair_timeout < config_mod.QR_WINDOW <= 160
    with pytest.raises(config_mod.ConfigError, match="QR codes run out"):
        config_mod.WhatsAppConfig(pair_timeout=180.0)


def test_a_pairing_process_that_hangs_is_killed_and_pairing_can_start_again(harness, monkeypatch):
    """The hang neonize can produce is the process's, never the channel's: past its timeout
    the child is killed, the answer is plain, and the next `nanoclaw pair` works."""
    monkeypatch.setattr(pairchild, "GRACE", 0.5)
    pair_script(monkeypatch, {"qr": "2@x"}, {"block": True})

    async def go():
        h = await harness(paired=False, pair_timeout=0.5).start(connected=False)
        task = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, FakeWriter()))
        await wait_until(lambda: h.wa.conn.pairing is not None and h.wa.conn.pairing.proc is not None, 10)
        pid = h.wa.conn.pairing.proc.pid
        started = time.monotonic()
        reply = await asyncio.wait_for(task, 30)
        took = time.monotonic() - started
        gone = not alive(pid)
        pair_script(monkeypatch, {"qr": "2@y"}, {"pair": True})
        # The second child must only start and link: give it time on a loaded machine.
        h.wa.conn.wcfg = msgspec.structs.replace(h.wa.conn.wcfg, pair_timeout=30.0)
        again = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await h.close()
        return reply, took, gone, again
    reply, took, gone, again = run(go())
    assert not reply["ok"] and "hung and was stopped" in reply["error"]
    assert took < 10 and gone
    assert again == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_pairing_can_be_abandoned_and_run_again_without_a_restart(harness, monkeypatch, tmp_path):
    gate = tmp_path / "phone-scanned"
    pair_script(monkeypatch, {"qr": "2@first"}, {"wait": str(gate)}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        # the terminal went away (Ctrl-C): the first code cannot be shown
        abandoned = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter(gone=True)), 30)
        status_after = h.wa.status()
        # a second `nanoclaw pair` while a first one still waits takes over from it
        w1, w2 = FakeWriter(), FakeWriter()
        first = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, w1))
        await wait_until(lambda: w1.lines, 10)
        first_pid = h.wa.conn.pairing.proc.pid
        second = asyncio.ensure_future(h.daemon.handle({"op": "pair"}, w2))
        superseded = await asyncio.wait_for(first, 10)
        await wait_until(lambda: w2.lines, 10)
        gate.touch()
        paired = await asyncio.wait_for(second, 30)
        await h.close()
        return abandoned, status_after, superseded, alive(first_pid), paired
    abandoned, status_after, superseded, first_alive, paired = run(go())
    assert abandoned == {"ok": False, "error": "abandoned"}
    assert status_after == "not paired — run `nanoclaw pair`"
    assert superseded == {"ok": False, "error": "another `nanoclaw pair` took over"} and not first_alive
    assert paired == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_a_pairing_process_that_dies_without_an_answer_is_reported(harness, monkeypatch):
    monkeypatch.setattr(WhatsAppBackend, "pair_command", (sys.executable, "-c", "import sys; sys.exit(3)"))

    async def go():
        h = await harness(paired=False).start(connected=False)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        status = h.wa.status()
        await h.close()
        return reply, status
    reply, status = run(go())
    assert reply == {"ok": False, "error": "the pairing process ended without an answer (exit status 3)"}
    assert status == "not paired — run `nanoclaw pair`"


def test_pair_on_a_linked_session_that_is_still_connecting_leaves_it_alone(harness):
    """The defect: `nanoclaw pair` before the first ConnectedEv waited for a pairing that could
    never come, then stopped the healthy client as 'unpaired'."""
    async def go():
        h = await harness(pair_timeout=0.3).start(connected=False)
        await wait_until(lambda: ("connect",) in h.client.calls)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 5)
        await h.fire(ConnectedEv(status=True))
        status = h.wa.status()
        await h.close()
        return reply, status, h.client.calls
    reply, status, calls = run(go())
    assert reply == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net", "already": True, "status": "connecting"}
    assert calls.count(("stop",)) == 1  # only the shutdown's
    assert calls.count(("connect",)) == 1
    assert status == f"connected as {OWNER}@s.whatsapp.net"


def test_after_a_logout_pair_links_again_and_the_channel_reconnects(harness, monkeypatch):
    pair_script(monkeypatch, {"qr": "2@again"}, {"pair": True})

    async def go():
        h = await harness().start()
        unlink_session(h.session)  # what whatsmeow does on a logout, before saying so
        await h.fire(LoggedOutEv(OnConnect=False, Reason=1))
        await wait_until(h.wa.conn.parked.is_set)
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 30)
        await wait_until(lambda: h.client.calls.count(("connect",)) == 2)
        await h.close()
        return reply
    assert run(go()) == {"ok": True, "paired": f"{OWNER}@s.whatsapp.net"}


def test_cli_pair_and_discover_through_the_channel_socket(harness, monkeypatch, capsys):
    import argparse

    from nanoclaw.admin.commands import whatsapp
    pair_script(monkeypatch, {"qr": "2@Zm9vYmFy,qr,code"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        server = await asyncio.start_unix_server(h.daemon._serve_client, path=str(h.cfg.socket("channel")))
        paired_rc = await asyncio.wait_for(asyncio.to_thread(whatsapp.cmd_pair, h.cfg, argparse.Namespace(phone=None)), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)
        await h.fire(ConnectedEv(status=True))
        h.client.groups = [group_info(FAMILY, "Family", 4), group_info("120363000000000002", "Book club", 9)]
        discover_rc = await asyncio.to_thread(whatsapp.cmd_discover, h.cfg)
        server.close()
        await h.close()
        return paired_rc, discover_rc
    paired_rc, discover_rc = run(go())
    out = capsys.readouterr().out
    assert paired_rc == 0 and discover_rc == 0
    assert "Scan with WhatsApp" in out and any(block in out for block in "\u2580\u2584\u2588")  # a drawn QR
    assert f"paired as {OWNER}@s.whatsapp.net" in out
    assert "Book club" in out and "120363000000000002@g.us" in out and "family" in out
    assert "nanoclaw groups add FOLDER --jid JID" in out
    assert f"nanoclaw groups add main --main --jid {OWNER}@s.whatsapp.net" in out


CLI_ENV = ("NANOCLAW_CONFIG", "NANOCLAW_STATE_DIR", "NANOCLAW_RUNTIME_DIR", "NANOCLAW_CONFIG_DIR")


def test_nanoclaw_pair_interrupted_then_run_again(harness, monkeypatch, tmp_path):
    """The real CLI, interrupted with Ctrl-C while it shows a code, then run again at once."""
    gate = tmp_path / "next-code"
    pair_script(monkeypatch, {"qr": "2@first"}, {"wait": str(gate)}, {"qr": "2@second"}, {"pair": True})

    async def go():
        h = await harness(paired=False).start(connected=False)
        (h.cfg.config_dir).mkdir(parents=True, exist_ok=True)
        (h.cfg.config_dir / "config.toml").write_text('channels = ["whatsapp", "terminal"]\n')
        env = {**os.environ, "PYTHONPATH": str(ROOT), "NANOCLAW_CONFIG": str(h.cfg.config_dir / "config.toml"),
               "NANOCLAW_STATE_DIR": str(h.cfg.state_dir), "NANOCLAW_RUNTIME_DIR": str(h.cfg.runtime_dir),
               "NANOCLAW_CONFIG_DIR": str(h.cfg.config_dir)}
        server = await asyncio.start_unix_server(h.daemon._serve_client, path=str(h.cfg.socket("channel")))

        async def cli_pair():
            # Ctrl-C as at a terminal: a suite started in the background (a shell without job
            # control ignores SIGINT there, and children inherit that) must not change it.
            return await asyncio.create_subprocess_exec(sys.executable, "-m", "nanoclaw", "pair", env=env,
                                                        stdout=asyncio.subprocess.PIPE,
                                                        stderr=asyncio.subprocess.PIPE,
                                                        preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                                         signal.SIG_DFL))
        first = await cli_pair()
        shown = await asyncio.wait_for(first.stdout.readuntil(b"waiting for the phone"), 30)
        child = h.wa.conn.pairing.proc.pid
        first.send_signal(signal.SIGINT)
        first_rc = await asyncio.wait_for(first.wait(), 10)
        gate.touch()  # the next code comes: the daemon finds the terminal gone
        await wait_until(lambda: h.wa.conn.pairing is None and not alive(child), 10)
        status_between = h.wa.status()
        gate.unlink()
        second = await cli_pair()
        await asyncio.wait_for(second.stdout.readuntil(b"waiting for the phone"), 30)
        gate.touch()
        out, err = await asyncio.wait_for(second.communicate(), 30)
        await wait_until(lambda: ("connect",) in h.client.calls)
        server.close()
        await h.close()
        return shown, first_rc, status_between, second.returncode, out.decode(), err.decode()
    shown, first_rc, status_between, rc, out, err = run(go())
    assert b"Scan with WhatsApp" in shown and first_rc == 130
    assert status_between == "not paired — run `nanoclaw pair`"
    assert rc == 0, err
    assert f"paired as {OWNER}@s.whatsapp.net" in out


def test_the_real_pairing_process_says_when_whatsapp_cannot_be_reached(harness, monkeypatch):
    monkeypatch.setattr(WhatsAppBackend, "pair_command", PAIR_COMMAND)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))

    async def go():
        h = await harness(paired=False, proxy=closed_port()).start(connected=False)
        refused = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 60)
        status = h.wa.status()
        await h.close()
        return refused, status
    refused, status = run(go())
    assert not refused["ok"] and refused["error"].startswith("cannot reach WhatsApp: ")
    assert status == "not paired — run `nanoclaw pair`"


def test_the_real_pairing_process_ends_on_time_when_whatsapp_never_answers(harness, monkeypatch):
    """The real client in pairproc, dialing a server that never answers: its dial would last a
    minute and a stop would wait for it; the pairing still ends at its own timeout."""
    monkeypatch.setattr(WhatsAppBackend, "pair_command", PAIR_COMMAND)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    proxy = SilentProxy()

    async def go():
        h = await harness(paired=False, proxy=proxy.url, pair_timeout=2.0).start(connected=False)
        started = time.monotonic()
        reply = await asyncio.wait_for(h.daemon.handle({"op": "pair"}, FakeWriter()), 60)
        took = time.monotonic() - started
        await h.close()
        return reply, took
    try:
        reply, took = run(go())
    finally:
        proxy.close()
    assert proxy.accepted
    assert reply == {"ok": False, "error": "WhatsApp sent no pairing code within 2s: is it reachable from here "
                                           "(network, [whatsapp] proxy)?"}
    assert took < 10
