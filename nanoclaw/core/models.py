"""Every table nanoclaw keeps, in one place.

The database is SQLite in WAL mode with ``synchronous=FULL``: each daemon
opens it itself, and a commit is on disk before anything is acknowledged.
Row ids that order work (messages, jobs, outbox) use AUTOINCREMENT so they are
strictly monotonic even after deletes: the per-group cursor relies on it.
"""

from __future__ import annotations

import time
from pathlib import Path

from peewee import (
    SQL,
    BooleanField,
    CharField,
    CompositeKey,
    FloatField,
    ForeignKeyField,
    IntegerField,
    Model,
    OperationalError,
    SqliteDatabase,
    TextField,
)
from playhouse.sqlite_ext import AutoIncrementField


class Database(SqliteDatabase):
    """SQLite that reports why a commit failed.

    On some errors (SQLITE_FULL, SQLITE_IOERR) SQLite ends the transaction by
    itself; peewee's rollback would then raise "no transaction is active" and
    hide the real cause ("database or disk is full") from everyone above.
    """

    def rollback(self) -> None:
        try:
            super().rollback()
        except OperationalError as exc:
            if "no transaction is active" not in str(exc):
                raise


db = Database(None)


def now() -> float:
    return time.time()


class Base(Model):
    class Meta:
        database = db


class Group(Base):
    """A registered chat: its agent, its folder and when it may be woken."""

    jid = CharField(unique=True)
    name = CharField()
    folder = CharField(unique=True)
    trigger = CharField(default="@Andy")
    requires_trigger = BooleanField(default=True)
    is_main = BooleanField(default=False)
    added_at = FloatField(default=now)
    # Who may wake its agent: "open", "allowlist" or "ask" (see core/groups.py policy_of).
    # None, as every group older than the setting has: "allowlist" if it has an allowlist
    # file, else "open" (what the file alone meant before).
    policy = CharField(null=True)
    # The group's agent model (None or "" = the configured default); a team member's own model
    # wins. Nullable: SQLite adds a NOT NULL column by rebuilding the table, and dropping the
    # old "group" table would cascade to every row that references it.
    model = CharField(null=True)


class Mount(Base):
    """One of the owner's folders in a group's containers (only the CLI writes these)."""

    group = ForeignKeyField(Group, on_delete="CASCADE", index=True)
    name = CharField()  # at /workspace/extra/<name>
    host_path = CharField()  # as the owner gave it; resolved and checked again at every start
    rw = BooleanField(default=False)
    added_at = FloatField(default=now)
    # A read-write mount's git configuration, hooks and commondir are read-only to the agent
    # (daemons/runner/binds.py) unless the owner allowed this (``--allow-git-config``).
    allow_git_config = BooleanField(default=False, constraints=[SQL("DEFAULT 0")])

    class Meta:
        indexes = ((("group", "name"), True),)


class Message(Base):
    """One chat message, inbound or sent by us (``is_bot``)."""

    id = AutoIncrementField()
    chat = CharField(index=True)
    sender = CharField()
    sender_name = CharField(default="")
    text = TextField()
    timestamp = FloatField()  # seconds since the epoch, as the channel reported it
    channel_id = CharField()  # the channel's own message id
    from_me = BooleanField(default=False)
    is_bot = BooleanField(default=False)
    outbox_id = IntegerField(null=True, index=True)  # for what we sent: the outbox row it came from
    # Within a team, not the chat's: a delegation (for member ``agent``) or a member's answer (for
    # the agent that asked, "" = the lead), with the human message that started the chain and
    # how many delegations deep it is; ``answers`` is the delegation a result answers.
    agent = CharField(null=True)
    chain = IntegerField(null=True, index=True)
    depth = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    answers = IntegerField(null=True, index=True)
    media = TextField(null=True)  # JSON: an attachment (kind, type, size, file in the group folder, note)

    class Meta:
        indexes = ((("chat", "channel_id"), True),)


# A group's lead agent is agent "" (the empty name); the members of its team have their names.
AGENT_DEFAULT = [SQL("DEFAULT ''")]


class Cursor(Base):
    """Per group and agent: the last message for it whose run finished with its reply in the outbox."""

    group = ForeignKeyField(Group, on_delete="CASCADE")
    agent = CharField(default="", constraints=AGENT_DEFAULT)
    last_message_id = IntegerField(default=0)
    failures = IntegerField(default=0)  # consecutive failed runs
    retry_at = FloatField(default=0.0)  # no new run before this time (backoff)

    class Meta:
        primary_key = CompositeKey("group", "agent")


class Session(Base):
    """The agent session a group's lead (or a member of its team) continues."""

    group = ForeignKeyField(Group, on_delete="CASCADE")
    agent = CharField(default="", constraints=AGENT_DEFAULT)
    session_id = CharField()
    updated_at = FloatField(default=now)

    class Meta:
        primary_key = CompositeKey("group", "agent")


class Job(Base):
    """One agent container's life for one group's agent: a first turn and any follow-ups."""

    id = AutoIncrementField()
    group = ForeignKeyField(Group, on_delete="CASCADE", index=True)
    agent = CharField(default="", constraints=AGENT_DEFAULT)  # "" = the group's lead
    status = CharField(default="queued", index=True)  # queued, running, done, failed, stopped (by run-all)
    created_at = FloatField(default=now)
    started_at = FloatField(null=True)
    finished_at = FloatField(null=True)
    container = CharField(default="")
    exit_code = IntegerField(null=True)
    error = TextField(default="")
    closing = BooleanField(default=False)  # asked to close to free its slot
    task_run = IntegerField(null=True)  # set when the job runs a scheduled task
    # The model its container was given ("" = the CLI's default), as core/model_choice.py chose
    model = CharField(default="", constraints=[SQL("DEFAULT ''")])


class Turn(Base):
    """One prompt handed to a job's agent, covering messages up to ``last_message_id``."""

    job = ForeignKeyField(Job, backref="turns", on_delete="CASCADE")
    seq = IntegerField()
    first_message_id = IntegerField()
    last_message_id = IntegerField()
    status = CharField(default="sent")  # sent, done
    sent_at = FloatField(default=now)
    done_at = FloatField(null=True)
    stopped_at = FloatField(null=True)  # the owner stopped it (daemons/queue/stopped.py): it ends without an answer

    class Meta:
        indexes = ((("job", "seq"), True),)


class Outbox(Base):
    """A message waiting to be sent; ``key`` makes re-delivery idempotent."""

    id = AutoIncrementField()
    key = CharField(unique=True)
    chat = CharField(index=True)
    text = TextField()
    kind = CharField(default="reply")  # reply, message, notice, task
    # the name it goes out under ("" = the assistant's); a SQL default too, for rows older code writes
    sender = CharField(default="", constraints=[SQL("DEFAULT ''")])
    reply_to = IntegerField(null=True)  # the message row a reply answers (to quote it)
    status = CharField(default="pending", index=True)  # pending, sent, failed
    attempts = IntegerField(default=0)
    next_attempt_at = FloatField(default=0.0)
    created_at = FloatField(default=now)
    sent_at = FloatField(null=True)
    channel_id = CharField(default="")
    error = TextField(default="")


class Task(Base):
    """A scheduled prompt. Each active task is one systemd timer (or crontab line)."""

    id = AutoIncrementField()
    group = ForeignKeyField(Group, on_delete="CASCADE", index=True)  # whose agent runs it
    chat = CharField()  # where its output goes
    prompt = TextField()
    schedule_type = CharField()  # cron, interval, once
    schedule_value = CharField()
    timezone = CharField()
    context_mode = CharField(default="group")  # group: the group's session; isolated: a fresh one
    status = CharField(default="active", index=True)  # active, paused, completed, cancelled
    next_run = FloatField(null=True)
    last_run = FloatField(null=True)
    last_result = TextField(default="")
    created_at = FloatField(default=now)
    created_by = CharField(default="")  # "cli" or the requesting group's folder
    # A shell command run before each run in a confined container (no agent, no network): the
    # run goes on only if it exits 0 and prints something, which the agent is then shown.
    precheck = TextField(default="", constraints=[SQL("DEFAULT ''")])
    # Its own model ("" = none: the group's, then [models] tasks, then [models] default)
    model = CharField(default="", constraints=[SQL("DEFAULT ''")])


class TaskRun(Base):
    """One firing of a task, from its timer to its result."""

    id = AutoIncrementField()
    task = ForeignKeyField(Task, backref="runs", on_delete="CASCADE")
    fire_key = CharField(unique=True)  # the spool file that fired it: a re-read adds no second run
    due_at = FloatField(null=True)
    fired_at = FloatField()
    started_at = FloatField(null=True)
    finished_at = FloatField(null=True)
    # queued, running, success, error; skipped: its pre-check said no (the reason in result)
    status = CharField(default="queued", index=True)
    attempts = IntegerField(default=0)
    retry_at = FloatField(default=0.0)
    result = TextField(default="")
    error = TextField(default="")
    model = CharField(default="", constraints=[SQL("DEFAULT ''")])  # the model its agent ran on


class Request(Base):
    """A chat (kind "chat") or a sender in an ``ask`` group (kind "sender") asking for the
    assistant, or the main agent asking for a budget change (kind "budget"); only the owner
    decides (core/approvals.py). Names are as the network gave them, cleaned: they are shown
    to the owner."""

    id = AutoIncrementField()  # the N in "approve N": never reused
    kind = CharField()  # chat, sender
    chat = CharField(index=True)
    sender = CharField(default="")  # for kind "sender": who asks; for "chat": who sent the message
    chat_name = CharField(default="")
    sender_name = CharField(default="")
    members = IntegerField(null=True)  # a group chat's size, where the network said
    message = IntegerField()  # the message row that asked: replayed on approval
    status = CharField(default="pending", index=True)  # pending, approved, denied, expired
    created_at = FloatField(default=now)
    expires_at = FloatField()
    decided_at = FloatField(null=True)
    decided_by = CharField(default="")  # cli, main (the owner's chat), expiry
    folder = CharField(default="")  # the group it was approved into (or is for, kind "sender"; "budget": the scope)
    # kind "budget" (an agent's raise_budget, core/budget_requests.py): the change asked for, as JSON
    detail = TextField(default="", constraints=[SQL("DEFAULT ''")])


class AllowedSender(Base):
    """A sender the owner approved in an ``ask`` group: admitted beside the group's allowlist
    file. Kept here, not in that file, because the owner may approve from the main chat, and
    the daemon that carries it out cannot write the configuration directory (nor can any agent
    reach this database)."""

    group = ForeignKeyField(Group, on_delete="CASCADE", index=True)
    sender = CharField()
    request = IntegerField(null=True)  # the request that was approved
    added_at = FloatField(default=now)

    class Meta:
        indexes = ((("group", "sender"), True),)



class Usage(Base):
    """One API call's tokens as the answer reported them, recorded by the proxy.

    ``group`` is a folder name, not a foreign key: what was spent stays counted after a group
    is removed. ``day`` is the owner's local date, so budgets and reports follow the owner's
    midnight, not UTC's.
    """

    id = AutoIncrementField()
    at = FloatField(default=now)
    day = CharField(index=True)  # YYYY-MM-DD in the configured timezone
    group = CharField()
    agent = CharField(default="")  # "" = the group's lead
    job = IntegerField(null=True)  # the running job of that agent, when there was one
    model = CharField(default="")
    input_tokens = IntegerField(default=0)
    output_tokens = IntegerField(default=0)
    cache_write_tokens = IntegerField(default=0)
    cache_read_tokens = IntegerField(default=0)
    web_search_requests = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])  # server-side tool use, priced per request
    web_fetch_requests = IntegerField(default=0, constraints=[SQL("DEFAULT 0")])
    cost_usd = FloatField(null=True)  # None: no price known for the model
    streamed = BooleanField(default=False)

    class Meta:
        indexes = ((("group", "day"), False),)


class BudgetLimit(Base):
    """The owner's budget overrides (CLI or the main chat), over the configured ones.

    ``scope`` is a group's folder or ``*`` (all groups together); ``limit`` 0 removes that
    budget even where the configuration sets one.
    """

    scope = CharField()
    period = CharField()  # day, month
    unit = CharField()  # usd, tokens
    limit = FloatField()
    set_by = CharField(default="cli")  # cli, or the main group's folder
    set_at = FloatField(default=now)

    class Meta:
        primary_key = CompositeKey("scope", "period", "unit")


class BudgetRaise(Base):
    """The owner's raise of a budget for today only (``nanoclaw budget raise ... --today``):
    ``limit`` is in force, over any override or configuration, until ``until`` (the owner's
    next midnight), then lapses by itself; the row is history after that."""

    scope = CharField()
    period = CharField()  # day, month
    unit = CharField()  # usd, tokens
    limit = FloatField()
    until = FloatField()
    set_by = CharField(default="cli")
    set_at = FloatField(default=now)

    class Meta:
        primary_key = CompositeKey("scope", "period", "unit")


class EgressBytes(Base):
    """The web bytes (in and out together) each agent moved through egress on one of the
    owner's days: the group's daily cap is counted from these, so neither a new container nor
    a restart of egress gives an allowance back. ``group`` is a folder name, as in Usage."""

    group = CharField()
    agent = CharField(default="")  # "" = the group's lead
    day = CharField()  # YYYY-MM-DD in the configured timezone
    bytes = IntegerField(default=0)

    class Meta:
        primary_key = CompositeKey("group", "agent", "day")


MODELS = [Group, Mount, Message, Cursor, Session, Job, Turn, Outbox, Task, TaskRun, Request, AllowedSender,
          Usage, BudgetLimit, BudgetRaise, EgressBytes]


def open_db(path: Path) -> SqliteDatabase:
    """Open (creating if needed) the database at ``path`` for this process.

    A new database is made at the latest schema version; one at another version is refused
    with ``migrations.SchemaError`` (one line saying what to run): schema changes are
    ``core/migrations.py``'s steps, run by ``nanoclaw migrate``, never here.
    """
    from nanoclaw.core import migrations

    path.parent.mkdir(parents=True, exist_ok=True)
    if not db.is_closed():
        db.close()
    db.init(str(path), pragmas={
        "journal_mode": "wal",
        "synchronous": "full",  # a commit survives power loss before we acknowledge it
        "foreign_keys": 1,
        "busy_timeout": 10000,  # the daemons and the CLI share the file
    })
    db.connect(reuse_if_open=True)
    try:
        migrations.prepare(db.connection(), path)
    except BaseException:
        db.close()
        raise
    return db
