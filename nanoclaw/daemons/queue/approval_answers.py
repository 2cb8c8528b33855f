"""The owner's answers in the main chat: ``approve N``, ``approve N as FOLDER``, ``deny N``.

SUMMARY
    Recognise the owner's words (the trigger in front is allowed) and carry them out once,
    through the records of core/approvals.py. Anything else is an ordinary message for the
    main agent.

SYNOPSIS
    parse_command(text, trigger) -> ("approve"|"deny", N, folder or None) | None
    handle_command(cfg, msg, main) -> "now" | "earlier" | ""

DESCRIPTION
    The queue's plan asks ``parse_command`` whether a main-chat message is such an answer
    (it then never reaches the main agent); the queue carries it out with
    ``handle_command``, whose one-line answer is an outbox row keyed by the message, so a
    second look (a restart, the next pass) repeats nothing.

HOSTILE INPUT
    The message text is whoever wrote in the main chat: it is the owner's only when it is
    from the owner's own account or a sender the main chat's policy admits; our own (bot)
    messages and team messages never are, whatever they say.
"""

from __future__ import annotations

import re

from nanoclaw.core import groups as groups_mod
from nanoclaw.core.approvals import ApprovalError, _post, approve, deny  # noqa: PLC2701
from nanoclaw.core.config import Config
from nanoclaw.core.models import Group, Message, Outbox, db
from nanoclaw.core.prompt import matches_trigger

# The owner's answer in the main chat: "approve 7", "approve 7 as lisbon", "deny 7" (the
# trigger in front is allowed). Anything else is an ordinary message for the main agent.
_COMMAND = re.compile(r"(approve|deny)\s+#?(\d{1,9})(?:\s+as\s+(\S+))?\s*[.!]?\s*", re.IGNORECASE)


def parse_command(text: str, trigger: str = "") -> tuple[str, int, str | None] | None:
    """("approve"|"deny", N, folder or None) if ``text`` is the owner's answer, else None."""
    text = text.strip()
    if trigger and matches_trigger(text, trigger):
        text = text.strip()[len(trigger):].lstrip(" ,:")
    m = _COMMAND.fullmatch(text)
    if m is None:
        return None
    return m.group(1).lower(), int(m.group(2)), m.group(3)


def handle_command(cfg: Config, msg: Message, main: Group) -> str:
    """If ``msg`` (in the main chat) is the owner's ``approve N``/``deny N``, carry it out once
    and answer in one line. Returns "" when it is not such an answer (it is for the main
    agent), "now" when it was carried out now, "earlier" when in an earlier pass (the answer
    is recorded in the outbox with it, so a crash or a second look repeats nothing). A
    message is the owner's when it is from the owner's own account or a sender the main
    chat's policy admits; our own (bot) messages and team messages never are."""
    if msg.is_bot or getattr(msg, "agent", None) is not None:
        return ""
    cmd = parse_command(msg.text, main.trigger)
    if cmd is None:
        return ""
    allowed = groups_mod.senders_for(cfg, main)
    if not msg.from_me and allowed is not None and msg.sender not in allowed:
        return ""
    key = f"approval:answer:{msg.id}"
    if Outbox.select().where(Outbox.key == key).exists():
        return "earlier"
    verb, n, folder = cmd
    try:
        if verb == "approve":
            approve(cfg, n, folder, by="main", answer=(main.jid, key))
        else:
            if folder:
                raise ApprovalError(f"deny takes no folder: reply `deny {n}`")
            deny(cfg, n, by="main", answer=(main.jid, key))
    except ApprovalError as exc:
        with db.atomic("IMMEDIATE"):
            _post(main.jid, key, f"{verb} {n}: {exc}", cfg)
    return "now"
