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
    read_all(d, refused) -> [Member] every member file in the agents/ folder ``d``, parsed
    read(d, name) -> Member          one member's file in ``d``
    parse(name, text) -> Member      one file's contents, checked; TeamError says what is wrong
    validate_name(name) -> name      a member's name, or TeamError
    render(member) -> str            the file for a member (parse(render(m)) gives m back)
    display(name) -> str             how the chat sees a member: 'researcher' is 'Researcher'

DESCRIPTION
    The host (``nanoclaw.core.team``) and the agent runner inside every
    container (``container/team.py``) read member files with this module, so
    both see the same members with the same description, model, tools and
    instructions: a value may be quoted ('...' or "...": one pair around the
    whole value is taken off, a quote elsewhere is kept), a colon in a value
    is part of it, blank lines and ``#`` comments in the front matter are
    skipped, and a line that is not ``key: value``, an unknown key, a front
    matter left open, a bad name or a file that cannot be read makes the file
    refused. It imports nothing of nanoclaw's: ``nanoclaw image build`` copies
    it into the agent image as a top-level module.

READS / WRITES
    ``read`` and ``read_all`` read the files through the ``safefs.Dir`` of an
    ``agents/`` folder they are given; nothing here writes (``render`` gives
    the text, ``nanoclaw.core.team`` writes it through safefs).

SECURITY
    Member files are written only by the host; agents see them read-only. The
    text is still bounded here (the description's length) and the tools must
    be plain names, since they end up on the claude CLI's command line.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# A member's name is the shape of a group's folder (config.FOLDER_RE): it names containers and directories.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
RESERVED = {"lead", "all", "global"}
MAX_FILE = 64 * 1024  # bytes: a larger file is refused unread
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


def validate_name(name: str) -> str:
    if not NAME.fullmatch(name or "") or name.lower() in RESERVED:
        raise TeamError(f"invalid member name {name!r}: 1-64 of A-Z a-z 0-9 _ -, starting with a letter or digit,"
                        f" not {', '.join(sorted(RESERVED))}")
    return name


def read_all(d: Any, refused: Callable[[str, Exception], None]) -> list[Member]:
    """The members in ``d``, the agents/ folder opened as a safefs ``Dir`` (so no link is
    followed), by name. A file that cannot be read or parsed is left out, after
    ``refused(name, why)``."""
    out = []
    for filename in d.names():
        if not filename.endswith(".md"):
            continue
        try:
            out.append(read(d, filename[:-3]))
        except (TeamError, OSError, UnicodeDecodeError) as exc:  # safefs refusals are OSErrors
            refused(filename[:-3], exc)
    return out


def read(d: Any, name: str) -> Member:
    """Member ``name``'s file in ``d`` (as for read_all). TeamError says what is wrong with it,
    OSError why it cannot be read (safefs: a link, too large), UnicodeDecodeError that it is
    not text."""
    validate_name(name)
    return parse(name, d.read(f"{name}.md", MAX_FILE).decode())


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
            front[key.strip()] = unquote(value.strip())
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


def unquote(value: str) -> str:
    """A front matter value without the one pair of quotes around it, if it has them:
    '"a: b"' is 'a: b', but 'the "best"' keeps its quotes."""
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def quote(value: str) -> str:
    """A value as it is written, so that unquote gives it back."""
    return f'"{value}"' if unquote(value) != value else value


def render(member: Member) -> str:
    """The file for ``member``; TeamError if a value would not stay on its line (a newline in
    a model name would write front matter of its own)."""
    for what, value in (("description", member.description), ("model", member.model), *(
            ("tools", t) for t in member.tools)):
        if "\n" in value or "\r" in value:
            raise TeamError(f"{member.name}: the {what} must be one line")
    lines = ["---", f"description: {quote(member.description)}"]
    if member.model:
        lines.append(f"model: {quote(member.model)}")
    if member.tools:
        lines.append(f"tools: {', '.join(member.tools)}")
    return "\n".join(lines + ["---", member.instructions.strip(), ""])
