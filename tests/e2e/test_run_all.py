"""`nanoclaw run-all` as a newcomer meets it: in a terminal (tmux) with `nanoclaw chat` beside it,
on a machine without cron, the agent image not built and no credential set."""

from __future__ import annotations

import grp
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from podman_harness import _podman
from system_harness import DAEMONS
from tmux_harness import Tmux

pytestmark = pytest.mark.podman
CRONTAB = "/usr/bin/crontab"


def need_real_cron() -> None:
    """The real crontab program and cron daemon (Debian's cron; .ci/run installs it) and tmux."""
    missing = [p for p in (CRONTAB, "/usr/sbin/cron", shutil.which("tmux")) if not p or not os.path.exists(p)]
    if missing or os.geteuid() != 0:
        why = f"needs root, tmux and Debian's cron (missing: {missing})"
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why)


def path_without_cron(farm: Path) -> str:
    """A PATH of its own: every program of this one, by link, but crontab and cron."""
    farm.mkdir()
    for directory in os.environ["PATH"].split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in sorted(os.listdir(directory)):
            path = os.path.join(directory, name)
            if name in ("crontab", "cron") or (farm / name).exists() or os.path.isdir(path) \
                    or not os.access(path, os.X_OK):
                continue
            (farm / name).symlink_to(path)
    return str(farm)


def private_cron(base: Path) -> list[str]:
    """A wrapper: the command runs in a mount namespace of its own where cron's spool, the
    system crontab, /etc/cron.d and cron's lock file are the test's; the real crontab program
    and cron daemon work there, and the machine's crontabs are never touched."""
    base.mkdir()
    spool = base / "crontabs"
    spool.mkdir()
    os.chown(spool, 0, grp.getgrnam("crontab").gr_gid)
    spool.chmod(0o1730)
    (base / "cron.d").mkdir()
    (base / "crontab.system").write_text("")
    (base / "crond.pid").write_text("")
    Path("/run/crond.pid").touch()  # the mount point (cron's own lock file, empty while no cron runs)
    script = ('mount --bind "$1" /var/spool/cron/crontabs && mount --bind "$2" /etc/cron.d && '
              'mount --bind "$3" /etc/crontab && mount --bind "$4" /run/crond.pid && shift 4 && exec "$@"')
    return ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c", script, "sh", str(spool),
            str(base / "cron.d"), str(base / "crontab.system"), str(base / "crond.pid")]


def ours_running() -> list[str]:
    return _podman("ps", "--format", "{{.Names}}", "--filter", "label=nanoclaw.job").stdout.split()


def lines_of(text: str, daemon: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(rf"{daemon} +\| ", line)]


def test_run_all_and_chat_in_a_terminal_without_cron(make_system, agent_image, tmp_path):
    """The defects: without cron a traceback every second for ever, and doctor silent on it; doctor's
    fixes said systemctl where there are no units; Ctrl-C left the agents' containers running for
    their idle timeout; a missing image (or credential) surfaced only when a first message failed."""
    need_real_cron()
    missing = f"localhost/nanoclaw-agent:not-built-{os.urandom(3).hex()}"
    # the agents' default idle timeout: a lead that answered stays up, as on a laptop
    s = make_system(container={"image": missing, "idle_timeout": 600.0}, crontab_file="", max_attempts=1)
    s.env["PATH"] = path_without_cron(tmp_path / "bin")
    s.cli("groups", "add", "main", "--main")
    s.cli("agents", "add", "main", "helper", "--description", "helps", "--instructions", "Help.")

    doctor = s.cli("doctor", check=False).stdout
    assert "FAIL  cron for scheduled tasks: no crontab program on PATH" in doctor, doctor
    assert "fix: apt install cron" in doctor
    assert "FAIL  daemons answer: none does: nanoclaw run-all is not running" in doctor, doctor
    assert "fix: start nanoclaw run-all" in doctor and "systemctl" not in doctor
    assert f"FAIL  agent image {missing}" in doctor
    try:
        import pwd
        pwd.getpwnam("nanoclaw")
    except KeyError:  # a laptop run as root: no service user, no subordinate ids, and doctor says why
        assert "--    service user nanoclaw: not needed here: nanoclaw run-all as root" in doctor, doctor
        assert "FAIL  service user" not in doctor and "FAIL  /etc/subuid" not in doctor

    tmux = Tmux(tmp_path, s.env)
    cron = None
    try:
        tmux.open("run1", [*private_cron(tmp_path / "cron1"), sys.executable, "-m", "nanoclaw", "run-all"])
        s.wait_for(lambda: s.cli("ping", check=False).stdout.count(" up ") == len(DAEMONS), 60,
                   what="every daemon answering")
        text = tmux.text("run1")
        first_daemon_line = min(text.index(x) for x in lines_of(text, "queue"))
        for problem in (f"FAIL  agent image {missing}", "FAIL  Anthropic credential",
                        "FAIL  cron for scheduled tasks", "FAIL  voice engine: transcription image"):
            assert problem in text[:first_daemon_line], text[-4000:]  # said before anything started
        assert "run-all: 4 problem(s) above (as nanoclaw doctor says them); starting anyway" in text

        # A task added while there is no cron is kept; the scheduler says so once, however many passes
        s.wait_for(lambda: "NO CRONTAB PROGRAM: 0 active" in s.request("scheduler", {"op": "status"})["status"],
                   30, what="the scheduler's status naming cron")
        s.cli("tasks", "add", "main", "--cron", "* * * * *", "--tz", "UTC", "--over-limits", "from cron")
        s.wait_for(lambda: "NO CRONTAB PROGRAM: 1 active" in s.request("scheduler", {"op": "status"})["status"],
                   30, what="a pass after the task was added")
        assert "timers:   NO CRONTAB PROGRAM: 1 active task(s) wait" in s.cli("status", check=False).stdout
        text = tmux.text("run1")
        said = [line for line in lines_of(text, "scheduler") if "no crontab program" in line]
        assert len(said) == 1 and "apt install cron" in said[0], said
        assert "Traceback" not in text, text[-8000:]

        # a message sent anyway is told why it cannot be answered, and what to do
        tmux.open("chat", [sys.executable, "-m", "nanoclaw", "chat", "main"])
        tmux.wait("chat", "chatting in main")
        tmux.type("chat", "too early")
        tmux.wait("chat", f"my container could not start: {missing}: image not known (build it: nanoclaw "
                          "image build)", 60)
        # the image is built (here: tagged) while run-all runs; the next message is answered
        _podman("tag", agent_image, missing)
        tmux.type("chat", "hello")
        tmux.wait("chat", "[Andy] echo: hello")

        # cron appears: the kept task gets its line (no restart) and real cron fires it
        (tmp_path / "bin" / "crontab").symlink_to(CRONTAB)
        tmux.wait("run1", "timers can be written again (found", 30)
        cron = subprocess.Popen(["nsenter", "-t", str(tmux.pid("run1")), "-m", "--", "/usr/sbin/cron", "-f"])
        tab = subprocess.run(["nsenter", "-t", str(tmux.pid("run1")), "-m", "--", CRONTAB, "-l"],
                             capture_output=True, text=True).stdout
        assert "tasks fire 1" in tab and "# nanoclaw-task-1" in tab, tab
        tmux.wait("chat", "[Andy] echo: from cron", 130)
        s.cli("tasks", "cancel", "1")
        doctor = s.cli("doctor", check=False).stdout
        assert "ok    cron for scheduled tasks: crontab at" in doctor and "ok    cron daemon running" in doctor

        # two containers of this run: the lead (answered, warm) and its member (busy)
        tmux.type("chat", "delegate helper sleep 15")
        tmux.wait("chat", "[Andy] delegated")
        s.wait_for(lambda: any("--helper-" in n for n in ours_running()) and len(ours_running()) == 2, 30,
                   what="the lead's and the member's containers")
        tmux.keys("run1", "C-c")
        text = tmux.wait_dead("run1", 60)
        assert not ours_running(), ours_running()  # nothing of the run is left
        assert not _podman("ps", "-a", "-q", "--filter", "label=nanoclaw.job").stdout.strip()
        assert "no agent container of this run is left running" in text, text[-3000:]
        assert "Traceback" not in text, text[-8000:]

        # the next start runs the member's unanswered message again: nothing lost
        tmux.tmux("kill-window", "-t", "t:run1")
        tmux.open("run2", [*private_cron(tmp_path / "cron2"), sys.executable, "-m", "nanoclaw", "run-all"])
        chat = tmux.wait_dead("chat", 30)  # the chat says why it ends, once, and ends
        assert chat.count("connection to the channel daemon lost") == 1 and "Traceback" not in chat, chat
        s.wait_for(lambda: s.cli("ping", check=False).stdout.count(" up ") == len(DAEMONS), 60,
                   what="run-all again")
        tmux.open("chat2", [sys.executable, "-m", "nanoclaw", "chat", "main"])
        tmux.wait("chat2", "[Helper] slept 15", 90)
        with s.db() as con:  # the stopped run was no failure: no attempt counted, no retry delay
            helper = [tuple(r) for r in con.execute("select status, exit_code from job where agent = 'helper' "
                                                    "order by id")]
            assert helper == [("stopped", 137), ("running", None)], helper  # killed; then run again
            assert con.execute("select max(failures) from cursor").fetchone()[0] == 0
        tmux.keys("run2", "C-c")
        tmux.wait_dead("run2", 60)
        assert not ours_running()
    finally:
        if cron is not None:
            cron.terminate()
            cron.wait(10)
        tmux.close()
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
        _podman("rmi", missing, check=False)


def test_a_stop_that_ends_the_agents_loses_no_message(make_system, agent_image, podman_service):
    """run-all's runner (NANOCLAW_RUNNER_STOPS_AGENTS=1) ends its agents when it stops: a busy one is
    killed after the grace, its job recorded as stopped (no failure counted), and its message is
    answered once by the next runner. The queue stays up here, as it does under systemd."""
    from nanoclaw.daemons.runner.drain import STOP_ENV, STOP_GRACE
    s = make_system(container={"image": agent_image, "podman_url": podman_service, "idle_timeout": 600.0})
    s.env[STOP_ENV] = "1"
    s.cli("groups", "add", "main", "--main")
    s.start()
    w = s.watch("main")
    s.send("main", "sleep 8")
    s.wait_for(lambda: ours_running(), 30, what="the agent's container")
    started = time.monotonic()
    s.stop("runner")
    took = time.monotonic() - started
    assert not ours_running() and STOP_GRACE <= took < STOP_GRACE + 10, (ours_running(), took)
    assert "killed nanoclaw-main-1" in s.log("runner")
    s.start("runner")
    assert w.reply(90) == "slept 8"
    s.barrier()
    assert s.replies("main@term").count("slept 8") == 1
    with s.db() as con:
        jobs = [tuple(r) for r in con.execute("select status, exit_code from job order by id")]
        assert jobs[0] == ("stopped", 137) and jobs[1][0] in ("running", "done"), jobs
        assert con.execute("select max(failures) from cursor").fetchone()[0] == 0
