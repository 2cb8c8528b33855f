"""Caps an agent cannot reset, and names and schedules that are whole (issue 24, section 5).

The ipc and scheduler daemons run as real processes; the agent's side is the test writing
into the group's own ``out/`` spool, exactly what a container may write there.
"""

from __future__ import annotations

import json
import time

import pytest
from proxy_harness import running_job

from nanoclaw.core.protocol import Spool

NEWLINE_CRON = "0 9 * *\n*"  # five fields to str.split(), one line too many for a crontab


def notices(s) -> list[str]:
    """What ipc queued for the chats (the router is not running in these tests)."""
    return [json.loads(p.read_text())["body"]["text"] for p in sorted((s.state / "spool" / "router" / "new").iterdir())]


def tasks(s, folder: str) -> list[tuple]:
    with s.db() as con:
        return [tuple(r) for r in con.execute(
            'select t.schedule_type, t.schedule_value from task t join "group" g on g.id = t.group_id '
            "where g.folder=? and t.status in ('active', 'paused') order by t.id", (folder,))]


def ask_task(s, job: int, action: str, **spec) -> None:
    Spool(s.state / "ipc" / "main" / "out").ensure().put("task_request", {"job": job, "action": action, "task": spec})
    s.nudge("ipc")


def test_tasks_per_group_and_their_shortest_interval_are_capped_for_agents_and_the_cli(make_system):
    s = make_system(tasks={"max_per_group": 2, "min_interval": 600})
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family")
    s.start("ipc")
    job = running_job(s, "main")
    # the main agent schedules for family (main may): two fit, the third is refused with the reason
    for i in range(3):
        ask_task(s, job, "schedule", prompt=f"t{i}", schedule_type="interval", schedule_value="1h",
                 target_group="family")
    s.wait_for(lambda: len(notices(s)) == 3, 10, what="three answers")
    assert tasks(s, "family") == [("interval", "1h"), ("interval", "1h")]
    assert notices(s)[2] == ("Task request refused: group family has 2 tasks, the most [tasks] max_per_group "
                             "allows; cancel one first")
    # more often than min_interval: an interval, a cron expression, or an update to one
    ask_task(s, job, "schedule", prompt="tick", schedule_type="interval", schedule_value="5m")
    ask_task(s, job, "schedule", prompt="tick", schedule_type="cron", schedule_value="*/5 * * * *")
    ask_task(s, job, "schedule", prompt="tock", schedule_type="cron", schedule_value="0,1 9 * * *")
    s.wait_for(lambda: len(notices(s)) == 6, 10, what="three more answers")
    assert notices(s)[3:] == [
        "Task request refused: interval 5m would run as often as every 5m; [tasks] min_interval is 10m",
        "Task request refused: cron */5 * * * * would run as often as every 5m; [tasks] min_interval is 10m",
        "Task request refused: cron 0,1 9 * * * would run as often as every 1m; [tasks] min_interval is 10m"]
    first = s.db().execute("select min(id) from task").fetchone()[0]
    ask_task(s, job, "update", id=first, schedule_type="interval", schedule_value="1m")
    s.wait_for(lambda: len(notices(s)) == 7, 10, what="the update's answer")
    assert "would run as often as every 1m" in notices(s)[6] and tasks(s, "family")[0] == ("interval", "1h")
    assert tasks(s, "main") == []
    # the CLI: the same limits, with the reason and the way past them (the owner set them)
    full = s.cli("tasks", "add", "family", "--every", "2h", "x", check=False)
    assert full.returncode == 2 and full.stderr.strip() == (
        "nanoclaw: group family has 2 tasks, the most [tasks] max_per_group allows; cancel one first "
        "(--over-limits to go beyond it)")
    often = s.cli("tasks", "add", "main", "--cron", "* * * * *", "x", check=False)
    assert often.returncode == 2 and "would run as often as every 1m" in often.stderr
    assert "updated" in s.cli("tasks", "update", str(first), "--every", "1m", "--over-limits").stdout
    s.cli("tasks", "add", "family", "--every", "2h", "--over-limits", "x")
    assert tasks(s, "family") == [("interval", "1m"), ("interval", "1h"), ("interval", "2h")]


def test_a_cron_value_with_a_newline_is_refused_everywhere(make_system):
    s = make_system()
    s.cli("groups", "add", "main", "--main")
    s.start("ipc")
    bad = s.cli("tasks", "add", "main", "--cron", NEWLINE_CRON, "x", check=False)
    assert bad.returncode == 2 and "a schedule is one line" in bad.stderr
    s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "x")
    assert s.cli("tasks", "update", "1", "--cron", NEWLINE_CRON, check=False).returncode == 2
    job = running_job(s, "main")
    ask_task(s, job, "schedule", prompt="x", schedule_type="cron", schedule_value=NEWLINE_CRON)
    ask_task(s, job, "update", id=1, schedule_type="cron", schedule_value="0 9 * * *\n")
    ask_task(s, job, "schedule", prompt="x", schedule_type="cron", schedule_value="0\t9 * * *")
    s.wait_for(lambda: len(notices(s)) == 3, 10, what="three answers")
    assert all(n.startswith("Task request refused: a schedule is one line") for n in notices(s)[:2]), notices(s)
    assert "5 fields separated by spaces" in notices(s)[2]
    assert tasks(s, "main") == [("cron", "0 9 * * *")]


def test_a_bad_schedule_stored_earlier_leaves_the_other_tasks_timers_alone(make_system):
    """A value an older nanoclaw stored (python-crontab raised on it at every pass, so no task
    was added or removed again): the scheduler skips that one task and says so once."""
    s = make_system()
    s.cli("groups", "add", "main", "--main")
    s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "good")
    with s.db() as con:
        con.execute("insert into task (group_id, chat, prompt, schedule_type, schedule_value, timezone, "
                    "context_mode, status, last_result, created_at, created_by, precheck) "
                    "select id, jid, 'bad', 'cron', ?, 'UTC', 'group', 'active', '', ?, 'cli', '' "
                    "from \"group\" where folder='main'", (NEWLINE_CRON, time.time()))
    s.cli("tasks", "add", "main", "--cron", "30 9 * * *", "good too")
    s.start("scheduler")
    crontab = s.base / "crontab"
    s.wait_for(lambda: crontab.exists() and "nanoclaw-task-3" in crontab.read_text(), 10, what="the crontab")
    assert "nanoclaw-task-1" in crontab.read_text() and "nanoclaw-task-2" not in crontab.read_text()
    s.nudge("scheduler")
    s.cli("tasks", "cancel", "1")  # a change after it is still carried out
    s.wait_for(lambda: "nanoclaw-task-1" not in crontab.read_text(), 10, what="the cancelled task's line gone")
    told = [e for e in s.journal.of("scheduler") if "task 2 has no crontab line" in e["MESSAGE"]]
    assert len(told) == 1 and told[0]["PRIORITY"] == "3", told


def test_names_are_whole_names(tmp_path):
    """FOLDER_RE, member names, mount names, spool file names and the timer sync's checks match
    the whole text: `$` alone would let a trailing newline through."""
    from nanoclaw.admin.timer_sync import SpecError, timer_unit
    from nanoclaw.core import groups, mounts, team
    from nanoclaw.core.protocol import Spool as SpoolClass
    with pytest.raises(groups.GroupError):
        groups.validate_folder("family\n")
    with pytest.raises(team.TeamError):
        team.validate_name("helper\n")
    with pytest.raises(mounts.MountError):
        mounts.validate_name("site\n")
    unit = timer_unit({"id": 1, "kind": "cron", "group": "family\n", "oncalendar": ["*-*-* 09:00:00 UTC"]})
    assert "Description=nanoclaw task 1 (cron)\n" in unit  # the bad name is left out, not a line of its own
    with pytest.raises(SpecError):
        timer_unit({"id": 1, "kind": "cron", "group": "family", "oncalendar": ["*-*-* 09:00:00 UTC\n"]})
    spool = SpoolClass(tmp_path / "spool").ensure()
    (spool.new / "0001.a\n").write_text("{}")
    assert spool.claim_new() == []


def test_ipc_refuses_a_folder_or_member_name_with_a_newline(make_system):
    s = make_system()
    s.cli("groups", "add", "main", "--main")
    s.start("ipc")
    job = running_job(s, "main")
    out = Spool(s.state / "ipc" / "main" / "out").ensure()
    out.put("register_group", {"job": job, "jid": "evil@g.us", "name": "Evil", "folder": "evil\n", "trigger": ""})
    out.put("create_agent", {"job": job, "name": "helper\n", "description": "x", "instructions": "y"})
    s.nudge("ipc")
    bad = s.state / "spool" / "ipc" / "main" / "bad"
    s.wait_for(lambda: len(list(bad.glob("*.reason"))) == 2, 10, what="both refused")
    with s.db() as con:
        assert [r[0] for r in con.execute('select folder from "group"')] == ["main"]
    made = list((s.state / "groups").rglob("*"))
    assert not any("\n" in p.name for p in made), made  # no folder, no member file
    reasons = " ".join(p.read_text() for p in bad.glob("*.reason"))
    assert "invalid folder name 'evil\\n'" in reasons and "invalid member name 'helper\\n'" in reasons
