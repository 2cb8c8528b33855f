"""nanoclaw usage and nanoclaw budget: what the agents spent, and the limits on it.

SYNOPSIS
    add_parsers(sub)                 the usage and budget commands
    cmd_usage(cfg, args)             the proxy's records, one row per group, model, agent, day or run
    cmd_budget(cfg, args)            list the budgets in force; set, raise (or raise for today only) or
                                     clear the owner's overrides

Only the owner sets a budget (an agent may ask for more: that is a request in approvals.py).
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import nudge


def cmd_usage(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What the agents spent, from the proxy's records."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import open_db
    if args.days < 1:
        print("nanoclaw: --days must be 1 or more", file=sys.stderr)
        return 2
    open_db(cfg.db_path)
    folder = None
    if args.group:
        try:
            folder = groups_mod.find_group(args.group).folder
        except groups_mod.GroupError:
            folder = args.group  # a removed group's spending is still on record
    print("\n".join(usage.report(cfg, folder, args.days, args.by)))
    return 0


def _budget_scope(ref: str) -> str:
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    return usage.ALL if ref in ("all", usage.ALL) else groups_mod.find_group(ref).folder


def cmd_budget(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Budgets: list them with what is spent; set, raise or clear the owner's overrides."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import BudgetLimit, BudgetRaise, Group, open_db
    open_db(cfg.db_path)
    action = args.budget_action or "list"
    try:
        if action == "list":
            scopes = [usage.ALL] + [g.folder for g in Group.select().order_by(Group.folder)]
            shown = 0
            for scope in scopes:
                for lim in usage.limits(cfg, scope):
                    used = usage.spent(cfg, scope, lim.period)
                    value = used.usd if lim.unit == "usd" else used.tokens
                    amount = (lambda v: f"${v:.2f}") if lim.unit == "usd" else (lambda v: f"{int(v):,} tokens")
                    state = "SPENT" if value >= lim.limit else f"{value / lim.limit:.0%} used"
                    print(f"{'all groups' if scope == usage.ALL else scope:<16} per {lim.period:<5} "
                          f"{amount(lim.limit):>18}  spent {amount(value):>18}  {state:<9} ({lim.source})")
                    shown += 1
            if not shown:
                print("no budgets (set one: nanoclaw budget set GROUP|all day|month AMOUNT [--tokens])")
            return 0
        scope = _budget_scope(args.scope)
        unit = "tokens" if args.tokens else "usd"
        if action == "clear":
            gone = BudgetLimit.delete().where(BudgetLimit.scope == scope, BudgetLimit.period == args.period,
                                              BudgetLimit.unit == unit).execute()
            gone += BudgetRaise.delete().where(BudgetRaise.scope == scope, BudgetRaise.period == args.period,
                                               BudgetRaise.unit == unit).execute()
            print(f"{args.scope}: {'the override of ' if gone else 'no override of '}the {args.period} {unit} "
                  "budget removed; the configuration's applies")
        elif getattr(args, "today", False):
            amount = usage.parse_amount(args.amount, tokens=args.tokens)
            lim, until = usage.raise_today(cfg, scope, args.period, unit, amount, by="cli")
            shown = f"${lim.limit:.2f}" if unit == "usd" else f"{int(lim.limit):,} tokens"
            print(f"{'all groups' if scope == usage.ALL else scope}: {shown} per {args.period} until "
                  f"{until:%Y-%m-%d %H:%M} {cfg.tz} (today only; then as before)")
        else:
            amount = usage.parse_amount(args.amount, tokens=args.tokens)
            lim = usage.set_limit(cfg, scope, args.period, unit, None if action == "raise" else amount,
                                  add=amount if action == "raise" else None, by="cli")
            shown = f"${lim.limit:.2f}" if unit == "usd" else f"{int(lim.limit):,} tokens"
            print(f"{'all groups' if scope == usage.ALL else scope}: {shown} per {args.period}"
                  + (" (no limit)" if not lim.limit else ""))
    except (usage.BudgetError, groups_mod.GroupError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    nudge(cfg.socket("queue"))  # work held by a spent budget may go on now
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("usage", help="what the agents spent: API calls, tokens and estimated cost")
    sp.set_defaults(run=cmd_usage)
    sp.add_argument("group", nargs="?", help="one group (default: all)")
    sp.add_argument("--days", type=int, default=1, help="today and the days before it (default: 1, today)")
    sp.add_argument("--by", choices=["model", "group", "agent", "day", "run"], default="group",
                    help="one row per (default: group; agent: the lead as GROUP, a member as GROUP/MEMBER; "
                         "run: each job, with the model its calls named)")
    sp = sub.add_parser("budget", help="spending limits per group or for all: list, set, raise, clear")
    sp.set_defaults(run=cmd_budget)
    bsub = sp.add_subparsers(dest="budget_action")
    bsub.add_parser("list", help="every budget in force and what is spent of it")
    for action, what in (("set", "set a budget (0: none, even where the configuration has one)"),
                         ("raise", "add AMOUNT to a budget in force"),
                         ("clear", "drop the owner's override: the configuration's budget applies")):
        bp = bsub.add_parser(action, help=what)
        bp.add_argument("scope", metavar="GROUP", help="a group, or 'all' for all groups together")
        bp.add_argument("period", choices=["day", "month"])
        if action != "clear":
            bp.add_argument("amount", help="USD (2, 2.50, $2.50) or with --tokens a count (500k, 2M)")
        bp.add_argument("--tokens", action="store_true", help="a budget in tokens, not USD")
        if action == "raise":
            bp.add_argument("--today", action="store_true",
                            help="for today only: the raise lapses at your next midnight")
