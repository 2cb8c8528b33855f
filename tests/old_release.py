"""The previous release's own code (the ``previous_release`` fixture, taken out of this clone's
history) run on a database: it fills one as that release did, or reads one back; and a database
as an earlier release left it, for the migration tests."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from system_harness import ROOT


def old_database(path: Path, more_sql: str = "") -> Path:
    """A database as an earlier nanoclaw left it: the "group" table before teams and models,
    with the main group, plus ``more_sql`` (older tables, rows): for the migration tests."""
    import sqlite3
    con = sqlite3.connect(path)
    con.executescript("""
        create table "group" (id integer primary key, jid varchar unique, name varchar, folder varchar unique,
            trigger varchar, requires_trigger integer, is_main integer, added_at real);
        insert into "group" values (1, 'main@term', 'main', 'main', '@Andy', 0, 1, 0);
    """ + more_sql)
    con.close()
    return path


# The release an upgrade starts from (issue 25): the main this round began from. Its code
# comes out of this clone's own history; CI's clone has it.
PREVIOUS_RELEASE = "c7472f1"


def need_commit(commit: str) -> None:
    """Skip a test that needs ``commit`` where this clone lacks it, except in CI (a shallow
    clone there would pass the upgrade tests without running them)."""
    known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{commit}^{{commit}}"],
                           capture_output=True).returncode == 0
    if not known:
        reason = f"commit {commit} is not in this clone's history (a shallow clone?)"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


def release_tree(commit: str, dest: Path) -> Path:
    """The ``nanoclaw`` package as ``commit`` had it, under ``dest`` (for PYTHONPATH)."""
    import io
    import tarfile
    need_commit(commit)
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", commit, "nanoclaw"],
                          capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(dest, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    return dest


# What the previous release's code does to a database: its models, its rows.
USE_THE_OLD_RELEASE = """
import json, sys, time
from pathlib import Path
import nanoclaw
from nanoclaw.core.models import *
assert nanoclaw.__file__.startswith(sys.argv[2]), nanoclaw.__file__  # the old code, not this checkout's
open_db(Path(sys.argv[1]))
if sys.argv[3] == "fill":
    main = Group.create(jid="main@term", name="main", folder="main", is_main=True, requires_trigger=False)
    fam = Group.create(jid="fam@term", name="Family", folder="family", policy="ask", model="claude-haiku-4-5")
    m1 = Message.create(chat="main@term", sender="owner@term", text="hello", timestamp=1.0, channel_id="a")
    Message.create(chat="main@term", sender="andy", text="echo: hello", timestamp=2.0, channel_id="b", is_bot=True)
    Cursor.create(group=main, last_message_id=m1.id)
    Cursor.create(group=fam, agent="researcher", last_message_id=0)
    Session.create(group=main, session_id="sess-1")
    job = Job.create(group=main, status="done", container="nanoclaw-main-1")
    Turn.create(job=job, seq=1, first_message_id=m1.id, last_message_id=m1.id, status="done")
    Outbox.create(key="job:1:turn:1", chat="main@term", text="echo: hello", status="sent")
    task = Task.create(group=main, chat="main@term", prompt="brief", schedule_type="cron",
                       schedule_value="0 9 * * *", timezone="UTC", precheck="true")
    TaskRun.create(task=task, fire_key="fire-1", fired_at=3.0, status="success")
    AllowedSender.create(group=fam, sender="carol@s.whatsapp.net")
    Usage.create(day="2026-12-01", group="main", model="claude-sonnet-4-5", input_tokens=10, output_tokens=5,
                 cost_usd=0.0001)
    BudgetLimit.create(scope="family", period="day", unit="usd", limit=2.0)
print(json.dumps({"groups": [g.folder for g in Group.select().order_by(Group.id)],
                  "messages": [m.text for m in Message.select().order_by(Message.id)],
                  "tasks": [t.prompt for t in Task.select()], "usage": Usage.select().count()}))
"""


def old_code(release: Path, db: Path, what: str = "read") -> dict:
    """Run the previous release's code on ``db`` (``fill`` it, or ``read`` it back)."""
    env = {**os.environ, "PYTHONPATH": str(release)}
    r = subprocess.run([sys.executable, "-c", USE_THE_OLD_RELEASE, str(db), str(release), what], env=env,
                       cwd=release, capture_output=True, text=True, timeout=60)  # cwd: first on sys.path
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)
