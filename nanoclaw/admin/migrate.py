"""``nanoclaw migrate``: bring the database to this code's schema version, once, with
nanoclaw stopped and a backup made first (core/migrations.py has the steps and why they
run here and nowhere else). ``install.sh`` runs it as the service user during an upgrade,
after its own backup (``--no-backup``)."""

from __future__ import annotations

import sqlite3
import sys
import time

from nanoclaw.admin import backup
from nanoclaw.admin.owner import as_owner_of, running, stop_hint
from nanoclaw.core import migrations
from nanoclaw.core.config import Config


def command(cfg: Config, args) -> int:
    path = cfg.db_path
    if not path.exists():
        print(f"no database yet at {path}: it is made at schema {migrations.LATEST} when first opened")
        return 0
    found = as_owner_of(cfg.state_dir, lambda: migrations.version_of(path))
    if found == migrations.LATEST:
        print(f"the database {path} is at schema {found}, this nanoclaw's: nothing to do")
        return 0
    if found > migrations.LATEST:
        print(f"nanoclaw: {migrations.newer_text(path, found)}", file=sys.stderr)
        return migrations.EX_SCHEMA
    up = running(cfg)
    if up:
        print(f"nanoclaw: refusing to migrate while nanoclaw runs ({', '.join(up)}): stop it first: {stop_hint()}",
              file=sys.stderr)
        return 2
    saved = ""
    if not args.no_backup:
        try:
            summary = backup.make(cfg, kind="pre-migrate")
        except (backup.BackupError, OSError) as exc:
            print(f"nanoclaw: no migration: the backup before it failed: {exc}", file=sys.stderr)
            return 1
        summary.removed = backup.prune(cfg, "pre-migrate")
        print(backup.report(summary))
        saved = f"; the backup made before it: {summary.path}"
    started = time.monotonic()

    def progress(n: int, what: str) -> None:
        print(f"schema {n - 1} -> {n}: {what}", flush=True)

    try:
        before, after = as_owner_of(cfg.state_dir, lambda: migrations.migrate(path, progress=progress))
    except migrations.MigrationError as exc:
        print(f"nanoclaw: migration failed: {exc}. Nothing was changed: the database is at schema {found} "
              f"as before{saved}", file=sys.stderr)
        return 1
    except sqlite3.Error as exc:
        print(f"nanoclaw: migration failed: {exc}. Nothing was changed: the database is at schema {found} "
              f"as before{saved}", file=sys.stderr)
        return 1
    print(f"migrated {path} from schema {before} to {after} in {time.monotonic() - started:.1f} s")
    return 0
