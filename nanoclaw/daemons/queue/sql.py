"""sql: the few statements every queue pass runs, as plain SQL.

SYNOPSIS
    scalar(SQL, *params) -> value or None;  column(SQL, *params) -> set
    Model.raw(SQL, *params) for rows as models (Group, Job, Message, Cursor)

DESCRIPTION
    A pass runs the same dozen statements for every stored message. Built by peewee
    they cost more in Python (building the SQL text each time) than in SQLite; as
    constant text, sqlite3's statement cache also keeps them prepared. Only these
    per-pass reads are written out here; everything else stays peewee. Each string
    names the tables and columns of ``core/models.py``; the queue's tests run
    every pass through them.
"""

from __future__ import annotations

from typing import Any

from nanoclaw.core.models import db

NEWEST_MESSAGE = "SELECT MAX(id) FROM message"
NEWEST_IN_CHAT = "SELECT MAX(id) FROM message WHERE chat = ?"
CHATS_SINCE = "SELECT DISTINCT chat FROM message WHERE id > ?"
GROUPS_WITH_QUEUED_RUNS = ("SELECT DISTINCT t.group_id FROM taskrun r JOIN task t ON t.id = r.task_id "
                           "WHERE r.status = 'queued'")
NEWEST_ALLOWED_SENDER = "SELECT MAX(id) FROM allowedsender"
NEWEST_REQUEST = "SELECT MAX(id) FROM request"
GROUPS = 'SELECT * FROM "group"'
# Every live job, with how many of its turns are unanswered and the last message its turns cover.
LIVE_JOBS = ("SELECT j.*, (SELECT COUNT(t.id) FROM turn t WHERE t.job_id = j.id AND t.status != 'done') "
             "AS open_turns, (SELECT MAX(t.last_message_id) FROM turn t WHERE t.job_id = j.id) AS last_turn "
             "FROM job j WHERE j.status IN ('queued', 'running')")
STALE_JOBS = "SELECT * FROM job WHERE status = ? AND {column} < ?"
CURSORS = "SELECT * FROM cursor WHERE group_id = ?"
AGENTS_WAITING = "SELECT DISTINCT agent FROM message WHERE chat = ? AND agent IS NOT NULL AND id > ?"
PENDING = "SELECT * FROM message WHERE chat = ? AND id > ? AND is_bot = 0 ORDER BY id"
LAST_TURN = "SELECT MAX(seq) FROM turn WHERE job_id = ?"


def scalar(sql: str, *params: Any) -> Any:
    row = db.execute_sql(sql, params).fetchone()
    return row[0] if row else None


def column(sql: str, *params: Any) -> set:
    return {row[0] for row in db.execute_sql(sql, params).fetchall()}
