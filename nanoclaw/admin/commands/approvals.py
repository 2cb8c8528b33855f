"""nanoclaw pending, approve, deny: the owner's answers to unknown chats and senders.

SYNOPSIS
    add_parsers(sub)                 the pending command, and approve and deny as short forms
    cmd_pending(cfg, args)           list the requests; approve, deny or forget one (core/approvals.py)
    cmd_revoke(cfg, args)            nanoclaw pending revoke [NAME]: list the approved senders, or take
                                     one back (core/revoke.py), then nudge the daemons that read senders
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import nudge


def cmd_pending(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Unknown chats and senders waiting for the owner's answer (core/approvals.py)."""
    import time as time_mod
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from nanoclaw.core import approvals
    from nanoclaw.core.models import Message, open_db
    open_db(cfg.db_path)
    action = getattr(args, "pending_action", None) or args.command
    if action in ("approve", "deny", "forget") and args.n is None:
        print(f"nanoclaw: {action} needs the request's number (see: nanoclaw pending)", file=sys.stderr)
        return 2
    try:
        if action == "approve":
            print(approvals.approve(cfg, args.n, args.folder, by="cli"))
        elif action == "deny":
            print(approvals.deny(cfg, args.n, by="cli"))
        elif action == "forget":
            print(approvals.forget(cfg, args.n))
        else:
            rows = approvals.listing(cfg, everything=args.all)
            if not rows:
                print("no requests waiting" + ("" if args.all else " (nanoclaw pending --all: the last week's)"))
            zone, now = ZoneInfo(cfg.tz), time_mod.time()
            for r in rows:
                asked = Message.get_or_none(Message.id == r.message) if r.kind != "budget" else None
                said = approvals.clean(asked.text, 50) if asked else "(message gone)" if r.kind != "budget" else ""
                if r.status == "pending" and r.expires_at > now:
                    state = f"waits, expires in {max(1, int((r.expires_at - now) // 60))} min"
                else:
                    state = "expired" if r.status == "pending" else r.status
                    if r.decided_at:
                        state += " " + datetime.fromtimestamp(r.decided_at, zone).strftime("%m-%d %H:%M")
                print(f"{r.id:>4}  {r.kind:<6} {approvals.describe(r)}  [{r.chat}]  {state}"
                      + (f"  \"{said}\"" if said else ""))
            if any(r.status == "pending" and r.expires_at > now for r in rows):
                print("\nanswer:  nanoclaw approve N [--folder NAME]   or   nanoclaw deny N")
            return 0
    except approvals.ApprovalError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    for daemon in ("queue", "ipc", "proxy", "channel", "router"):
        nudge(cfg.socket(daemon))


def cmd_revoke(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """The senders the owner approved; take one back (its next trigger asks again)."""
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


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("pending", help="unknown chats and senders asking for the assistant: list, approve, deny")
    psub = sp.add_subparsers(dest="pending_action")
    sp.add_argument("--all", action="store_true", help="also the last week's answered and expired requests")
    pa = psub.add_parser("approve", help="approve request N: register the chat (or allow the sender), replay its message")
    pd = psub.add_parser("deny", help="deny request N: no answer, and no new card from it for a week")
    pf = psub.add_parser("forget", help="lift the denial of request N: it may ask again")
    for parser in (pa, pd, pf):
        parser.add_argument("n", type=int, nargs="?", metavar="N")
    pa.add_argument("--folder", help="the new group's folder (default: from the chat's name)")
    pr = psub.add_parser("revoke", help="take back one approved sender (without NAME: list them)")
    pr.add_argument("name", nargs="*", metavar="NAME", help="a name, +number, chat id or the request's N")
    pr.add_argument("--group", help="the group, where NAME is approved in several")
    pr.set_defaults(run=cmd_revoke)
    sp = sub.add_parser("approve", help="approve request N (as: nanoclaw pending approve N)")
    sp.add_argument("n", type=int, nargs="?", metavar="N")
    sp.add_argument("--folder", help="the new group's folder (default: from the chat's name)")
    sp = sub.add_parser("deny", help="deny request N (as: nanoclaw pending deny N)")
    sp.add_argument("n", type=int, nargs="?", metavar="N")
    for name in ("pending", "approve", "deny"):
        sub.choices[name].set_defaults(run=cmd_pending)
