"""A group's team: specialised agents its lead (the group's own agent) hands work to.

DESCRIPTION
    A member is ``groups/<folder>/agents/<name>.md``: front matter, then the
    member's instructions (the format, and its one parser, the container's
    too, are in :mod:`nanoclaw.core.member_file`).

    Each member runs in its own container (``nanoclaw-<folder>--<name>-<job>``)
    with the group's folder as the team's shared workspace, its own IPC
    directories and its own session. Work moves between agents as messages
    (``Message.agent`` names whom one is for): a *delegation* from the lead or
    a member, and a member's *result* back to whoever asked, so the queue's
    cursors, turns and outbox carry them as durably as chat messages. People
    can address a member directly: "@Researcher what about Porto?".

SECURITY
    The files are written only by the host (the CLI, or the ipc daemon for the
    lead's ``create_agent``), through safefs, and the ``agents/`` folder is
    mounted read-only into every container of the group: an agent cannot make
    or change a member. They are read with safefs too (a link is not followed).
"""

from __future__ import annotations

import logging
from typing import Any

from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
# The file's format, shared with the container; callers of team use these names from here too.
from nanoclaw.core.member_file import (Member, TeamError, display, parse, read_all, render,  # noqa: F401
                                       validate_name)
from nanoclaw.core.prompt import matches_trigger
from nanoclaw.core.safefs import Dir, UnsafeEntry

AGENTS = "agents"  # in the group's folder
log = logging.getLogger("nanoclaw.team")


def sender(agent: str) -> str:
    """The sender of team messages an agent writes ("" is the lead)."""
    return f"agent:{agent or 'lead'}"


def members(cfg: Config, folder: str) -> list[Member]:
    """The group's members, by name; a file that cannot be read or parsed is logged and left out."""
    try:
        d = Dir.open(cfg.groups_dir / folder, AGENTS)
    except (FileNotFoundError, UnsafeEntry):
        return []

    def refused(name: str, why: Exception) -> None:
        log.error("member file refused: %s", why, extra=log_fields(group=folder, agent=name))

    with d:
        return read_all(d, refused)[:cfg.team.max_members]


def member(cfg: Config, folder: str, name: str) -> Member | None:
    return next((m for m in members(cfg, folder) if m.name == name), None)


def write(cfg: Config, folder: str, new: Member) -> Member:
    """Make or replace a member (the CLI, or the lead's create_agent through ipc)."""
    validate_name(new.name)
    checked = parse(new.name, render(new))  # the same checks as reading it back
    present = {m.name for m in members(cfg, folder)}
    if new.name not in present and len(present) >= cfg.team.max_members:
        raise TeamError(f"group {folder} has {len(present)} members already (the cap is "
                        f"{cfg.team.max_members}: [team] max_members)")
    with Dir.open(cfg.groups_dir / folder, create=True) as group, group.ensure_dir(AGENTS) as d:
        d.write(f"{new.name}.md", render(checked).encode(), 0o644)
    return checked


def remove(cfg: Config, folder: str, name: str) -> None:
    try:
        with Dir.open(cfg.groups_dir / folder, AGENTS) as d:
            if d.unlink(f"{validate_name(name)}.md"):
                return
    except (FileNotFoundError, UnsafeEntry):
        pass
    raise TeamError(f"group {folder} has no member {name!r} (see: nanoclaw agents list {folder})")


def addressee(message: Any, names: list[str]) -> str:
    """Whom a stored message is for: "" (the lead) or a member's name.

    A team message says so itself; a chat message is a member's when it starts
    with "@<Member>" (its display name, or its name), else the lead's.
    """
    if getattr(message, "agent", None) is not None:
        return message.agent
    for name in names:
        if matches_trigger(message.text, f"@{display(name)}") or matches_trigger(message.text, f"@{name}"):
            return name
    return ""
