"""Deciding whether a group's agent must run, and what it is told.

The prompt wraps chat messages in XML-ish tags. Message text is escaped, so a
message cannot close the wrapper and pose as the system or another sender.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from xml.sax.saxutils import escape
from zoneinfo import ZoneInfo

from .models import Message

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def matches_trigger(text: str, trigger: str) -> bool:
    """True when ``text`` starts with ``trigger`` (case-insensitive, as a whole word)."""
    return re.match(rf"\s*{re.escape(trigger)}(?!\w)", text, re.IGNORECASE) is not None


def needs_agent(messages: Sequence[Message], *, requires_trigger: bool, trigger: str,
                allowed: set[str] | None) -> bool:
    """Whether pending ``messages`` wake the agent.

    Bot messages never do. Without a trigger requirement (the main group) any
    message from an allowed sender does; otherwise one must start with the
    trigger. ``allowed`` None means every sender is allowed.
    """
    for m in messages:
        if m.is_bot or (allowed is not None and m.sender not in allowed):
            continue
        if not requires_trigger or matches_trigger(m.text, trigger):
            return True
    return False


def _clean(text: str) -> str:
    return _CONTROL.sub("", text)


def _attr(value: str) -> str:
    """An always double-quoted, fully escaped attribute value."""
    return '"' + escape(_clean(value), {'"': "&quot;", "'": "&apos;"}) + '"'



def build_prompt(messages: Sequence[Message], *, cap: int, tz: str, omitted: int = 0) -> str:
    """Format the newest ``cap`` messages, saying how many older ones were left out.

    ``omitted`` counts messages already known to be left out beyond ``messages``.
    """
    shown = list(messages)[-cap:]
    left_out = omitted + len(messages) - len(shown)
    zone = ZoneInfo(tz)
    lines = []
    if left_out:
        lines.append(f'<omitted count="{left_out}">{left_out} older unanswered '
                     f'message{"s" if left_out != 1 else ""} not shown</omitted>')
    lines.append("<messages>")
    for m in shown:
        when = datetime.fromtimestamp(m.timestamp, zone).strftime("%Y-%m-%d %H:%M:%S")
        lines.append(f"<message sender={_attr(m.sender_name or m.sender)} time={_attr(when)}>"
                     f"{escape(_clean(m.text))}</message>")
    lines.append("</messages>")
    return "\n".join(lines)


def backoff(failures: int, base: float, cap: float) -> float:
    """Seconds to wait before retry number ``failures`` (1-based): base·2^(n-1), capped."""
    if failures < 1:
        return 0.0
    return min(cap, base * (2 ** (failures - 1)))
