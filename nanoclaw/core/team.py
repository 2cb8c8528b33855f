"""A group's team: specialised agents its lead (the group's own agent) hands work to.

DESCRIPTION
    A member is ``groups/<folder>/agents/<name>.md``, in the shape of Claude
    Code's subagent files: front matter, then the member's instructions::

        ---
        description: finds flights, trains and prices
        model: claude-sonnet-4-5        (optional)
        tools: Read, Bash, WebFetch     (optional: only these, besides nanoclaw's own)
        ---
        You are the team's researcher. ...

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
import re
from dataclasses import dataclass
from typing import Any

from nanoclaw.core.config import Config
from nanoclaw.core.groups import FOLDER_RE
from nanoclaw.core.log import log_fields
from nanoclaw.core.prompt import matches_trigger
from nanoclaw.core.safefs import Dir, UnsafeEntry

AGENTS = "agents"  # in the group's folder
RESERVED = {"lead", "all", "global"}
MAX_FILE = 64 * 1024
MAX_DESCRIPTION = 500
log = logging.getLogger("nanoclaw.team")


class TeamError(ValueError):
    """A team change that is refused; the text says why."""


@dataclass(frozen=True)
class Member:
    name: str
    description: str
    instructions: str
    model: str = ""
    tools: tuple[str, ...] = ()

    @property
    def display(self) -> str:
        """How the chat sees the member: 'researcher' speaks as 'Researcher'."""
        return display(self.name)


def display(name: str) -> str:
    return name.replace("_", " ").replace("-", " ").title()


def sender(agent: str) -> str:
    """The sender of team messages an agent writes ("" is the lead)."""
    return f"agent:{agent or 'lead'}"


def validate_name(name: str) -> str:
    if not FOLDER_RE.fullmatch(name or "") or name.lower() in RESERVED:
        raise TeamError(f"invalid member name {name!r}: 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit,"
                        f" not {', '.join(sorted(RESERVED))}")
    return name


def parse(name: str, text: str) -> Member:
    """A member file's contents; TeamError says what is wrong."""
    front, body = {}, text
    if text.startswith("---\n"):
        head, sep, rest = text[4:].partition("\n---")
        if not sep:
            raise TeamError(f"{name}: the front matter is not closed by a line '---'")
        body = rest.lstrip("-").lstrip("\n")
        for line in head.splitlines():
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            key, colon, value = line.partition(":")
            if not colon:
                raise TeamError(f"{name}: front matter line {line!r} is not 'key: value'")
            front[key.strip()] = value.strip().strip("'\"")
    unknown = set(front) - {"name", "description", "model", "tools"}
    if unknown:
        raise TeamError(f"{name}: unknown front matter {sorted(unknown)[0]!r} (description, model, tools)")
    if front.get("name", name) != name:
        raise TeamError(f"{name}: its front matter names it {front['name']!r}")
    description = front.get("description", "")
    if not description:
        raise TeamError(f"{name}: a member needs a description (what it is for)")
    tools = tuple(t.strip() for t in front.get("tools", "").strip("[]").split(",") if t.strip())
    if any(not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]{0,63}", t) for t in tools):
        raise TeamError(f"{name}: tools must be tool names separated by commas")
    if not body.strip():
        raise TeamError(f"{name}: a member needs instructions (the text after the front matter)")
    return Member(name, description[:MAX_DESCRIPTION], body.strip(), front.get("model", ""), tools)


def render(member: Member) -> str:
    lines = ["---", f"description: {member.description}"]
    if member.model:
        lines.append(f"model: {member.model}")
    if member.tools:
        lines.append(f"tools: {', '.join(member.tools)}")
    return "\n".join(lines + ["---", member.instructions.strip(), ""])


def members(cfg: Config, folder: str) -> list[Member]:
    """The group's members, by name; a file that cannot be read or parsed is logged and left out."""
    out = []
    try:
        d = Dir.open(cfg.groups_dir / folder, AGENTS)
    except (FileNotFoundError, UnsafeEntry):
        return []
    with d:
        for filename in d.names():
            if not filename.endswith(".md"):
                continue
            name = filename[:-3]
            try:
                validate_name(name)
                out.append(parse(name, d.read(filename, MAX_FILE).decode()))
            except (TeamError, UnsafeEntry, UnicodeDecodeError) as exc:
                log.error("member file refused: %s", exc, extra=log_fields(group=folder, agent=name))
    return out[:cfg.team.max_members]


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
