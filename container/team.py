"""The group's team as this container sees it: the member files the host wrote.

SYNOPSIS
    members(ctx) -> dict[name, Member]   every member the host would accept
    me(ctx) -> Member | None             the member this container runs (None for the lead)

DESCRIPTION
    ``/workspace/group/agents/`` is mounted read-only; only the host writes
    it. It is read as the host reads it, with ``member_file`` (the host's own
    module, copied into the image) through a ``safefs.Dir``, so a file the
    host refuses (a line that is not ``key: value``, a bad name, a link) is
    left out here too, and a quoted value means the same on both sides.

READS
    ``/workspace/group/agents/*.md`` (read-only here). Writes nothing: a new
    member is the lead's ``create_agent`` request, written by the host.

HOSTILE INPUT
    None trusted across a boundary: the files are the host's, but they are
    read as the host reads them (no link followed, size bounded, a file that
    does not parse left out) so the two sides cannot disagree.
"""

from __future__ import annotations

import member_file
from context import Context, log
from member_file import Member, TeamError
from safefs import Dir

AGENTS = "agents"  # in the group's folder


def members(ctx: Context) -> dict[str, Member]:
    try:
        d = Dir.open(ctx.group_dir, AGENTS)
    except OSError:  # no team yet (or not a directory: the host would not read it either)
        return {}
    with d:
        found = member_file.read_all(d, lambda name, why: log(f"member file {name} refused: {why}"))
    return {m.name: m for m in found}


def me(ctx: Context) -> Member | None:
    """The member this container runs (None for the lead, or if its file cannot be read)."""
    if not ctx.agent:
        return None
    try:
        with Dir.open(ctx.group_dir, AGENTS) as d:
            return member_file.read(d, ctx.agent)
    except (TeamError, OSError, UnicodeDecodeError) as exc:
        log(f"the member file of {ctx.agent} cannot be read: {exc}")
        return None
