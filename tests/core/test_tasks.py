"""Scheduled tasks: CLI management, timers (crontab and systemd units), runs through the queue."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from system_harness import ROOT


def test_cli_manages_tasks_and_refuses_bad_input(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    out = s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "--tz", "Europe/Berlin", "daily", "summary").stdout
    assert out.startswith("added task 1 for main: cron 0 9 * * * (at 09:00 every day Europe/Berlin), next: ")
    bad = s.cli("tasks", "add", "main", "--cron", "0 9 * *", "x", check=False)
    assert bad.returncode == 2 and "5 fields" in bad.stderr
    assert s.cli("tasks", "add", "main", "--every", "5s", "x", check=False).returncode == 2
    assert "unknown timezone" in s.cli("tasks", "add", "main", "--cron", "@daily", "--tz", "Nowhere/X", "x",
                                       check=False).stderr
    assert "no group" in s.cli("tasks", "add", "nope", "--every", "1h", "x", check=False).stderr
    s.cli("tasks", "add", "main", "--every", "2h", "--isolated", "check", "mail")
    listing = s.cli("tasks", "list").stdout
    assert "cron" in listing and "interval" in listing and "2h" in listing
    assert "task 1 is now paused" in s.cli("tasks", "pause", "1").stdout
    assert s.cli("tasks", "pause", "1", check=False).returncode == 2  # already paused
    assert "task 1 is now active" in s.cli("tasks", "resume", "1").stdout
    assert "cancelled" in s.cli("tasks", "cancel", "2").stdout
    assert "check" not in s.cli("tasks", "list").stdout
    assert "check" in s.cli("tasks", "list", "--all").stdout
    assert "no task 99" in s.cli("tasks", "log", "99", check=False).stderr


def test_the_owner_changes_a_tasks_prompt_and_schedule(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "--tz", "UTC", "morning", "summary")
    out = s.cli("tasks", "update", "1", "--every", "2h", "--prompt", "evening summary").stdout
    assert out.startswith("updated task 1 for main: every 2h, next: ")
    assert "'evening summary'" in s.cli("tasks", "list").stdout
    assert s.cli("tasks", "update", "1", "--cron", "0 0 31 2 *", check=False).stderr.strip() == \
        "nanoclaw: cron '0 0 31 2 *' never fires: no date matches all its fields"
    assert "nothing to change" in s.cli("tasks", "update", "1", check=False).stderr
    assert "every 2h" in s.cli("tasks", "log", "1").stdout  # unchanged by the refusals


def test_a_schedule_that_can_never_fire_is_refused_before_anything_is_stored(offline_system):
    """The defect: '0 0 31 2 *' printed a traceback yet left an active task with no next run
    (and a timer that never elapses); `tasks log` crashed on it too."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    bad = s.cli("tasks", "add", "main", "--cron", "0 0 31 2 *", "leap", "day", check=False)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == ["nanoclaw: cron '0 0 31 2 *' never fires: no date matches all "
                                               "its fields"]
    assert "no scheduled tasks" in s.cli("tasks", "list", "--all").stdout


@pytest.mark.podman
def test_an_agent_asking_for_an_impossible_schedule_is_told_why_and_nothing_is_stored(system):
    w = system.watch("main")
    system.send("main", "task cron|0 0 31 2 *|on the 31st of February")
    got = {w.reply(60), w.reply(60)}
    assert "asked" in got
    assert "Task request refused: cron '0 0 31 2 *' never fires: no date matches all its fields" in got
    with system.db() as con:
        assert con.execute("select count(*) from task").fetchone()[0] == 0


def test_crontab_backend_round_trips_and_its_line_enqueues(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.cli("tasks", "add", "main", "--cron", "30 7 * * 1-5", "--tz", "UTC", "weekday", "brief")
    s.cli("tasks", "add", "main", "--every", "15m", "tick")
    s.start("scheduler")
    tab = Path(s.config_path.parent.parent / "crontab")
    s.wait_for(lambda: tab.exists() and tab.read_text().count("nanoclaw-task-") == 2, 10, what="crontab lines")
    lines = [line for line in tab.read_text().splitlines() if "nanoclaw-task-" in line]
    assert lines[0].startswith("30 7 * * 1-5 ") and lines[0].endswith("tasks fire 1 # nanoclaw-task-1")
    assert lines[1].startswith("* * * * * ") and "tasks fire 2 --if-due" in lines[1]
    # pausing removes the line; the owner's own lines stay
    tab.write_text("0 1 * * * /usr/bin/true # mine\n" + tab.read_text())
    s.cli("tasks", "pause", "2")
    s.wait_for(lambda: "nanoclaw-task-2" not in tab.read_text(), 10, what="line removed")
    assert "# mine" in tab.read_text() and "nanoclaw-task-1" in tab.read_text()
    # the line's command is what cron runs: it enqueues the task
    command = lines[0].split(" ", 5)[5].rsplit(" #", 1)[0]
    subprocess.run(command, shell=True, env=s.env, check=True)
    queue_new = s.state / "spool" / "queue" / "new"
    assert [p.name.endswith("task_fire") for p in queue_new.iterdir()] == [True]
    # --if-due does nothing when the task is not due
    s.cli("tasks", "resume", "2")
    subprocess.run(f"{sys.executable} -m nanoclaw tasks fire 2 --if-due", shell=True,
                   env=s.env, check=True)
    assert len(list(queue_new.iterdir())) == 1


def test_systemd_backend_writes_valid_timers_and_removes_orphans(offline_system, tmp_path, monkeypatch):
    from nanoclaw.admin.timer_sync import SystemdTimers, sync
    from nanoclaw.core import config_file
    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.groups import add_group
    from nanoclaw.core.models import Task, open_db
    from nanoclaw.core.timer_specs import TimerSpecs, specs_of

    s = offline_system
    for key in ("NANOCLAW_STATE_DIR", "NANOCLAW_RUNTIME_DIR", "NANOCLAW_CONFIG_DIR"):
        monkeypatch.setenv(key, s.env[key])
    cfg = config_file.load(s.config_path)
    assert str(cfg.state_dir).startswith(str(s.base))
    open_db(cfg.db_path)
    main = add_group(cfg, "main", is_main=True)
    t1 = tasks_mod.create(cfg, main, "brief", "cron", "0 9 13 * FRI", tz="Europe/Berlin")
    t2 = tasks_mod.create(cfg, main, "tick", "interval", "30m")
    t3 = tasks_mod.create(cfg, main, "once", "once", "2099-01-01T08:00", tz="UTC")
    unit_dir = tmp_path / "units"
    unit_dir.mkdir()
    calls = tmp_path / "calls"
    backend = SystemdTimers(unit_dir, systemctl=["sh", "-c", f'echo "$@" >> {calls}', "systemctl"])
    changes = backend.reconcile(specs_of(list(Task.select())))
    assert changes == ["created nanoclaw-task-1.timer", "created nanoclaw-task-2.timer",
                       "created nanoclaw-task-3.timer"]
    timer1 = (unit_dir / "nanoclaw-task-1.timer").read_text()
    assert "OnCalendar=*-*-13 09:00:00 Europe/Berlin\nOnCalendar=Fri *-*-* 09:00:00 Europe/Berlin" in timer1
    assert "Persistent=true" in timer1 and "AccuracySec=10ms" in timer1
    assert "Unit=nanoclaw-task@1.service" in timer1
    assert "OnUnitActiveSec=1800s" in (unit_dir / "nanoclaw-task-2.timer").read_text()
    assert "OnCalendar=2099-01-01 08:00:00 UTC" in (unit_dir / "nanoclaw-task-3.timer").read_text()
    assert "enable nanoclaw-task-1.timer" in calls.read_text()
    # unchanged tasks: nothing to do; a paused task's timer goes, an orphan goes
    assert backend.reconcile(specs_of(list(Task.select()))) == []
    (unit_dir / "nanoclaw-task-77.timer").write_text("[Timer]\n")
    tasks_mod.change(t2, "pause")
    changes = backend.reconcile(specs_of(list(Task.select().where(Task.status == "active"))))
    assert changes == ["removed nanoclaw-task-2.timer", "removed nanoclaw-task-77.timer"]
    assert "disable --now nanoclaw-task-2.timer" in calls.read_text()
    if shutil.which("systemd-analyze"):
        shutil.copy(ROOT / "units" / "nanoclaw-task@.service", unit_dir)
        r = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit_dir / "nanoclaw-task-1.timer"),
                            str(unit_dir / "nanoclaw-task-3.timer")], capture_output=True, text=True)
        problems = [line for line in r.stderr.splitlines()
                    if "nanoclaw-task" in line and "/opt/nanoclaw/bin/" not in line
                    and "nanoclaw.target" not in line]
        assert problems == [], r.stderr
    assert t1.id == 1 and t3.id == 3

    # The same through the two halves: specs written by the scheduler, units by the root sync,
    # which refuses any spec that would put something else into a unit file.
    spec_dir = tmp_path / "specs"
    assert TimerSpecs(spec_dir).reconcile(list(Task.select().where(Task.status == "active"))) == [
        "created nanoclaw-task-1.timer", "created nanoclaw-task-3.timer"]
    forged = {"nanoclaw-task-9.json": '{"id": 9, "kind": "cron", "oncalendar": ["daily\\nExecStart=/bin/sh"]}',
              "nanoclaw-task-10.json": '{"id": 11, "kind": "interval", "interval": 60}',
              "nanoclaw-task-12.json": '{"id": 12, "kind": "interval", "interval": "60s; rm"}',
              "nanoclaw-task-13.json": "not json"}
    for name, text in forged.items():
        (spec_dir / name).write_text(text)
    unit_dir2 = tmp_path / "units2"
    unit_dir2.mkdir()
    changes = sync(spec_dir, unit_dir2, systemctl=["true"])
    assert changes == ["created nanoclaw-task-1.timer", "created nanoclaw-task-3.timer"]
    assert (unit_dir2 / "nanoclaw-task-1.timer").read_text() == timer1
    tasks_mod.change(t1, "cancel")
    changes = TimerSpecs(spec_dir).reconcile(list(Task.select().where(Task.status == "active")))
    assert "removed nanoclaw-task-1.timer" in changes  # and the forged specs, which no task stands for
    assert sorted(p.name for p in spec_dir.iterdir()) == ["nanoclaw-task-3.json"]
    assert sync(spec_dir, unit_dir2, systemctl=["true"]) == ["removed nanoclaw-task-1.timer"]


@pytest.mark.podman
def test_task_runs_through_the_queue_and_is_logged(system):
    w = system.watch("main")
    system.cli("tasks", "add", "main", "--every", "1h", "--isolated", "hello", "from", "the", "schedule")
    system.cli("tasks", "run-now", "1")
    assert w.reply(60) == "echo: hello from the schedule"
    system.wait_for(lambda: "success" in system.cli("tasks", "log", "1").stdout, 20, what="run logged")
    log = system.cli("tasks", "log", "1").stdout
    assert log.startswith("task 1 for main: every 1h, next: ")
    assert "'echo: hello from the schedule'" in log
    with system.db() as con:
        assert con.execute("select count(*) from session").fetchone()[0] == 0  # isolated: no session kept
        assert con.execute("select count(*) from cursor where last_message_id > 0").fetchone()[0] == 0
    # the agent sees its tasks
    tasks_json = system.state / "ipc" / "main" / "in" / "tasks.json"
    system.wait_for(lambda: tasks_json.exists(), 10, what="tasks.json")
    assert '"prompt": "hello from the schedule"' in tasks_json.read_text()


@pytest.mark.podman
def test_once_task_completes_and_failed_runs_retry(system):
    w = system.watch("main")
    when = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 3600))
    system.cli("tasks", "add", "main", "--at", when, "--tz", "UTC", "failonce")
    system.cli("tasks", "run-now", "1")
    assert w.reply(60) == "recovered"
    system.wait_for(lambda: "completed" in system.cli("tasks", "list", "--all").stdout, 20, what="completed")
    with system.db() as con:
        run = con.execute("select status, attempts from taskrun").fetchone()
    assert tuple(run) == ("success", 2)
