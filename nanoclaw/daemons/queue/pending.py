"""pending: which of an agent's pending messages its next turn covers, and when.

SUMMARY
    The rules ``plan.py`` applies to one agent's pending messages (those past its
    cursor), as plain functions of them: the owner's commands taken out of the main
    chat's, the turn held for a voice note still being transcribed, a chat's burst
    waited out, and the prompt cut to what a spool file holds. Like ``plan.py``, nothing
    here reads the database, the disk or the clock.

SYNOPSIS
    next_prompt(group, agent, pending, rules) -> (batch, prompt)
    turns(group, agent, pending, rules) -> [(batch, prompt), ...]
    owner_command(message, main, groups) -> bool
    owner_answers(main, pending, groups) -> (answers, rest)
    until_heard(pending, wait) -> (pending, held_until | None)
    burst_settles(bursts, key, pending, now, window) -> float | None

HOSTILE INPUT
    The messages' text, which chat members wrote: only matched (``core.prompt``,
    ``approval_answers.py``, ``owner_chat.py``), never run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from nanoclaw.core import transcripts
from nanoclaw.core.prompt import build_prompt, next_batch
from nanoclaw.daemons.queue import owner_chat
from nanoclaw.daemons.queue.approval_answers import parse_command

if TYPE_CHECKING:
    from nanoclaw.daemons.queue.plan import AgentKey, Burst, GroupState, Rules

BURST_CAP = 5  # a burst is handed over at most this many windows after its first message


def next_prompt(g: GroupState, agent: str, pending: Sequence, rules: Rules) -> tuple[list, str]:
    """The messages the next prompt covers and that prompt; ([], "") if none is for the agent.

    Every message addressed to the agent reaches it (in several turns when there are more
    than ``prompt_batch``); only older context is capped. A prompt that would not fit a
    spool file covers fewer messages.
    """
    size = rules.prompt_batch
    # A member's pending messages were all addressed to it ("@Researcher ..." or its team's).
    requires_trigger = g.requires_trigger and not g.is_main and not agent
    while True:
        batch, shown = next_batch(pending, cap=rules.prompt_cap, batch=size, trigger=g.trigger,
                                  requires_trigger=requires_trigger, allowed=g.allowed, owner=g.owner_asks)
        if not batch:
            return [], ""
        prompt = build_prompt(batch, cap=shown, tz=rules.tz)
        if len(prompt.encode()) <= rules.prompt_bytes or size == 1:
            return batch, prompt
        size = max(1, size // 2)


def turns(g: GroupState, agent: str, pending: Sequence, rules: Rules) -> list[tuple[list, str]]:
    """As many follow-up turns as it takes for every message addressed to the agent."""
    out = []
    while True:
        batch, prompt = next_prompt(g, agent, pending, rules)
        if not batch:
            return out
        out.append((batch, prompt))
        pending = pending[len(batch):]


def owner_command(m: Any, main: GroupState, groups: frozenset[str] = frozenset()) -> bool:
    """Whether a main-chat message is the owner's ``approve N``/``deny N`` (or ``stop
    [GROUP]``, ``status``, ``revoke NAME``: owner_chat.py; ``groups`` the words that
    name a group): from the owner's own account or a sender the main chat admits; never
    ours (bot) nor a team's."""
    if m.is_bot or getattr(m, "agent", None) is not None:
        return False
    if parse_command(m.text, main.trigger) is None and owner_chat.parse(m.text, main.trigger, groups) is None:
        return False
    return m.from_me or main.allowed is None or m.sender in main.allowed


def owner_answers(main: GroupState, pending: list, groups: frozenset[str]) -> tuple[list, list]:
    """The owner's answers among the main chat's pending messages (for nanoclaw to carry
    out), and the rest (for the main agent)."""
    answers, rest = [], []
    for m in pending:
        (answers if owner_command(m, main, groups) else rest).append(m)
    return answers, rest


def until_heard(pending: list, wait: float) -> tuple[list, float | None]:
    """The pending messages a turn may cover now: those before the first voice note still
    being transcribed (``core.transcripts``), and when that note's wait ends (None: none waits).
    Its wait has a limit: the queue gives the transcript up then, and the turn goes ahead."""
    for i, m in enumerate(pending):
        until = transcripts.waiting_until(getattr(m, "media", None), m.timestamp, wait)
        if until is not None:
            return pending[:i], until
    return pending, None


def burst_settles(bursts: dict[AgentKey, Burst], key: AgentKey, pending: Sequence, now: float,
                   window: float) -> float | None:
    """When the chat messages pending for an agent may go to it, if not now (``bursts`` is
    updated).

    With ``burst_window`` set, they wait until no new one has come for a window, or
    ``BURST_CAP`` windows after the first of them, whichever is sooner. Arrival is when
    this queue first saw a message (the channel nudges it on each), not the time the
    chat network stamped on it. Team messages never wait, nor do they start a burst.
    """
    newest = max((m.id for m in pending if getattr(m, "agent", None) is None), default=0)
    if window <= 0 or not newest:
        bursts.pop(key, None)
        return None
    first, seen_id, seen_at = bursts.get(key, (now, 0, now))
    if newest != seen_id:
        seen_at = now
    bursts[key] = (first, newest, seen_at)
    ready = min(seen_at + window, first + BURST_CAP * window)
    return None if now >= ready else ready
