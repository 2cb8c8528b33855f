"""nanoclaw agents: a group's team, the members its lead agent can delegate to.

SYNOPSIS
    add_parsers(sub)                 the agents command
    cmd_agents(cfg, args)            list, add (or replace), remove a member (core/team.py writes its file)
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from nanoclaw.core import config as config_mod
from nanoclaw.core.protocol import nudge


def cmd_agents(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    """A group's team: the members its lead can delegate to (files the host writes)."""
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import model_choice
    from nanoclaw.core import team
    from nanoclaw.core.models import Group, Job, open_db
    open_db(cfg.db_path)
    try:
        if args.agents_action == "list":
            groups = [groups_mod.find_group(args.group)] if args.group else list(Group.select().order_by(Group.folder))
            shown = 0
            for group in groups:
                live = {j.agent: j.status for j in Job.select().where(Job.group == group, Job.agent != "",
                                                                      Job.status.in_(("queued", "running")))}
                for m in team.members(cfg, group.folder):
                    extra = "".join([f"  model={m.model}" if m.model else "",
                                     f"  tools={','.join(m.tools)}" if m.tools else "",
                                     f"  [{live[m.name]}]" if m.name in live else ""])
                    print(f"{group.folder:<16} {m.name:<16} {m.description}{extra}")
                    shown += 1
            if not shown:
                print("no team members (add one: nanoclaw agents add GROUP NAME --description TEXT "
                      "--instructions TEXT)")
            return 0
        group = groups_mod.find_group(args.group)
        if args.agents_action == "add":
            instructions = args.instructions
            if args.file:
                instructions = Path(args.file).read_text()
            if not instructions:
                raise team.TeamError("give the member's instructions: --instructions TEXT or --file PATH")
            tools = tuple(t.strip() for t in (args.tools or "").split(",") if t.strip())
            try:
                model = model_choice.check(cfg, args.model or "", "the member's model")
            except model_choice.ModelError as exc:
                raise team.TeamError(str(exc)) from None
            m = team.write(cfg, group.folder, team.Member(args.name, args.description or "", instructions,
                                                          model, tools))
            print(f"{group.folder}: {m.display} ({m.name}) is on the team: {m.description}")
            nudge(cfg.socket("queue"))
        else:
            team.remove(cfg, group.folder, args.name)
            print(f"{group.folder}: {args.name} removed from the team (its memory is kept)")
    except (team.TeamError, groups_mod.GroupError, OSError) as exc:
        print(f"nanoclaw: {exc}", file=sys.stderr)
        return 2
    return 0


def add_parsers(sub: argparse._SubParsersAction) -> None:
    sp = sub.add_parser("agents", help="a group's team of agents: list, add, remove")
    sp.set_defaults(run=cmd_agents)
    asub = sp.add_subparsers(dest="agents_action", required=True)
    al = asub.add_parser("list", help="the members of one group's team, or of all")
    al.add_argument("group", nargs="?")
    aa = asub.add_parser("add", help="add (or replace) a member: groups/GROUP/agents/NAME.md")
    aa.add_argument("group")
    aa.add_argument("name", help="letters, digits, - and _ (it speaks as its name in title case)")
    aa.add_argument("--description", required=True, help="what it is for, in one line")
    aa.add_argument("--instructions", help="its standing instructions")
    aa.add_argument("--file", help="read the instructions from this file")
    aa.add_argument("--model", help="a model of its own (default: the group's)")
    aa.add_argument("--tools", help="only these built-in tools, comma-separated (e.g. Read,Bash,WebFetch)")
    ar = asub.add_parser("remove", help="remove a member (its session and memory are kept)")
    ar.add_argument("group")
    ar.add_argument("name")
