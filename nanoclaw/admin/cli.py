"""The nanoclaw command: its entry point, which assembles the nouns' parsers and dispatches.

SYNOPSIS
    main(argv)                       parse, load the configuration, run the command (sys.exit with its code)
    build_parser()                   the whole command line: the daemons, run-all, then every noun

DESCRIPTION
    "nanoclaw <daemon>" runs that daemon (what each unit's ExecStart= does); "nanoclaw
    run-all" runs them all in the foreground. Every other command is a noun's, in its own
    module of admin/commands/ (chat, whatsapp, groups, mounts, agents, approvals, usage,
    health, stop, credential, tasks, backup, image): its add_parsers(sub) adds its subcommands,
    each with its handler as the "run" default, called as run(cfg, args) -> exit code.
    The help printed is plain text: no reStructuredText markup in a help string.

DIAGNOSTICS
    Exit 2 for bad usage or input the command refused, 78 (EX_SCHEMA) for a database of
    another schema, 130 on Ctrl-C; otherwise each command's own code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from nanoclaw import DAEMONS, __version__
from nanoclaw.admin.commands import (agents, approvals, backup, chat, credential, groups, health, image, stop, tasks,
                                     usage, whatsapp)
from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file
from nanoclaw.core import log as log_mod

DESCRIPTION = "The nanoclaw command: the daemons, the terminal chat and group administration."
NOUNS = (chat, groups, agents, approvals, usage, whatsapp, health, stop, credential, tasks, backup, image)  # help's order


def _daemon(name: str) -> int:
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    log_mod.setup(name)
    module = __import__(f"nanoclaw.daemons.{name}", fromlist=["main"])
    try:
        module.main()
    except SchemaError as exc:  # a database of another version: nothing is touched, and no restart helps
        logging.getLogger(f"nanoclaw.{name}").error("refusing to start: %s", exc)
        return EX_SCHEMA
    return 0


class _Version(argparse.Action):
    """``--version``: the version, the commit and the schema (worked out only when asked)."""

    def __init__(self, option_strings, dest, **kw) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version, commit and schema, and exit")

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        from nanoclaw.core.migrations import LATEST
        from nanoclaw.core.release import commit
        print(f"nanoclaw {__version__} (commit {commit()}, database schema {LATEST})")
        parser.exit()



def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nanoclaw", description=DESCRIPTION)
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in DAEMONS:
        sub.add_parser(name, help=f"run the {name} daemon (normally started by systemd)")
    sp = sub.add_parser("run-all", help="run every daemon in the foreground, without systemd (a laptop, a container)")
    sp.add_argument("--no-check", action="store_true", help="start without checking image, container options, "
                    "credential and cron first")
    for noun in NOUNS:
        noun.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        cfg = config_file.get()
    except config_mod.ConfigError as exc:
        raise SystemExit(f"nanoclaw: configuration error: {exc}") from None
    if args.command in DAEMONS:
        sys.exit(_daemon(args.command))
    log_mod.setup("timers" if args.command == "timers" else "cli")  # the root one-shot logs what it changed
    if args.command == "run-all":
        from nanoclaw.admin.supervise import run_all
        sys.exit(run_all(check=not args.no_check))
    from nanoclaw.core.migrations import EX_SCHEMA, SchemaError
    from nanoclaw.core.socket_replies import BadReply
    try:
        sys.exit(args.run(cfg, args))
    except SchemaError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        sys.exit(EX_SCHEMA)
    except BadReply as exc:  # a daemon's answer this CLI does not understand (another release's?)
        print(f"nanoclaw: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
