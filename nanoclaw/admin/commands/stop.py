"""nanoclaw stop GROUP: the owner's stop of a group's running turn (and its members').

SYNOPSIS
    add_parsers(sub)                 the stop command
    cmd_stop(cfg, args)              ask the queue to stop GROUP's turns; print its one line

The stop is the queue's to carry out (it keeps the kill deadline, daemons/queue/stopped.py and
daemons/queue/stop.py): asked on its socket, which only the owner's processes reach.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import request


def cmd_stop(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Stop GROUP's running turn through the queue; the session is kept."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import open_db
    open_db(cfg.db_path)
    try:
        group = groups_mod.find_group(args.group)
    except groups_mod.GroupError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    try:
        said = request(cfg.socket("queue"), {"op": "stop", "group": group.folder}, timeout=10)
    except (OSError, ValueError) as exc:
        print(f"nanoclaw: the queue is not answering ({exc}); is nanoclaw running? (nanoclaw status)",
              file=sys.stderr)
        return 1
    if not said.get("ok"):
        print(f"nanoclaw: {said.get('error')}", file=sys.stderr)
        return 2
    print(said["text"])
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("stop", help="stop GROUP's running turn (and its members'); its session is kept")
    sp.add_argument("group")
    sp.set_defaults(run=cmd_stop)
