"""nanoclaw groups: register, list, change and remove the chats the assistant answers.

SYNOPSIS
    add_parsers(sub)                 the groups command (and its mount subcommands, from mounts.py)
    cmd_groups(cfg, args)            add, remove, list, set, discover, mount
    cmd_groups_set(cfg, args)        a group's policy and model, all checked before anything changes

Only the owner registers a group (here or by approving a request: approvals.py); the
daemons are nudged so that they see the change at once.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.admin.commands import mounts
from nanoclaw.admin.commands.whatsapp import cmd_discover
from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import nudge


def cmd_groups(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core.models import AllowedSender, Group, open_db

    if args.action == "discover":
        return cmd_discover(cfg)
    open_db(cfg.db_path)
    if args.action == "mount":
        return mounts.cmd_mount(cfg, args)  # the mount subcommands' own parsers: mounts.py
    try:
        if args.action == "add":
            group = groups_mod.add_group(cfg, args.folder, name=args.name, jid=args.jid,
                                         trigger=args.trigger, is_main=args.main,
                                         requires_trigger=False if args.no_trigger else None)
            print(f"added group {group.folder} (chat {group.jid}"
                  f"{', main' if group.is_main else ''}, trigger {group.trigger!r}"
                  f"{'' if group.requires_trigger else ' not required'})")
        elif args.action == "set":
            return cmd_groups_set(cfg, args)
        elif args.action == "remove":
            groups_mod.remove_group(cfg, args.folder)
            print(f"removed group {args.folder} (its folder {cfg.groups_dir / args.folder} is kept)")
        else:
            rows = list(Group.select().order_by(Group.folder))
            if not rows:
                print("no groups yet: nanoclaw groups add main --main")
            for g in rows:
                flags = ("main " if g.is_main else "") + (f"trigger={g.trigger}" if g.requires_trigger
                                                           else "every message")
                flags += f" policy={groups_mod.policy_of(cfg, g)}"
                approved = AllowedSender.select().where(AllowedSender.group == g.id).count()
                flags += f" (+{approved} approved)" if approved else ""
                print(f"{g.folder:<20} {g.jid:<32} {g.name:<20} {flags}" + (f" model={g.model}" if g.model else ""))
    except groups_mod.GroupError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    for daemon in ("queue", "ipc", "proxy", "channel"):
        nudge(cfg.socket(daemon))
    return 0


def cmd_groups_set(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Change a registered group's settings: who may wake its agent, and its model (from its
    next container on). Everything is checked before anything is changed."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import model_choice
    if args.model is None and args.policy is None:
        print("nanoclaw: nothing to set (give --policy open|allowlist|ask and/or --model MODEL)", file=sys.stderr)
        return 2
    model = None if args.model is None else "" if args.model in model_choice.DEFAULT_WORDS else args.model
    try:
        if model:
            model_choice.check(cfg, model, "the group's model")
    except model_choice.ModelError as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    group = groups_mod.find_group(args.group)
    if args.policy is not None:
        group = groups_mod.set_policy(cfg, group.folder, args.policy)
        print(f"{group.folder}: policy {args.policy}"
              + {"open": " (anyone in the chat may wake its agent)",
                 "allowlist": f" (only the senders in {groups_mod.allowlist_path(cfg, group.folder)})",
                 "ask": " (the allowlist's senders; anyone else asks you first: nanoclaw pending)"}[args.policy])
    if model is not None:
        group.model = model
        group.save()
        default = f"the default ({cfg.model or 'the CLI chooses'})"
        print(f"{group.folder}: model {model or default}, from its next container on")
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("groups", help="register, list and remove groups")
    sp.set_defaults(run=cmd_groups)
    gsub = sp.add_subparsers(dest="action", required=True)
    ga = gsub.add_parser("add", help="register a group")
    ga.add_argument("folder", help="folder name: letters, digits, _ and -")
    ga.add_argument("--name", help="display name")
    ga.add_argument("--jid", help="chat id (default: FOLDER@term, a terminal chat)")
    ga.add_argument("--trigger", help="trigger word (default from config, @Andy)")
    ga.add_argument("--no-trigger", action="store_true", help="answer every message")
    ga.add_argument("--main", action="store_true", help="make this the main (admin) group")
    gr = gsub.add_parser("remove", help="unregister a group (its folder is kept)")
    gr.add_argument("folder")
    gsub.add_parser("list", help="list groups")
    gs = gsub.add_parser("set", help="change a group's settings (the model from its next container on)")
    gs.add_argument("group", help="group folder, name or chat id")
    gs.add_argument("--policy", choices=["open", "allowlist", "ask"],
                    help="who may wake its agent: anyone in the chat (open), the senders in its allowlist "
                         "file (allowlist), or those and anyone else you approve when they ask (ask)")
    gs.add_argument("--model", help="the model its agents use ('default': the configured one); a team "
                                    "member's own model wins")
    gsub.add_parser("discover", help="list the WhatsApp account's groups (to register one)")
    mounts.add_parsers(gsub)
