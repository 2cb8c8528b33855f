"""The database's schema version, and the steps from one version to the next.

TO CHANGE THE SCHEMA (a table, a column, an index), add a step; never edit a released one:

    1. Change the model in ``core/models.py``.
    2. Write a function that makes exactly that change with plain SQL on ``con`` (an
       ``sqlite3`` connection already inside the runner's transaction: no BEGIN or COMMIT of
       its own, and no ``executescript``, which commits), and append it to ``STEPS``. Its
       place in ``STEPS`` is the version it makes (the first step makes version 1)::

           def _v2_messages_can_be_pinned(con: sqlite3.Connection) -> None:
               \"\"\"messages can be pinned\"\"\"
               con.execute('ALTER TABLE "message" ADD COLUMN "pinned" INTEGER NOT NULL DEFAULT 0')

    3. Run ``tests/core/test_migrations.py``: it checks that a database made by the steps has
       every table, column and index ``models.py`` declares, and no other.

    SQLite alters a column or a key only by rebuilding the table: ``CREATE TABLE "x_new"``
    with the new shape, ``INSERT INTO "x_new" SELECT ... FROM "x"``, ``DROP TABLE "x"``,
    ``ALTER TABLE "x_new" RENAME TO "x"``, then the table's indexes again. Foreign keys are
    off while steps run (dropping "group" must not cascade to every row that names a group)
    and are checked before the commit.

HOW STEPS RUN
    ``user_version`` (in the database file's header) is the schema version; 0 is a database
    from before versions (or an empty one). ``migrate()`` runs every missing step in one
    ``BEGIN IMMEDIATE`` transaction, each step in a savepoint of its own that also sets the
    version it made; a step that fails, or a foreign key left dangling, rolls the whole run
    back: the database is exactly as it was, at its old version, readable by the code that
    made it. SQLite's write lock serialises runs, and each re-reads the version inside its
    transaction, so a step is never applied twice.

WHO RUNS THEM
    One process, with the service stopped: ``nanoclaw migrate`` (``install.sh`` runs it
    after it has stopped the units and made a backup). The daemons and the CLI never migrate
    an existing database; they create an empty one (``prepare``) and refuse any other
    version than this code's, with one line naming it. So an upgrade's migration happens
    once, at a moment the owner chose, after a backup, and its failure is one step's report,
    not every daemon retrying it every second under systemd's restarts.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from urllib.parse import quote

from nanoclaw.core import backups
from nanoclaw.core.release import describe
from nanoclaw.core.schema_v1 import STATEMENTS as V1

Step = Callable[[sqlite3.Connection], None]
EX_SCHEMA = 78  # EX_CONFIG: how a daemon refusing the database exits; its unit does not restart it


class SchemaError(Exception):
    """The database is not at this code's schema version; the text is one line for the owner."""

    def __init__(self, text: str, found: int, known: int) -> None:
        super().__init__(text)
        self.found, self.known = found, known

    def __reduce__(self):  # handed from a child process (admin/owner.py) to its parent
        return type(self), (str(self), self.found, self.known)


class MigrationError(Exception):
    """A step failed, or left the database inconsistent; the run was rolled back."""

    def __init__(self, version: int, what: str, cause: str) -> None:
        super().__init__(f"step {version} ({what}) failed: {cause}")
        self.version, self.what, self.cause = version, what, cause

    def __reduce__(self):
        return type(self), (self.version, self.what, self.cause)


# -- the steps ---------------------------------------------------------------------------
def _tables(con: sqlite3.Connection) -> set[str]:
    return {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table' "
                                      "AND name NOT LIKE 'sqlite_%'")}


def _columns(con: sqlite3.Connection, table: str) -> list[tuple]:
    """(cid, name, type, notnull, default, pk) of each column."""
    return list(con.execute(f'PRAGMA table_info("{table}")'))


def _v1_statements() -> dict[str, list[str]]:
    """Version 1's statements by table: its CREATE TABLE first, then its indexes."""
    out: dict[str, list[str]] = {}
    for sql in V1:
        table = re.match(r'CREATE (?:UNIQUE )?(?:TABLE|INDEX "[^"]+" ON) "([^"]+)"', sql).group(1)
        out.setdefault(table, []).append(sql)
    return out


def _v1_release_c7472f1(con: sqlite3.Connection) -> None:
    """the schema of release c7472f1 (a database from before versions is brought to it)"""
    wanted = _v1_statements()
    frozen = sqlite3.connect(":memory:")  # version 1's columns, as SQLite itself reads them
    for sql in V1:
        frozen.execute(sql)
    present = _tables(con)
    # What the unversioned releases did at every open, once more and for the last time:
    # cursor and session were keyed by group alone before teams; rebuild them keyed by
    # (group, agent), the old rows becoming the leads'.
    for table in ("cursor", "session"):
        have = [c[1] for c in _columns(con, table)] if table in present else []
        if have and "agent" not in have:
            kept = ", ".join(f'"{c}"' for c in have)
            con.execute(f'ALTER TABLE "{table}" RENAME TO "{table}_before_teams"')
            con.execute(wanted[table][0])
            con.execute(f'INSERT INTO "{table}" ({kept}, "agent") SELECT {kept}, \'\' FROM "{table}_before_teams"')
            con.execute(f'DROP TABLE "{table}_before_teams"')
    # Columns an older table lacks are added with their defaults; then missing tables, then
    # indexes (an index on a column not there yet would be refused).
    for table, statements in wanted.items():
        if table not in present:
            con.execute(statements[0])
            continue
        have = {c[1] for c in _columns(con, table)}
        for _, name, kind, notnull, default, _ in _columns(frozen, table):
            if name in have:
                continue
            if notnull and default is None:
                # The old rows get the type's empty value, as the models' defaults were for
                # every column an unversioned release ever added ("" and 0).
                default = "''" if kind in ("TEXT", "VARCHAR(255)") else "0"
            con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {kind}'
                        + (" NOT NULL" if notnull else "") + (f" DEFAULT {default}" if default is not None else ""))
    for statements in wanted.values():
        for sql in statements[1:]:
            con.execute(sql.replace(" INDEX ", " INDEX IF NOT EXISTS ", 1))
    frozen.close()


def _add_column(con: sqlite3.Connection, table: str, name: str, decl: str) -> None:
    """Add a column unless the table has it: an unversioned database (version 0) from a
    release made after c7472f1 was given some of version 2's columns by that release's
    open, so step 1 brings it to version 1 with them already there."""
    if name not in {c[1] for c in _columns(con, table)}:
        con.execute(f'ALTER TABLE "{table}" ADD COLUMN "{name}" {decl}')


def _v2_gates(con: sqlite3.Connection) -> None:
    """the gates: git guards per mount, budget requests' detail, server tools' counts, web bytes per day"""
    _add_column(con, "mount", "allow_git_config", "INTEGER NOT NULL DEFAULT 0")
    _add_column(con, "request", "detail", "TEXT NOT NULL DEFAULT ''")
    _add_column(con, "usage", "web_search_requests", "INTEGER NOT NULL DEFAULT 0")
    _add_column(con, "usage", "web_fetch_requests", "INTEGER NOT NULL DEFAULT 0")
    con.execute('CREATE TABLE IF NOT EXISTS "egressbytes" ("group" VARCHAR(255) NOT NULL, '
                '"agent" VARCHAR(255) NOT NULL, "day" VARCHAR(255) NOT NULL, "bytes" INTEGER NOT NULL, '
                'PRIMARY KEY ("group", "agent", "day"))')


def _v3_models_per_kind(con: sqlite3.Connection) -> None:
    """models per kind of work: a task's own model, and the model each job and task run used"""
    for table in ("task", "taskrun", "job"):
        _add_column(con, table, "model", "VARCHAR(255) NOT NULL DEFAULT ''")


def _v4_stop_and_raises_for_today(con: sqlite3.Connection) -> None:
    """the owner's stop of a turn, and budget raises for today only"""
    # Idempotent as step 2 is: a test's (or a hand-made) unversioned database may have them already.
    _add_column(con, "turn", "stopped_at", "REAL")
    con.execute('CREATE TABLE IF NOT EXISTS "budgetraise" ("scope" VARCHAR(255) NOT NULL, "period" VARCHAR(255) NOT NULL, '
                '"unit" VARCHAR(255) NOT NULL, "limit" REAL NOT NULL, "until" REAL NOT NULL, '
                '"set_by" VARCHAR(255) NOT NULL, "set_at" REAL NOT NULL, PRIMARY KEY ("scope", "period", "unit"))')


# The steps, in order: STEPS[n - 1] makes version n. Append only (see the top of this file).
STEPS: tuple[Step, ...] = (
    _v1_release_c7472f1,
    _v2_gates,
    _v3_models_per_kind,
    _v4_stop_and_raises_for_today,
)
LATEST = len(STEPS)


# -- running them ------------------------------------------------------------------------
def version(con: sqlite3.Connection) -> int:
    return con.execute("PRAGMA user_version").fetchone()[0]


def version_of(path: Path) -> int:
    """The schema version of the database at ``path``, read without changing anything."""
    con = sqlite3.connect(f"file:{quote(str(path))}?mode=ro", uri=True)
    try:
        return version(con)
    finally:
        con.close()


def is_empty(con: sqlite3.Connection) -> bool:
    return not _tables(con)


def _apply(con: sqlite3.Connection, steps: Sequence[Step], start: int,
           progress: Callable[[int, str], None] | None = None) -> None:
    """Steps ``start+1`` … ``len(steps)``, inside the caller's transaction."""
    if start >= len(steps):
        return
    for n in range(start + 1, len(steps) + 1):
        step = steps[n - 1]
        what = (step.__doc__ or step.__name__).strip().splitlines()[0]
        if progress:
            progress(n, what)
        con.execute(f"SAVEPOINT step_{n}")
        try:
            step(con)
            con.execute(f"PRAGMA user_version = {n}")
        except Exception as exc:
            con.execute(f"ROLLBACK TO step_{n}")
            raise MigrationError(n, what, f"{type(exc).__name__}: {exc}") from exc
        con.execute(f"RELEASE step_{n}")
    dangling = con.execute("PRAGMA foreign_key_check").fetchall()
    if dangling:
        table, row, parent = dangling[0][:3]
        raise MigrationError(len(steps), "the foreign key check", f"{len(dangling)} row(s) name a missing row "
                             f'(first: "{table}" row {row} names a missing "{parent}")')


def newer_text(path: Path, found: int, known: int = LATEST) -> str:
    back = backups.newest_restorable(backups.directory(Path(path).parent), known)
    how = (f"restore the newest backup it can read: sudo nanoclaw restore {back.path}" if back
           else f"no backup of schema {known} or older is in {backups.directory(Path(path).parent)}")
    return (f"the database {path} is at schema {found}, newer than this nanoclaw {describe()} knows "
            f"(schema {known}): a newer nanoclaw made it. Install that one again, or go back: {how}")


def older_text(path: Path, found: int, known: int = LATEST) -> str:
    what = "from before schema versions" if found == 0 else f"at schema {found}"
    return (f"the database {path} is {what}; this nanoclaw {describe()} needs schema {known}: "
            "run `sudo nanoclaw migrate` with nanoclaw stopped (it makes a backup first; "
            "`sudo ./install.sh` does all of it)")


def prepare(con: sqlite3.Connection, path: Path) -> None:
    """At every open: make an empty database at the latest version; refuse any database at
    another version than this code's (``SchemaError``, one line for the owner)."""
    found = version(con)
    if found == LATEST:
        return
    if found > LATEST:
        raise SchemaError(newer_text(path, found), found, LATEST)
    if found == 0 and is_empty(con):
        con.execute("BEGIN IMMEDIATE")  # the daemons may all start on no database at once
        try:
            if version(con) == 0 and is_empty(con):
                _apply(con, STEPS, 0)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return prepare(con, path)
    raise SchemaError(older_text(path, found), found, LATEST)


def migrate(path: Path, steps: Sequence[Step] = STEPS,
            progress: Callable[[int, str], None] | None = None) -> tuple[int, int]:
    """Bring the database at ``path`` to the last of ``steps``: all of them or none.
    Returns (the version it was at, the version it is at); raises ``SchemaError`` for a
    database newer than ``steps`` know and ``MigrationError`` when a step failed."""
    con = sqlite3.connect(str(path), isolation_level=None, timeout=30)
    try:
        con.execute("PRAGMA foreign_keys = OFF")  # not inside a transaction: SQLite ignores it there
        con.execute("BEGIN IMMEDIATE")
        try:
            found = version(con)
            if found > len(steps):
                raise SchemaError(newer_text(path, found, len(steps)), found, len(steps))
            _apply(con, steps, found, progress)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        return found, len(steps)
    finally:
        con.close()
