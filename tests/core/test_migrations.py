"""The schema version and its migrations (core/migrations.py), against real SQLite databases
made by the previous release's own code (taken out of this clone's history), and older ones made
by hand: each gains its new columns and tables and keeps its rows."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from old_release import old_code, old_database
from system_harness import ROOT

from nanoclaw.core import migrations


def dump(path: Path, like: dict | None = None) -> dict:
    """Everything in a database: its schema text, its version and every row of every table
    (with ``like``, an earlier dump: only its tables and columns, so what later steps add is
    left out of the comparison and what was there is compared whole)."""
    con = sqlite3.connect(path)
    try:
        schema = sorted(r for r in con.execute("SELECT type, name, sql FROM sqlite_master"))
        tables = [name for (kind, name, _) in schema if kind == "table"]
        if like is not None:
            tables = [t for t in tables if t in like["columns"]]
        columns = {t: [c[1] for c in con.execute(f'PRAGMA table_info("{t}")')
                       if like is None or c[1] in like["columns"][t]] for t in tables}
        rows = {t: sorted(map(repr, con.execute(f'SELECT {", ".join(chr(34) + c + chr(34) for c in columns[t])} '
                                                f'FROM "{t}"'))) for t in tables}
        return {"schema": schema, "version": migrations.version(con), "rows": rows, "columns": columns}
    finally:
        con.close()


def shape(path: Path) -> dict:
    """Each table's columns and indexes, as SQLite reads them (order aside)."""
    con = sqlite3.connect(path)
    out = {}
    for (table,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"):
        columns = sorted(tuple(r[1:]) for r in con.execute(f'PRAGMA table_info("{table}")'))
        indexes = sorted((r[1], r[2], tuple(c[2] for c in con.execute(f'PRAGMA index_info("{r[1]}")')))
                         for r in con.execute(f'PRAGMA index_list("{table}")'))
        out[table] = (columns, indexes)
    con.close()
    return out


def test_a_new_database_made_by_the_steps_is_what_models_declares(tmp_path):
    """The steps and models.py agree: a column added to a model without a step (or a step
    without the model) fails here, naming the table."""
    from peewee import SqliteDatabase

    from nanoclaw.core.models import MODELS, db, open_db
    open_db(tmp_path / "steps.db")
    db.close()
    assert migrations.version_of(tmp_path / "steps.db") == migrations.LATEST >= 1
    declared = SqliteDatabase(str(tmp_path / "models.db"))
    with declared.bind_ctx(MODELS):
        declared.create_tables(MODELS)
    declared.close()
    made, wanted = shape(tmp_path / "steps.db"), shape(tmp_path / "models.db")
    assert sorted(made) == sorted(wanted)
    for table in wanted:
        assert made[table] == wanted[table], f"table {table}: the steps make {made[table]}, models.py declares " \
                                             f"{wanted[table]}: add a step to core/migrations.py"


def test_the_previous_releases_database_is_refused_until_migrated_then_keeps_every_row(tmp_path, previous_release):
    db_path = tmp_path / "nanoclaw.db"
    before = old_code(previous_release, db_path, "fill")
    assert before["groups"] == ["main", "family"] and migrations.version_of(db_path) == 0
    from nanoclaw.core.models import AllowedSender, BudgetLimit, Cursor, Group, Message, Task, Usage, db, open_db
    with pytest.raises(migrations.SchemaError) as refused:
        open_db(db_path)
    line = str(refused.value)
    assert "from before schema versions" in line and f"needs schema {migrations.LATEST}" in line
    assert "nanoclaw migrate" in line and "\n" not in line
    before_migration = dump(db_path)
    assert migrations.migrate(db_path) == (0, migrations.LATEST)
    assert dump(db_path, like=before_migration)["rows"] == before_migration["rows"]  # every row as it was
    open_db(db_path)
    assert [g.folder for g in Group.select().order_by(Group.id)] == ["main", "family"]
    assert Group.get(Group.folder == "family").model == "claude-haiku-4-5"
    assert [m.text for m in Message.select().order_by(Message.id)] == ["hello", "echo: hello"]
    assert {(c.group.folder, c.agent) for c in Cursor.select()} == {("main", ""), ("family", "researcher")}
    assert Task.get().precheck == "true" and Usage.get().input_tokens == 10
    assert AllowedSender.get().sender == "carol@s.whatsapp.net" and BudgetLimit.get().limit == 2.0
    db.close()
    assert migrations.migrate(db_path) == (migrations.LATEST, migrations.LATEST)  # once only
    assert old_code(previous_release, db_path) == before  # and the old release still reads it


def _failing_step(con: sqlite3.Connection) -> None:
    """a step made to fail half-way"""
    con.execute('ALTER TABLE "message" ADD COLUMN "pinned" INTEGER NOT NULL DEFAULT 0')
    con.execute('CREATE TABLE "message_new" AS SELECT * FROM "message"')
    con.execute('DROP TABLE "message"')  # with foreign keys off, nothing cascades; it is all undone below
    con.execute('DELETE FROM "group"')
    con.execute('INSERT INTO "nosuchtable" VALUES (1)')


def test_a_failed_step_leaves_the_old_database_as_it_was_and_the_old_release_reading_it(tmp_path, previous_release):
    db_path = tmp_path / "nanoclaw.db"
    before = old_code(previous_release, db_path, "fill")
    exact = dump(db_path)
    with pytest.raises(migrations.MigrationError) as failed:
        migrations.migrate(db_path, steps=(*migrations.STEPS, _failing_step))
    assert failed.value.version == migrations.LATEST + 1 and "nosuchtable" in str(failed.value)
    assert dump(db_path) == exact  # schema, version 0 and rows: step 1, which ran, is undone too
    assert old_code(previous_release, db_path) == before


def test_a_step_that_breaks_a_foreign_key_fails_and_changes_nothing(tmp_path):
    """A real failure: an unversioned database with a cursor row for a group that is gone
    (rows older code left with foreign keys off). Step 1 rebuilds the cursor table; the check
    before the commit finds the dangling row and the whole run is rolled back."""
    path = old_database(tmp_path / "old.db", """
        create table cursor (group_id integer primary key references "group"(id), last_message_id integer,
            failures integer, retry_at real);
        insert into cursor values (1, 5, 0, 0);
        insert into cursor values (99, 7, 0, 0);
    """)
    exact = dump(path)
    with pytest.raises(migrations.MigrationError, match=r'"cursor" row .* names a missing "group"'):
        migrations.migrate(path)
    assert dump(path) == exact
    columns = [r[1] for r in sqlite3.connect(path).execute('PRAGMA table_info("cursor")')]
    assert "agent" not in columns  # the rebuild keyed by (group, agent) is undone


def test_code_on_a_newer_database_refuses_with_one_line_naming_both_versions_and_the_backup(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    made = s.cli("backup").stdout
    backup = made.split("backed up to ")[1].split(" (")[0]
    newer = migrations.LATEST + 1
    con = sqlite3.connect(s.state / "nanoclaw.db")
    con.execute(f"PRAGMA user_version = {newer}")
    con.close()
    exact = dump(s.state / "nanoclaw.db")
    daemon = subprocess.run([sys.executable, "-m", "nanoclaw", "queue"], env=s.env, capture_output=True, text=True,
                            timeout=60)
    assert daemon.returncode == migrations.EX_SCHEMA  # 78: its unit's RestartPreventExitStatus=
    lines = [line for line in (daemon.stdout + daemon.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert f"at schema {newer}, newer than this nanoclaw" in lines[0] and f"(schema {migrations.LATEST})" in lines[0]
    assert f"sudo nanoclaw restore {backup}" in lines[0]
    s.wait_for(lambda: any("refusing to start: the database" in e["MESSAGE"] for e in s.journal.of("queue")), 10,
               what="the refusal in the journal")
    for command in (("groups", "list"), ("status",), ("migrate",)):
        r = s.cli(*command, check=False)
        assert r.returncode == migrations.EX_SCHEMA and f"at schema {newer}" in r.stderr, (command, r.stderr)
    assert dump(s.state / "nanoclaw.db") == exact  # nothing was touched
    assert not (s.run / "queue.sock").exists()


def test_migrate_refuses_while_the_old_release_runs_and_backs_up_first(offline_system, previous_release):
    """The upgrade's moment: the previous release's daemon runs on its database; the new code's
    `nanoclaw migrate` refuses until it is stopped, then makes a backup and migrates once."""
    s = offline_system
    old_code(previous_release, s.state / "nanoclaw.db", "fill")
    # The previous release's own configuration: without the keys it does not know yet (it
    # refuses an unknown key, as this release does).
    old_config = s.config_path.with_name("old-config.toml")
    old_config.write_text("".join(line for line in s.config_path.read_text().splitlines(keepends=True)
                                  if not line.startswith("paused_memory_mib")))
    old = subprocess.Popen([sys.executable, "-m", "nanoclaw", "router"], cwd=previous_release,
                           env={**s.env, "PYTHONPATH": str(previous_release), "NANOCLAW_CONFIG": str(old_config)},
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        s.wait_for(lambda: (s.run / "router.sock").exists(), 20, what="the old router's socket")
        r = s.cli("migrate", check=False)
        assert r.returncode == 2 and "refusing to migrate while nanoclaw runs (router)" in r.stderr
        assert "stop it first" in r.stderr
        assert migrations.version_of(s.state / "nanoclaw.db") == 0
    finally:
        old.terminate()
        old.wait(20)
    r = s.cli("migrate")
    assert f"schema 0 -> 1: {migrations.STEPS[0].__doc__.splitlines()[0]}" in r.stdout
    assert f"to {migrations.LATEST} in" in r.stdout
    saved = list((s.state / "backups").glob("*-schema0-pre-migrate.tar.gz"))
    assert len(saved) == 1 and str(saved[0]) in r.stdout
    assert "nothing to do" in s.cli("migrate").stdout


def test_version_names_the_commit_and_the_schema(offline_system):
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    out = offline_system.cli("--version").stdout
    assert out.startswith("nanoclaw 0.") and f"commit {head}" in out and f"schema {migrations.LATEST}" in out


def test_an_older_database_gains_the_usage_tables_and_keeps_every_groups_rows(tmp_path):
    """Group.model is added as a nullable column: SQLite makes a NOT NULL one by rebuilding
    the table, and dropping the old "group" table would cascade to its jobs, cursors and tasks."""
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import Group, Job, open_db
    path = old_database(tmp_path / "old.db", """
        create table job (id integer primary key autoincrement, group_id integer not null references "group"(id)
            on delete cascade, agent varchar not null default '', status varchar, created_at real, started_at real,
            finished_at real, container varchar, exit_code integer, error text, closing integer, task_run integer);
        insert into job (group_id, status, created_at, container, error, closing) values (1, 'done', 0, '', '', 0);
    """)
    from nanoclaw.core import migrations
    migrations.migrate(path)
    open_db(path)
    assert [(g.folder, g.model) for g in Group.select()] == [("main", None)]
    assert Job.select().count() == 1
    cfg = config_mod.Config()
    assert usage.spent(cfg, "main", "day").tokens == 0 and usage.limits(cfg, usage.ALL) == []


def test_older_database_gains_new_columns(tmp_path):
    import sqlite3

    from nanoclaw.core import models
    path = tmp_path / "old.db"
    models.open_db(path)
    models.db.close()
    con = sqlite3.connect(path)
    con.execute("alter table outbox drop column error")
    con.execute("pragma user_version = 0")  # as a database from before schema versions
    con.execute("insert into outbox (key, chat, text, kind, status, attempts, next_attempt_at, created_at,"
                " channel_id) values ('k', 'c', 't', 'reply', 'pending', 0, 0, 0, '')")
    con.commit()
    con.close()
    from nanoclaw.core import migrations
    migrations.migrate(path)
    models.open_db(path)
    row = models.Outbox.get(models.Outbox.key == "k")
    assert row.error == "" and row.text == "t"


def test_an_older_database_keeps_its_cursors_and_sessions_as_the_leads(tmp_path):
    from nanoclaw.core.models import Cursor, Session, open_db
    path = old_database(tmp_path / "old.db", """
        create table cursor (group_id integer primary key, last_message_id integer, failures integer,
            retry_at real);
        insert into cursor values (1, 42, 0, 0);
        create table session (group_id integer primary key, session_id varchar, updated_at real);
        insert into session values (1, 'sess-1', 0);
    """)
    from nanoclaw.core import migrations
    with pytest.raises(migrations.SchemaError, match="from before schema versions"):
        open_db(path)  # never migrated silently at open
    assert migrations.migrate(path) == (0, migrations.LATEST)
    open_db(path)
    assert [(c.agent, c.last_message_id) for c in Cursor.select()] == [("", 42)]
    assert [(s.agent, s.session_id) for s in Session.select()] == [("", "sess-1")]
    Cursor.create(group=1, agent="researcher", last_message_id=3)  # the new key takes a member beside it
    assert Cursor.select().count() == 2
