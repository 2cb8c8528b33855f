"""The queue daemon (daemons/queue/), in process against real SQLite and spools: its cursor (a row
id, held on a failure, moved once the reply is queued), forged turn results, the concurrency cap,
task runs and a timer's fire, a trigger after a long backlog."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Cursor, Group, Job, Message, Session, Turn


@pytest.fixture
def cfg(make_cfg):
    return make_cfg("backoff_base = 10.0\n")  # the backoff test measures this delay


@pytest.fixture
def queue(cfg):
    from nanoclaw.daemons.queue import QueueDaemon
    groups_mod.add_group(cfg, "main", is_main=True)
    q = QueueDaemon(cfg)
    q.setup()
    return q


def add_msg(text, ts, chat="main@term"):
    return Message.create(chat=chat, sender="owner@term", text=text, timestamp=ts,
                          channel_id=os.urandom(6).hex())


def jobs_in(spool_dir: Path):
    return [json.loads(p.read_text())["body"] for p in sorted((spool_dir / "new").iterdir())]


def finish_turn(q, job, turn, text="ok", session="s1"):
    q.inbox.put("turn_result", {"group": "main", "job": job, "turn": turn, "text": text,
                                "session_id": session, "error": None})
    q.inbox.put("job_event", {"job": job, "event": "exited", "exit_code": 0})


def test_cursor_is_a_row_id_and_same_second_messages_are_not_skipped(queue, cfg):
    ts = 1_700_000_000.0
    m1 = add_msg("first", ts)
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    assert "first" in job["prompt"]
    assert Cursor.get().last_message_id == 0  # handed over, not yet answered
    queue.inbox.put("job_event", {"job": job["job"], "event": "started"})
    m2 = add_msg("second, same second", ts)  # arrives while the agent works
    finish_turn(queue, job["job"], 0)
    queue.work()
    assert Cursor.get().last_message_id == m1.id  # only what the answered turn covered
    assert Session.get().session_id == "s1"
    jobs = jobs_in(cfg.spool_dir / "runner")
    assert len(jobs) == 2 and "second, same second" in jobs[1]["prompt"] and "first" not in jobs[1]["prompt"]
    assert jobs[1]["session_id"] == "s1"  # the next run resumes the session
    finish_turn(queue, jobs[1]["job"], 0)
    queue.work()
    assert Cursor.get().last_message_id == m2.id


def test_cursor_holds_on_failure_and_backoff_delays_the_retry(queue, cfg):
    m = add_msg("hello", time.time())
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    queue.inbox.put("job_event", {"job": job["job"], "event": "exited", "exit_code": 3})
    delay = queue.work()
    cur = Cursor.get()
    assert cur.last_message_id == 0 and cur.failures == 1
    assert 9 < cur.retry_at - time.time() <= 10  # backoff_base 10 s
    assert 9 < delay <= 10
    assert len(jobs_in(cfg.spool_dir / "runner")) == 1  # no retry before it is due
    Cursor.update(retry_at=0).execute()
    queue.work()
    assert len(jobs_in(cfg.spool_dir / "runner")) == 2
    assert Turn.select().count() == 1 and Job.get_by_id(1).status == "failed"
    assert m.id > 0


def test_reply_is_queued_for_the_router_before_the_cursor_moves(queue, cfg):
    asked = add_msg("hello", time.time())
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    finish_turn(queue, job["job"], 0, text="the answer")
    queue.work()
    [out] = jobs_in(cfg.spool_dir / "router")
    assert out == {"key": f"job:{job['job']}:turn:0", "chat": "main@term", "text": "the answer", "kind": "reply",
                   "reply_to": asked.id}
    # the same result again (a crash before the file was deleted) changes nothing
    queue.inbox.put("turn_result", {"group": "main", "job": job["job"], "turn": 0, "text": "the answer",
                                    "session_id": None, "error": None})
    queue.work()
    assert len(jobs_in(cfg.spool_dir / "router")) == 1


def test_forged_turn_result_for_another_groups_job_is_refused(queue, cfg):
    groups_mod.add_group(cfg, "other")
    add_msg("hello", time.time())
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    queue.inbox.put("turn_result", {"group": "other", "job": job["job"], "turn": 0, "text": "forged",
                                    "session_id": None, "error": None})
    queue.work()
    assert Cursor.get(Cursor.group == Group.get(Group.folder == "main")).last_message_id == 0
    reasons = [p.read_text() for p in queue.inbox.bad.glob("*.reason")]
    assert any("does not belong to group 'other'" in r for r in reasons)


def test_global_concurrency_cap(cfg, queue):
    for name in ("g1", "g2", "g3", "g4"):
        groups_mod.add_group(cfg, name, requires_trigger=False)
        add_msg("hi", time.time(), chat=f"{name}@term")
    queue.work()
    assert len(jobs_in(cfg.spool_dir / "runner")) == cfg.max_concurrent == 3


def test_a_crash_while_settling_a_failed_task_run_leaves_nothing_half_done(queue, cfg, monkeypatch):
    """The defect: _task_finished saved the job, then the run, outside a transaction: a crash
    between them left the run 'running' for good (the job, already settled, was never re-read)."""
    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.models import Task, TaskRun
    task = tasks_mod.create(cfg, Group.get(Group.folder == "main"), "check", "interval", "1h")
    tasks_mod.fire(cfg, task.id)
    queue.work()  # the fire becomes a run and the run a job
    [job] = jobs_in(cfg.spool_dir / "runner")
    queue.inbox.put("job_event", {"job": job["job"], "event": "exited", "exit_code": 3})
    real_save = TaskRun.save

    def crash(self, *a, **kw):  # the process dies between the job's write and the run's
        raise RuntimeError("killed mid-write")
    monkeypatch.setattr(TaskRun, "save", crash)
    queue.work()  # the event fails and is set aside as bad; in a real crash it stays in cur/
    monkeypatch.setattr(TaskRun, "save", real_save)
    assert Job.get_by_id(job["job"]).status in ("queued", "running")  # rolled back with the run
    queue.inbox.put("job_event", {"job": job["job"], "event": "exited", "exit_code": 3})
    queue.work()  # the event again, as a restarted queue would process it
    run = TaskRun.get()
    assert run.status == "queued" and run.retry_at > 0 and Job.get_by_id(job["job"]).status == "failed"
    assert Task.get_by_id(task.id).status == "active"


def test_a_timers_light_fire_becomes_one_run_and_moves_the_task_on_once(queue, cfg):
    """`nanoclaw tasks fire ID` from a timer writes only a spool file (no database): the queue
    sets the run's due time and the task's next one, once, however often it reads the file."""
    from nanoclaw.admin import fire
    from nanoclaw.core import tasks as tasks_mod
    from nanoclaw.core.models import Task, TaskRun
    task = tasks_mod.create(cfg, Group.get(Group.folder == "main"), "check", "interval", "1h")
    due = Task.get_by_id(task.id).next_run
    fire.fire(cfg, task.id, now=due + 0.05)
    [pending] = list((cfg.spool_dir / "queue" / "new").iterdir())
    saved = pending.read_bytes()
    # The firing's process start rides along (the timer's share of lateness, for the log):
    # this process's, as ps counts it from its own side.
    import json
    import os
    import subprocess
    import time
    elapsed = int(subprocess.run(["ps", "-o", "etimes=", "-p", str(os.getpid())], capture_output=True,
                                 text=True, check=True).stdout)
    body = json.loads(saved)["body"]
    assert abs(body["started_at"] - (time.time() - elapsed)) < 2.5 and body["started_at"] <= body["python_at"]
    queue.work()
    run = TaskRun.get()
    assert run.due_at == due and abs(run.fired_at - (due + 0.05)) < 1e-6
    moved_on = Task.get_by_id(task.id).next_run
    assert abs(moved_on - (due + 0.05 + 3600)) < 1e-3  # an interval counts from the firing
    (cfg.spool_dir / "queue" / "new" / pending.name).write_bytes(saved)  # the same file again
    queue.work()
    assert TaskRun.select().count() == 1 and Task.get_by_id(task.id).next_run == moved_on
    fire.fire(cfg, 999)  # no such task: the queue ignores it, nothing is created
    queue.work()
    assert TaskRun.select().count() == 1


def test_a_due_task_runs_in_a_group_whose_chatter_waits_for_the_trigger(queue, cfg):
    """The defect: messages without the trigger wait as context, and while any did, the queue
    never looked at the group's tasks: a busy family chat held its morning summary back
    until someone wrote "@Andy"."""
    from nanoclaw.core import tasks as tasks_mod
    groups_mod.add_group(cfg, "family", jid="family@term")
    family = Group.get(Group.folder == "family")
    add_msg("what time is dinner?", time.time(), chat="family@term")
    queue.work()
    assert jobs_in(cfg.spool_dir / "runner") == []  # chatter alone wakes nobody
    task = tasks_mod.create(cfg, family, "summarise the day", "interval", "1h")
    tasks_mod.fire(cfg, task.id)
    add_msg("seven, I think", time.time(), chat="family@term")  # and the chatter goes on
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    assert job["group"] == "family" and "summarise the day" in job["prompt"]


def test_a_trigger_after_a_long_untriggered_backlog_still_wakes_the_agent_with_its_context(queue, cfg):
    """The queue remembers where it found nothing for anyone and reads only newer messages:
    the trigger must still be seen, and the prompt must still carry the context before it."""
    groups_mod.add_group(cfg, "family", jid="family@term")
    for i in range(30):
        add_msg(f"chatter {i}", time.time(), chat="family@term")
        queue.work()
    assert jobs_in(cfg.spool_dir / "runner") == []
    add_msg("@Andy what did we decide?", time.time(), chat="family@term")
    queue.work()
    [job] = jobs_in(cfg.spool_dir / "runner")
    assert "what did we decide?" in job["prompt"] and "chatter 29" in job["prompt"]
