"""Outbound text as the chat should see it."""

from __future__ import annotations

import re

_INTERNAL = re.compile(r"<internal>.*?(?:</internal>|$)", re.DOTALL | re.IGNORECASE)

# Chats where our messages go out from the owner's own account (WhatsApp):
# without a name prefix nobody could tell the assistant from the owner.
_PREFIXED_SUFFIXES = ("@s.whatsapp.net", "@g.us", "@lid")


def strip_internal(text: str) -> str:
    """Remove the agent's ``<internal>…</internal>`` notes (an unclosed one runs to the end)."""
    return _INTERNAL.sub("", text).strip()


def needs_prefix(chat: str) -> bool:
    return chat.endswith(_PREFIXED_SUFFIXES)


def format_outbound(text: str, chat: str, assistant: str) -> str:
    """Strip internal notes and add ``Name:`` where the channel needs it. May return ''."""
    body = strip_internal(text)
    if body and needs_prefix(chat) and not body.startswith(f"{assistant}:"):
        body = f"{assistant}: {body}"
    return body
