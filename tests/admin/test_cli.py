"""The nanoclaw command as an owner uses it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time

import pytest
from podman_harness import _podman
from system_harness import DAEMONS


def test_groups_add_list_remove(offline_system):
    s = offline_system
    out = s.cli("groups", "add", "main", "--main").stdout
    assert "added group main" in out and "main" in out
    assert (s.state / "groups" / "main" / "CLAUDE.md").read_text().startswith("# Andy")
    assert (s.state / "groups" / "global" / "CLAUDE.md").exists()
    s.cli("groups", "add", "family", "--name", "Family Chat", "--trigger", "@Bot")
    listing = s.cli("groups", "list").stdout
    assert "family" in listing and "trigger=@Bot" in listing and "every message" in listing
    bad = s.cli("groups", "add", "../escape", check=False)
    assert bad.returncode == 2 and "invalid folder name" in bad.stderr
    assert s.cli("groups", "add", "global", check=False).returncode == 2
    dup = s.cli("groups", "add", "family", check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr
    second_main = s.cli("groups", "add", "other", "--main", check=False)
    assert second_main.returncode == 2 and "already a main group" in second_main.stderr
    s.cli("groups", "remove", "family")
    assert "family" not in s.cli("groups", "list").stdout
    assert (s.state / "groups" / "family" / "CLAUDE.md").exists()  # memory kept
    missing = s.cli("groups", "remove", "nope", check=False)
    assert missing.returncode == 2 and "no group" in missing.stderr


def test_send_refuses_bad_input_clearly(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    down = s.cli("send", "main", "hi", check=False)
    assert down.returncode != 0 and "cannot reach the channel daemon" in down.stderr
    s.start("channel")
    assert s.cli("send", "main", " ", check=False).returncode == 2
    unknown = s.cli("send", "nosuchgroup", "hi", check=False)
    assert unknown.returncode == 1 and "no group 'nosuchgroup'" in unknown.stderr
    ok = s.cli("send", "main", "hello", "--id", "m1")
    again = s.cli("send", "main", "hello", "--id", "m1")
    assert "stored as message 1" in ok.stdout and "(duplicate)" in again.stdout


def test_bad_config_is_reported(offline_system):
    s = offline_system
    s.config_path.write_text("max_concurrent = 0\n")
    r = s.cli("groups", "list", check=False)
    assert r.returncode != 0 and "configuration error" in r.stderr


@pytest.mark.podman
def test_run_all_and_send_wait(make_system, agent_image):
    s = make_system(container={"image": agent_image})  # run-all serves the Podman API itself
    s.cli("groups", "add", "main", "--main")
    proc = subprocess.Popen([sys.executable, "-m", "nanoclaw", "run-all"], env=s.env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 30
        while time.time() < deadline and not all((s.run / f"{d}.sock").exists()
                                                  for d in DAEMONS):
            time.sleep(0.1)
        r = s.cli("send", "main", "via", "run-all", "--wait", "60")
        assert r.stdout.strip() == "[Andy] echo: via run-all"
        ping = s.cli("ping")
        assert ping.stdout.count(" up ") == len(DAEMONS)
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
    assert proc.returncode == 0
    for d in DAEMONS:
        assert re.search(rf"^{d} +\| ", out, re.M), d
    assert "ready" in out


@pytest.mark.podman
def test_interactive_chat_shows_history_and_live_replies(system):
    system.send("main", "before")
    system.wait_replies("main@term", 1)
    proc = subprocess.Popen([sys.executable, "-m", "nanoclaw", "chat", "main"], env=system.env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "chatting in main" in proc.stdout.readline()
        assert proc.stdout.readline().strip() == "[owner] before"
        assert proc.stdout.readline().strip() == "[Andy] echo: before"
        proc.stdin.write("typed live\n")
        proc.stdin.flush()
        assert proc.stdout.readline().strip() == "[Andy] echo: typed live"
    finally:
        proc.stdin.close()
        proc.wait(10)
    assert proc.returncode == 0


def test_doctor_names_a_broken_allowlist(offline_system):
    """The defect: an allowlist with a syntax error blocks everyone, and doctor never said so."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    allow = s.confdir / "allowlists"
    allow.mkdir()
    (allow / "main.json").write_text('{"senders": ["a@x",]}')
    (allow / "fine.json").write_text('{"senders": ["a@x"]}')
    out = s.cli("doctor", check=False).stdout
    assert "FAIL  allowlist main.json: invalid: " in out and "nobody can trigger group main" in out
    assert 'fix: fix the file ({"senders": ["jid", ...]}) or remove it to allow everyone' in out
    assert "ok    allowlist fine.json" in out


def test_a_terminal_that_left_is_no_longer_counted(offline_system):
    """The defect: after `nanoclaw send --wait` exited, status and ping still counted its terminal."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.start("channel")
    waited = s.cli("send", "main", "--wait", "0.5", "anyone there?", check=False)
    assert waited.returncode == 3 and "no reply within" in waited.stderr  # nothing answers: no queue runs
    status = s.request("channel", {"op": "status"})["status"]
    assert "terminal: 0 terminal(s) attached" in status, status
    assert "0 terminal(s) attached" in s.cli("ping", check=False).stdout


def test_spool_admin_lists_shows_retries_and_drops(offline_system):
    """As postqueue -p / postcat / postsuper: every spool at a glance, refused files with their reasons."""
    import json as json_mod

    from nanoclaw.core.protocol import Spool
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.start("router", "channel")
    router = Spool(s.state / "spool" / "router").ensure()
    (router.new / "00000000000000000001.1.1.outbound").write_text(
        json_mod.dumps({"v": 1, "type": "outbound", "body": {"key": "k1", "chat": "main@term"}}))
    s.nudge("router")
    s.wait_for(lambda: list(router.bad.glob("*.reason")), 20, what="the bad file refused")
    listing = s.cli("spool").stdout
    assert "router" in listing and "refused    1" in listing
    assert "bad/00000000000000000001.1.1.outbound: outbound: missing field 'text'" in listing
    shown = s.cli("spool", "show", "00000000000000000001").stdout
    assert shown.startswith("router/bad/00000000000000000001.1.1.outbound\nrefused: outbound: missing field 'text'")
    # still invalid: refused with the daemon's own reason; nothing moves
    again = s.cli("spool", "retry", "00000000000000000001", check=False)
    assert again.returncode == 2 and "still fails the daemon's checks: outbound: missing field 'text'" in again.stderr
    # mended, it goes back, the router takes it and sends it
    bad = router.bad / "00000000000000000001.1.1.outbound"
    bad.write_text(json_mod.dumps({"v": 1, "type": "outbound", "body": {
        "key": "k1", "chat": "main@term", "text": "mended", "kind": "notice"}}))
    assert "back in router/new/" in s.cli("spool", "retry", "0000000000000000000").stdout
    s.wait_for(lambda: s.replies("main@term") == ["mended"], 20, what="the retried message sent")
    assert "refused    0" in s.cli("spool").stdout
    # drop, and clear refusals for bad names
    (router.bad / "00000000000000000002.1.1.outbound").write_text("junk")
    assert "dropped router/bad/00000000000000000002.1.1.outbound" in s.cli("spool", "drop", "00000000000000000002").stdout
    assert "no spool file" in s.cli("spool", "show", "nothing-like-it", check=False).stderr
