"""nanoclaw groups mount: the owner's folders in a group's containers.

SYNOPSIS
    add_parsers(gsub)                the mount subcommands of nanoclaw groups
    cmd_mount(cfg, args)             add, list, remove (core/mounts.py checks each against the allowlist)

Mounts are only ever set here, by the owner, never by an agent; each is checked again when
a container starts, so a folder the allowlist no longer allows is refused then.
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw.core import config as config_mod


def cmd_mount(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """The owner's folders in a group's containers (only ever set here, never by an agent)."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import mounts
    from nanoclaw.core.models import Group, Mount
    try:
        if args.mount_action == "list":
            rows = Mount.select().join(Group).order_by(Group.folder, Mount.name)
            if args.group:
                rows = rows.where(Group.id == groups_mod.find_group(args.group).id)
            rows = list(rows)
            if not rows:
                print("no mounts (add one: nanoclaw groups mount add GROUP HOST_PATH [--as NAME] [--rw])")
            for m in rows:
                try:
                    mounts.check(cfg, m.host_path, m.rw)
                    state = "ok"
                except mounts.MountError as exc:
                    state = f"REFUSED now: {exc}"
                mode = ("rw, git config writable" if m.allow_git_config else "rw") if m.rw else "ro"
                print(f"{m.group.folder:<16} /workspace/extra/{m.name:<20} {mode}  {m.host_path}  {state}")
            return 0
        group = groups_mod.find_group(args.group)
        if args.mount_action == "add":
            m = mounts.add(cfg, group, args.host_path, args.name, args.rw, args.allow_git_config)
            mode = "read-only" if not m.rw else "read-write" + (
                ", git's configuration and hooks too" if m.allow_git_config else
                "; git's configuration and hooks read-only to the agent")
            print(f"{group.folder}: {m.host_path} at /workspace/extra/{m.name} ({mode}), from its next container on")
        else:
            mounts.remove(group, args.name)
            print(f"{group.folder}: /workspace/extra/{args.name} removed, from its next container on")
    except (mounts.MountError, groups_mod.GroupError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parsers(gsub: argparse._SubParsersAction) -> None:
    gm = gsub.add_parser("mount", help="the owner's folders in a group's containers (allowlist: "
                                       "CONFIG/mount-allowlist.toml)")
    msub = gm.add_subparsers(dest="mount_action", required=True)
    ma = msub.add_parser("add", help="mount HOST_PATH at /workspace/extra/NAME in GROUP's containers")
    ma.add_argument("group")
    ma.add_argument("host_path")
    ma.add_argument("--as", dest="name", help="the name inside (default: the folder's name)")
    ma.add_argument("--rw", action="store_true", help="read-write (where the allowlist permits it)")
    ma.add_argument("--allow-git-config", action="store_true",
                    help="with --rw: let the agent change the repositories' .git/config, hooks and commondir "
                         "too, i.e. what git runs when you use it there (read-only to it otherwise)")
    ml = msub.add_parser("list", help="every mount, and whether the allowlist allows it now")
    ml.add_argument("group", nargs="?")
    mr = msub.add_parser("remove", help="remove GROUP's mount NAME")
    mr.add_argument("group")
    mr.add_argument("name")
