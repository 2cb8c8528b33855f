"""nanoclaw under a real systemd: every unit, the journal, restarts, the watchdog,
and scheduled tasks as real timers.

The Debian 12 machine of tests/system/conftest.py (installed as the README
says, its credential set) is used in order, as an owner would use the service.
Agents are the real agent image in nested rootless Podman, run by the
``nanoclaw`` service user, answering through the fake Messages API.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import time
from datetime import datetime

import pytest

from .machine import UNITS, Machine

pytestmark = [pytest.mark.system, pytest.mark.podman]


@pytest.fixture
def machine(debian12) -> Machine:
    """The Debian 12 machine, installed as the README says (tests/system/conftest.py)."""
    return debian12


def send(m: Machine, text: str, wait: int = 120) -> str:
    return m.send(text, wait)


def test_install_starts_every_unit(machine: Machine):
    assert machine.state("nanoclaw.target") == "active"
    for unit in UNITS:
        assert machine.state(unit) == "active", unit
    # Type=notify daemons report live figures to systemctl status.
    assert "group" in machine.show("nanoclaw-queue", "StatusText")
    assert machine.show("nanoclaw-queue", "User") == "nanoclaw"
    doctor = machine.nanoclaw("doctor", check=False)
    assert "ok    unit nanoclaw-queue: active" in doctor.stdout, doctor.stdout
    assert "ok    the proxy holds a credential" in doctor.stdout
    status = machine.nanoclaw("status").stdout
    assert "queue active" in status and "main (main)" in status, status


def test_units_pass_systemd_analyze_verify(machine: Machine):
    r = machine.sh("cd /etc/systemd/system && systemd-analyze verify --man=no "
                   "$(ls nanoclaw*.service nanoclaw*.target nanoclaw*.path nanoclaw-backup.timer | grep -v @) 2>&1",
                   check=False)
    problems = [line for line in r.stdout.splitlines() if "nanoclaw" in line]
    assert problems == [], r.stdout


def test_message_answered_by_a_nested_rootless_agent(machine: Machine):
    out = send(machine, "hello from systemd")
    assert "echo: hello from systemd" in out
    # The agent container ran under the service user's rootless podman.
    ps = machine.sh("cd / && runuser -u nanoclaw -- env XDG_RUNTIME_DIR=/run/nanoclaw/xdg "
                    "HOME=/var/lib/nanoclaw/home podman ps -a --format '{{.Image}}'", check=False).stdout
    assert "nanoclaw-agent" in ps, ps
    # The queue's handling is in the journal, findable by a field; the body is not logged.
    log = machine.journal("-u", "nanoclaw-queue", "GROUP=main")
    assert "group=main" in log and "job=" in log, log
    everything = machine.journal("-u", "nanoclaw-*")
    assert "hello from systemd" not in everything


def test_router_restart_loses_nothing(machine: Machine):
    before = len(machine.replies())
    machine.nanoclaw("send", "main", "before the router restart")
    machine.sh("systemctl restart nanoclaw-router")
    out = send(machine, "after the router restart")
    assert "echo: after the router restart" in out
    machine.wait_for(lambda: "echo: before the router restart" in machine.replies(), 60, "the first reply")
    replies = machine.replies()[before:]
    assert replies.count("echo: before the router restart") == 1
    assert replies.count("echo: after the router restart") == 1


def test_killed_queue_is_restarted_and_the_message_answered(machine: Machine):
    restarts = int(machine.show("nanoclaw-queue", "NRestarts"))
    machine.sh("systemctl kill -s KILL nanoclaw-queue")
    machine.nanoclaw("send", "main", "while the queue was dead")
    machine.wait_for(lambda: int(machine.show("nanoclaw-queue", "NRestarts")) > restarts, 30, "a restart")
    machine.wait_for(lambda: "echo: while the queue was dead" in machine.replies(), 90, "the reply")
    assert machine.replies().count("echo: while the queue was dead") == 1
    assert machine.state("nanoclaw-queue") == "active"


def test_hung_daemon_is_restarted_by_the_watchdog(machine: Machine):
    # A short watchdog period for the test only; SIGSTOP hangs the daemon (its pings stop).
    dropin = "/etc/systemd/system/nanoclaw-ipc.service.d/test-watchdog.conf"
    machine.sh(f"printf '[Service]\\nWatchdogSec=3\\nTimeoutAbortSec=2\\n' > {dropin} && systemctl daemon-reload "
               "&& systemctl restart nanoclaw-ipc")
    try:
        restarts = int(machine.show("nanoclaw-ipc", "NRestarts"))
        machine.sh("systemctl kill -s STOP --kill-who=main nanoclaw-ipc")
        machine.wait_for(lambda: int(machine.show("nanoclaw-ipc", "NRestarts")) > restarts, 30,
                         "the watchdog restart")
        assert "watchdog" in machine.journal("-u", "nanoclaw-ipc", "--since", "-1min").lower()
        machine.wait_for(lambda: machine.state("nanoclaw-ipc") == "active", 30, "ipc active again")
    finally:
        machine.sh(f"rm -f {dropin} && systemctl daemon-reload")  # the shared drop-in stays
    assert "echo: after the watchdog" in send(machine, "after the watchdog")


def _at(seconds: float) -> tuple[str, float]:
    due = int(time.time() + seconds) + 1
    return datetime.fromtimestamp(due).strftime("%Y-%m-%dT%H:%M:%S"), float(due)


def _task_id(added: str) -> int:
    return int(added.split("task ")[1].split()[0])


def _timers(machine: Machine) -> str:
    return machine.sh("systemctl list-timers --all --no-pager 'nanoclaw-task-*'").stdout


def test_task_fires_on_time_as_a_timer(machine: Machine):
    tz = machine.sh("cat /etc/timezone 2>/dev/null || echo UTC").stdout.strip() or "UTC"
    at, due = _at(6)
    task = _task_id(machine.nanoclaw("tasks", "add", "main", "--at", at, "--tz", tz, "timer check").stdout)
    machine.wait_for(lambda: f"nanoclaw-task-{task}.timer" in _timers(machine), 10, "the timer listed")
    runs = machine.wait_for(lambda: machine.query(
        f"print(json.dumps([[r.fired_at, r.status] for r in TaskRun.select().where(TaskRun.task == {task})]))"),
        30, "the task run")
    fired_at = runs[0][0]
    assert abs(fired_at - due) <= 2.0, f"fired {fired_at - due:+.2f}s from due"
    machine.wait_for(lambda: "echo: timer check" in machine.replies(), 60, "the task's message in the chat")
    log = machine.nanoclaw("tasks", "log", str(task)).stdout
    machine.wait_for(lambda: "success" in machine.nanoclaw("tasks", "log", str(task)).stdout, 30, "run logged")
    assert f"task {task}" in log


def test_pausing_removes_the_timer(machine: Machine):
    task = _task_id(machine.nanoclaw("tasks", "add", "main", "--every", "1h", "hourly thing").stdout)
    unit = f"nanoclaw-task-{task}.timer"
    machine.wait_for(lambda: unit in _timers(machine), 10, "the timer listed")
    machine.nanoclaw("tasks", "pause", str(task))
    machine.wait_for(lambda: unit not in _timers(machine), 10, "the timer gone")
    machine.nanoclaw("tasks", "resume", str(task))
    machine.wait_for(lambda: unit in _timers(machine), 10, "the timer back")
    machine.nanoclaw("tasks", "cancel", str(task))
    machine.wait_for(lambda: unit not in _timers(machine), 10, "the timer gone after cancel")


def test_task_missed_while_stopped_runs_after_restart(machine: Machine):
    at, due = _at(5)
    task = _task_id(machine.nanoclaw("tasks", "add", "main", "--at", at, "missed while stopped").stdout)
    machine.wait_for(lambda: f"nanoclaw-task-{task}.timer" in _timers(machine), 10, "the timer listed")
    machine.sh("systemctl stop nanoclaw.target")
    assert machine.state(f"nanoclaw-task-{task}.timer") != "active"
    while time.time() < due + 3:
        time.sleep(0.5)
    assert machine.query(f"print(TaskRun.select().where(TaskRun.task == {task}).count())") == 0
    machine.sh("systemctl start nanoclaw.target")
    machine.wait_for(lambda: "echo: missed while stopped" in machine.replies(), 90, "the missed task's reply")


def test_whatsapp_backend_runs_in_the_channel_sandbox(machine: Machine):
    """neonize (a Go library behind ctypes callbacks) under the channel unit's hardening."""
    machine.sh("sed -i '1i channels = [\"whatsapp\", \"terminal\"]' /etc/nanoclaw/config.toml "
               "&& systemctl restart nanoclaw-channel")
    try:
        machine.wait_for(lambda: "whatsapp:" in machine.show("nanoclaw-channel", "StatusText"), 30,
                         "the WhatsApp backend's status")
        assert machine.state("nanoclaw-channel") == "active"
        assert int(machine.show("nanoclaw-channel", "NRestarts")) == 0
        session = machine.sh("stat -c '%a %U' /var/lib/nanoclaw/whatsapp").stdout.split()
        assert session == ["700", "nanoclaw"]
        # neonize's Go side reads its bot label switch from the environment the process started with
        environ = machine.sh("tr '\\0' '\\n' < /proc/$(systemctl show -p MainPID --value nanoclaw-channel)/environ")
        assert "NEONIZE_BOT_TAG=off" in environ.stdout.splitlines()
        # and the terminal beside it still answers
        assert "echo: beside whatsapp" in send(machine, "beside whatsapp")
    finally:
        machine.sh("sed -i '/^channels = /d' /etc/nanoclaw/config.toml && systemctl restart nanoclaw-channel")


def test_a_channel_whose_whatsapp_client_hangs_is_restarted_by_the_watchdog(machine: Machine):
    """No path leaves the channel waiting forever. neonize's real client, on a session that
    looks linked, dials through a proxy that accepts and never answers: whatsmeow would wait a
    minute, and a stop waits for it. Past client_timeout the channel stops feeding its
    watchdog and systemd replaces the process. Also: ffmpeg is there for neonize."""
    dropin = "/etc/systemd/system/nanoclaw-channel.service.d/test-watchdog.conf"
    session = "/var/lib/nanoclaw/whatsapp/session.db"
    tool = "/opt/nanoclaw/bin/python /root/nanoclaw/tests/whatsapp_offline.py"
    machine.sh(f"systemd-run --unit nc-silent-proxy --collect {tool} silent 18099")
    machine.sh("cp -p /etc/nanoclaw/config.toml /tmp/config.toml.before-hang "
               "&& sed -i '1i channels = [\"whatsapp\", \"terminal\"]' /etc/nanoclaw/config.toml "
               "&& printf '\\n[whatsapp]\\nproxy = \"http://127.0.0.1:18099\"\\nclient_timeout = 5.0\\n' "
               ">> /etc/nanoclaw/config.toml "
               "&& install -d -o nanoclaw -g nanoclaw -m 0700 /var/lib/nanoclaw/whatsapp "
               f"&& {tool} link {session} && chown nanoclaw:nanoclaw {session} && chmod 0600 {session} "
               f"&& printf '[Service]\\nWatchdogSec=3\\nTimeoutAbortSec=2\\n' > {dropin} "
               "&& systemctl daemon-reload && systemctl restart nanoclaw-channel")
    try:
        restarts = int(machine.show("nanoclaw-channel", "NRestarts"))
        machine.wait_for(lambda: int(machine.show("nanoclaw-channel", "NRestarts")) > restarts, 60,
                         "the watchdog restart")
        log = machine.journal("-u", "nanoclaw-channel", "--since", "-2min")
        assert "watchdog no longer fed: the WhatsApp client is stuck: connecting" in log, log[-3000:]
        assert "watchdog timeout" in log.lower(), log[-3000:]  # systemd's own word for what it did
        assert "ffmpeg and ffprobe not found" not in log  # neonize checks at connect
        assert machine.sh("command -v ffmpeg && command -v ffprobe", check=False).returncode == 0
    finally:
        machine.sh(f"rm -f {dropin} {session}* && cp -p /tmp/config.toml.before-hang /etc/nanoclaw/config.toml; "
                   "systemctl stop nc-silent-proxy; systemctl daemon-reload; systemctl reset-failed nanoclaw-channel; "
                   "systemctl restart nanoclaw-channel", check=False)
    machine.wait_for(lambda: machine.state("nanoclaw-channel") == "active", 30, "the channel active again")
    assert "echo: after the hung client" in send(machine, "after the hung client")


def test_the_credential_reaches_the_api_and_never_the_container(machine: Machine):
    """The real image (claude-agent-sdk and its CLI) reaches the fake Messages API only through the
    proxy unit, which adds the credential the container never sees."""
    from .conftest import SECRET
    out = send(machine, "hello real agent")
    assert "echo: hello real agent" in out, out
    asked = [r for r in machine.api_log() if r["path"].startswith("/v1/messages")
             and r["message"] == "hello real agent"]
    assert asked and all(r["x-api-key"] == SECRET for r in asked)
    # and the container never had it: nowhere in the group's files, its session or its ipc
    assert machine.sh(f"grep -rl {SECRET} /var/lib/nanoclaw/groups /var/lib/nanoclaw/sessions "
                      "/var/lib/nanoclaw/ipc", check=False).stdout == ""


def test_an_owners_folder_under_home_is_mounted_read_write(machine: Machine):
    """Owners' folders mostly live under /home: the runner (which opens and checks each) and
    Podman (which mounts it) see /home under their sandboxes, and the agent writes there."""
    machine.sh("mkdir -p /home/me/projects/site && echo 'from the owner' > /home/me/projects/site/in.txt"
               " && chown -R nanoclaw: /home/me/projects/site && chmod 755 /home/me /home/me/projects"
               " && printf '[[root]]\\npath = \"/home/me/projects\"\\nwrite = true\\n'"
               " > /etc/nanoclaw/mount-allowlist.toml && chmod 644 /etc/nanoclaw/mount-allowlist.toml")
    try:  # a group of its own: a mount applies from a group's next container on
        machine.as_service_user("groups", "add", "projects", "--no-trigger")
        machine.nanoclaw("groups", "mount", "add", "projects", "/home/me/projects/site", "--rw")
        out = machine.nanoclaw("send", "projects", "--wait", "120", "bash: cat /workspace/extra/site/in.txt && "
                               "echo 'from the agent' > /workspace/extra/site/out.txt", timeout=150).stdout
        assert "tool done: from the owner" in out, out
        assert machine.sh("cat /home/me/projects/site/out.txt").stdout == "from the agent\n"
    finally:
        machine.nanoclaw("groups", "remove", "projects", check=False)
        machine.sh("rm -rf /home/me /etc/nanoclaw/mount-allowlist.toml", check=False)


def _pid(machine: Machine, unit: str) -> int:
    return int(machine.show(unit, "MainPID"))


def _as_nanoclaw_in(machine: Machine, pid: int, command: str) -> subprocess.CompletedProcess:
    """``command`` as the nanoclaw user (no capabilities) in the mount namespace, and so the
    sandbox's view of the files and /proc, of the process ``pid``."""
    return machine.sh(f"nsenter -t {pid} -m -- setpriv --reuid=nanoclaw --regid=nanoclaw --clear-groups "
                      f"--inh-caps=-all sh -c {shlex.quote(command)}", check=False)


def test_egress_cannot_read_the_credential_and_each_unit_stands_without_the_other(machine: Machine):
    """The egress unit parses the agents' web traffic as the same user as the proxy: its
    sandbox must keep it from the credential, from the owner's file (which is that user's own
    where systemd cannot hand credentials over), systemd's copy and the proxy's memory. And a
    crash or restart of either leaves the other running."""
    from .conftest import SECRET
    egress, proxy = _pid(machine, "nanoclaw-egress"), _pid(machine, "nanoclaw-proxy")
    assert egress and proxy and egress != proxy
    assert "ok    egress answers" in machine.nanoclaw("doctor", check=False).stdout
    handed = "handed over by systemd" in machine.credential_output
    cred = ("/run/credentials/nanoclaw-proxy.service/anthropic-credential" if handed
            else "/etc/nanoclaw/credentials/anthropic-credential")
    # the proxy, in its own sandbox, reads it ...
    assert _as_nanoclaw_in(machine, proxy, f"cat {cred}").stdout.strip() == SECRET
    # ... egress, in its sandbox, reads neither copy, whichever this host uses
    for path in ("/etc/nanoclaw/credentials/anthropic-credential",
                 "/run/credentials/nanoclaw-proxy.service/anthropic-credential"):
        r = _as_nanoclaw_in(machine, egress, f"cat {path}")
        assert r.returncode != 0 and SECRET not in r.stdout, (path, r.stdout, r.stderr)
    assert _as_nanoclaw_in(machine, egress, "ls /etc/nanoclaw/credentials /run/credentials").returncode != 0
    # ... nor the proxy's memory: not dumpable, it is not even listed in egress's /proc
    assert _as_nanoclaw_in(machine, egress, f"test -d /proc/{egress} && test ! -e /proc/{proxy}").returncode == 0
    assert _as_nanoclaw_in(machine, egress, f"cat /proc/{proxy}/environ; head -c1 /proc/{proxy}/mem").returncode != 0
    # Outside the sandbox the same user could, where the file is its own: the sandbox is what stops it.
    print(f"credential {'handed over by systemd' if handed else 'read from the service user file'}; "
          f"as nanoclaw outside any sandbox: "
          f"{'readable' if SECRET in machine.sh(f'runuser -u nanoclaw -- cat {cred}', check=False).stdout else 'not readable'}")
    # A crash of egress: the proxy runs on and answers; egress is restarted.
    restarts = int(machine.show("nanoclaw-egress", "NRestarts"))
    machine.sh("systemctl kill -s KILL nanoclaw-egress")
    machine.wait_for(lambda: int(machine.show("nanoclaw-egress", "NRestarts")) > restarts, 30, "egress restarted")
    assert _pid(machine, "nanoclaw-proxy") == proxy and machine.state("nanoclaw-proxy") == "active"
    assert "echo: after egress crashed" in send(machine, "after egress crashed")
    # A restart of the proxy leaves egress as it was.
    egress = _pid(machine, "nanoclaw-egress")
    machine.sh("systemctl restart nanoclaw-proxy")
    machine.wait_active()
    assert _pid(machine, "nanoclaw-egress") == egress and _pid(machine, "nanoclaw-proxy") != proxy
    assert "echo: after the proxy restarted" in send(machine, "after the proxy restarted")
    exposure = machine.sh("systemd-analyze security --no-pager nanoclaw-proxy.service nanoclaw-egress.service "
                          "2>&1 | grep -i 'overall exposure'", check=False).stdout
    print("systemd-analyze security:", exposure)
    for unit in ("nanoclaw-proxy", "nanoclaw-egress"):
        level = re.search(rf"Overall exposure level for {unit}\.service: ([0-9.]+)", exposure)
        assert level and float(level.group(1)) <= 2.0, exposure


def test_without_units_tasks_are_lines_in_the_service_users_crontab(machine: Machine):
    """Where systemd does not run nanoclaw (here: `nanoclaw run-all` as the service user), the
    scheduler keeps tasks as crontab lines and cron's `tasks fire` hands them to the queue."""
    machine.sh("systemctl stop nanoclaw.target && systemctl start cron "
               "&& cp -p /etc/nanoclaw/config.toml /tmp/config.toml.saved "
               "&& sed -i '1i scheduler = \"crontab\"' /etc/nanoclaw/config.toml")
    try:
        machine.sh("systemd-run --unit nc-runall --collect -p User=nanoclaw -p WorkingDirectory=/ "
                   "-p Environment='HOME=/var/lib/nanoclaw/home XDG_RUNTIME_DIR=/run/nanoclaw/xdg' "
                   "/opt/nanoclaw/bin/nanoclaw run-all")
        machine.wait_for(lambda: "crontab" in machine.nanoclaw("ping", check=False).stdout, 30,
                         "the scheduler on its crontab backend")
        task = _task_id(machine.nanoclaw("tasks", "add", "main", "--cron", "* * * * *", "--over-limits",  # every minute
                                         "from cron").stdout)
        line = machine.wait_for(lambda: machine.sh("crontab -l -u nanoclaw", check=False).stdout, 15,
                                "the crontab line")
        assert f"tasks fire {task}" in line and f"nanoclaw-task-{task}" in line, line
        machine.wait_for(lambda: "echo: from cron" in machine.replies(), 100, "cron's firing answered")
        machine.nanoclaw("tasks", "cancel", str(task))
        machine.wait_for(lambda: f"nanoclaw-task-{task}" not in machine.sh("crontab -l -u nanoclaw",
                                                                           check=False).stdout,
                         15, "the line removed")
    finally:
        machine.sh("systemctl stop nc-runall; cp -p /tmp/config.toml.saved /etc/nanoclaw/config.toml "
                   "&& systemctl start nanoclaw.target", check=False)


def test_uninstall_removes_units_and_keeps_data(machine: Machine):
    machine.sh("cd /root/nanoclaw && ./install.sh --uninstall")
    assert machine.sh("ls /etc/systemd/system | grep -c nanoclaw", check=False).stdout.strip() == "0"
    assert machine.state("nanoclaw-queue") != "active"
    assert machine.sh("test -s /var/lib/nanoclaw/nanoclaw.db && test -d /etc/nanoclaw && echo kept").stdout.strip() \
        == "kept"
    assert machine.sh("command -v nanoclaw", check=False).returncode != 0
    machine.sh("cd /root/nanoclaw && ./install.sh --uninstall --purge")
    assert machine.sh("test -e /var/lib/nanoclaw || test -e /etc/nanoclaw || getent passwd nanoclaw",
                      check=False).returncode != 0
