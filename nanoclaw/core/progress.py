"""What an agent is doing now: the words every process shows it in.

SYNOPSIS
    kind_of(tool) -> "shell" | "web" | "team" | "files" | "tool"
    clean(text, limit) -> one line, no control characters, at most ``limit`` characters
    from_agent(body) -> (state, tool, detail) or None        ipc: a container's report, checked
    describe(state, tool, detail) -> "running Bash: git log"  the terminal's status line

DESCRIPTION
    A turn goes through these states. The container reports two of them (through
    its ``out/`` spool, as ``progress``): ``working`` (a turn began, or a tool
    ended) and ``tool`` (a tool began, with its name and what it was given). The
    queue, which knows the turns, adds the others: ``accepted`` (the turn will be
    answered), ``replied`` (its reply is queued), ``silent`` (nothing to say),
    ``waiting`` (its container ended before it did: it runs again later, or waits
    for a budget or the disk) and ``failed`` (the chat was told it failed).

    Everything a container says here is hostile: the state is one of two words,
    the tool's name and detail are cleaned of control and invisible characters
    (and line breaks) and cut short, and none of it ever becomes a journal field.
"""

from __future__ import annotations

import unicodedata

AGENT_STATES = ("working", "tool")  # what a container may report
STATES = ("accepted", "working", "tool", "replied", "silent", "waiting", "failed")
BUSY = ("working", "tool")  # an agent is running this turn: "typing…" shows
TOOL_MAX = 40  # characters of a tool's name shown
DETAIL_MAX = 60  # characters of what a tool was given (a command, a URL) shown

_SHELL = {"bash", "bashoutput", "killshell", "killbash"}
_WEB = {"websearch", "webfetch"}
_TEAM = {"task", "agent", "mcp__nanoclaw__delegate", "mcp__nanoclaw__create_agent"}
_FILES = {"read", "write", "edit", "multiedit", "glob", "grep", "notebookedit", "ls"}


def kind_of(tool: str) -> str:
    """The kind of a tool, where it helps to show it: a shell, the web, a team member, files."""
    t = tool.lower()
    if t in _SHELL:
        return "shell"
    if t in _WEB:
        return "web"
    if t in _TEAM:
        return "team"
    if t in _FILES:
        return "files"
    return "tool"


def clean(text: object, limit: int) -> str:
    """One line of at most ``limit`` characters with no control, format or unassigned
    characters (no escape sequences, no bidi overrides, no line breaks)."""
    if not isinstance(text, str):
        return ""
    text = text[: limit * 8]  # bound the work on a huge string before looking at each character
    kept = "".join(" " if ch in "\t\r\n" else ch for ch in text
                   if ch in "\t\r\n" or unicodedata.category(ch)[0] != "C")
    line = " ".join(kept.split())
    return line if len(line) <= limit else line[: limit - 1].rstrip() + "…"


def from_agent(body: dict) -> tuple[str, str, str] | None:
    """A container's ``progress`` body as the host may use it, or None if it is not one."""
    state = body.get("state")
    if state not in AGENT_STATES:
        return None
    if state == "working":
        return state, "", ""
    tool = clean(body.get("tool"), TOOL_MAX)
    if not tool:
        return None
    return state, tool, clean(body.get("detail"), DETAIL_MAX)


def detail_of(tool: str, given: object) -> str:
    """The container's side: what a tool was given that says what it does (a command, a
    URL, a query, a file, whom it asks), cut short; "" when nothing helps."""
    if not isinstance(given, dict):
        return ""
    for key in ("command", "url", "query", "file_path", "pattern", "agent", "description", "prompt"):
        value = given.get(key)
        if isinstance(value, str) and value.strip():
            return clean(value, DETAIL_MAX)
    return ""


def describe(state: str, tool: str = "", detail: str = "") -> str:
    """What the agent is doing now, in a few words."""
    if state == "tool" and tool:
        return f"running {tool}: {detail}" if detail else f"running {tool}"
    return {"accepted": "about to start", "working": "thinking", "replied": "sending the reply",
            "waiting": "waiting"}.get(state, state)
