"""nanoclaw ping, doctor, status, spool: is it all running, and what is stuck.

SYNOPSIS
    add_parsers(sub)                 the ping, doctor, status and spool commands
    cmd_ping(cfg, args)              every daemon's status line (exit 1 if one is down)
    cmd_doctor(cfg, args)            every prerequisite checked, with fixes (admin/checks.py), or the
                                     container options found again, the storage chosen (admin/doctor.py)
    cmd_status(cfg, args)            one screen (admin/status.py)
    cmd_spool(cfg, args)             what waits or was refused in the spools; show, retry, drop (admin/spools.py)
"""

from __future__ import annotations

import argparse
import sys

from nanoclaw import DAEMONS
from nanoclaw.core import config as config_mod


def cmd_ping(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Ask each daemon for its status line."""
    from nanoclaw.admin.status import ask_status
    worst = 0
    for name in DAEMONS:
        reply, error = ask_status(cfg, name)
        if reply is None:
            print(f"{name:<8} DOWN  {error}")
            worst = 1
        else:
            print(f"{name:<8} up    {reply.get('status', '')}")
    return worst


def cmd_spool(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """What waits or was refused in the spools; show, retry or drop one file."""
    from nanoclaw.admin import spools
    try:
        if args.action == "list":
            print("\n".join(spools.listing(cfg)))
        elif not args.name:
            print(f"nanoclaw: spool {args.action} needs a file name (see: nanoclaw spool)", file=sys.stderr)
            return 2
        else:
            print({"show": spools.show, "retry": spools.retry, "drop": spools.drop}[args.action](cfg, args.name))
    except (ValueError, OSError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_doctor(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """Every check with its fix; or --storage, --redetect, --check-runtime alone."""
    from nanoclaw.admin import doctor
    if args.storage:
        return doctor.choose_storage(cfg)
    if args.redetect:
        return doctor.redetect(cfg)
    if args.check_runtime:
        result = doctor.check_runtime(cfg)
        print("the configured container options work" if result.ok else f"they do not: {result.error}")
        return 0 if result.ok else 1
    from nanoclaw.admin.checks import Doctor
    return Doctor(cfg).run()


def cmd_status(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    from nanoclaw.admin import status
    return status.show(cfg)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sub.add_parser("ping", help="ask every daemon for its status")
    sp = sub.add_parser("doctor", help="check every prerequisite and print fixes")
    mode = sp.add_mutually_exclusive_group()
    mode.add_argument("--redetect", action="store_true",
                      help="find the container options this host needs by trying them; write them to "
                           "CONFIG/detected.toml and say what changed")
    mode.add_argument("--check-runtime", action="store_true",
                      help="only try the configured container options (exit 0 if a container starts)")
    mode.add_argument("--storage", action="store_true",
                      help="(install.sh) use fuse-overlayfs where Podman would fall back to the slow vfs driver")
    sub.add_parser("status", help="one screen: units, channel, groups, agents, queue, tasks")
    sp = sub.add_parser("spool", help="what waits or was refused in the spools; show, retry or drop a file")
    sp.add_argument("action", nargs="?", default="list", choices=["list", "show", "retry", "drop"])
    sp.add_argument("name", nargs="?", help="a spool file's name (or an unambiguous start of it)")
    for name, run in (("ping", cmd_ping), ("doctor", cmd_doctor), ("status", cmd_status), ("spool", cmd_spool)):
        sub.choices[name].set_defaults(run=run)
