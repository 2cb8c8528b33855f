"""nanoclaw backup, restore, migrate: the state kept safe, put back, and brought up to date.

SYNOPSIS
    add_parsers(sub)                 the backup, restore and migrate commands
    cmd_backup, cmd_restore, cmd_migrate(cfg, args)
                                     hand over to admin/backup.py, admin/restore.py, admin/migrate.py
"""

from __future__ import annotations

import argparse

from nanoclaw.core import config as config_mod


def cmd_backup(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import backup
    return backup.command(cfg, args)


def cmd_restore(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import restore
    return restore.command(cfg, args)


def cmd_migrate(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import migrate
    return migrate.command(cfg, args)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("backup", help="one archive of the database, groups, sessions, WhatsApp session and "
                                       "configuration (safe while nanoclaw runs)")
    sp.add_argument("file", nargs="?", help="where (default: STATE/backups/nanoclaw-<when>-schema<N>.tar.gz)")
    sp.add_argument("--with-secrets", action="store_true", help="include the Anthropic credential")
    sp.add_argument("--nightly", action="store_true", help="(the timer) a nightly backup; keeps the newest "
                                                           "[backup] keep of them")
    sp.add_argument("--kind", choices=["pre-upgrade"], help="(install.sh) name it as made before an upgrade")
    sp = sub.add_parser("restore", help="put a backup back (nanoclaw stopped); what it replaces is kept aside")
    sp.add_argument("file")
    sp = sub.add_parser("migrate", help="bring the database to this nanoclaw's schema (nanoclaw stopped; "
                                        "a backup first)")
    sp.add_argument("--no-backup", action="store_true", help="(install.sh, which made one) no backup first")
    for name, run in (("backup", cmd_backup), ("restore", cmd_restore), ("migrate", cmd_migrate)):
        sub.choices[name].set_defaults(run=run)
