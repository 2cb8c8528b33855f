"""A team member's file: its format, read and written. The one parser of it.

SUMMARY
    A member is ``groups/<folder>/agents/<name>.md``, in the shape of Claude
    Code's subagent files: front matter, then the member's instructions::

        ---
        description: finds flights, trains and prices
        model: claude-sonnet-4-5        (optional)
        tools: Read, Bash, WebFetch     (optional: only these, besides nanoclaw's own)
        ---
        You are the team's researcher. ...

SYNOPSIS
    parse(name, text) -> Member      the file's contents, checked; TeamError says what is wrong
    render(member) -> str            the file for a member (parse(render(m)) gives m back)
    display(name) -> str             how the chat sees a member: 'researcher' is 'Researcher'

DESCRIPTION
    The host (``nanoclaw.core.team``) and the agent runner inside every
    container (``container/team.py``) read member files with this module, so
    both see the same description, model, tools and instructions: a value may
    be quoted ('...' or "..."), a colon in a value is part of it, blank lines
    and ``#`` comments in the front matter are skipped, and a line that is not
    ``key: value``, an unknown key or a front matter left open makes the file
    refused. It imports nothing of nanoclaw's: ``nanoclaw image build`` copies
    it into the agent image as a top-level module.

SECURITY
    Member files are written only by the host; agents see them read-only. The
    text is still bounded here (the description's length) and the tools must
    be plain names, since they end up on the claude CLI's command line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MAX_DESCRIPTION = 500
KEYS = ("name", "description", "model", "tools")
TOOL_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,63}")


class TeamError(ValueError):
    """A team change (or member file) that is refused; the text says why."""


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
    unknown = set(front) - set(KEYS)
    if unknown:
        raise TeamError(f"{name}: unknown front matter {sorted(unknown)[0]!r} (description, model, tools)")
    if front.get("name", name) != name:
        raise TeamError(f"{name}: its front matter names it {front['name']!r}")
    description = front.get("description", "")
    if not description:
        raise TeamError(f"{name}: a member needs a description (what it is for)")
    tools = tuple(t.strip() for t in front.get("tools", "").strip("[]").split(",") if t.strip())
    if any(not TOOL_NAME.fullmatch(t) for t in tools):
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
