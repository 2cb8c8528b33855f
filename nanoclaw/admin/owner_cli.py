"""``nanoclaw stop GROUP`` and ``nanoclaw pending revoke [NAME]``: the owner's stop and revoke.

The stop is the queue's to carry out (it keeps the kill deadline, core/stop.py): asked on
its socket, its one line printed. A revoke is a database change (core/revoke.py), then the
daemons that read senders are nudged.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core.config import Config
from nanoclaw.core.protocol import nudge, request


def cmd_stop(cfg: Config, args: argparse.Namespace) -> int:
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


def cmd_revoke(cfg: Config, args: argparse.Namespace) -> int:
    from nanoclaw.core import revoke
    from nanoclaw.core.models import open_db
    open_db(cfg.db_path)
    if not args.name:
        rows = revoke.approved()
        if not rows:
            print("no approved senders")
        for a, req in rows:
            print(f"  {revoke.describe(a, req)}")
        if rows:
            print("\nrevoke one:  nanoclaw pending revoke NAME [--group GROUP]  (a name, +number, chat id or N)")
        return 0
    try:
        print(revoke.revoke(" ".join(args.name), args.group))
    except revoke.RevokeError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    for daemon in ("queue", "channel", "router", "ipc", "proxy"):
        nudge(cfg.socket(daemon))
    return 0
