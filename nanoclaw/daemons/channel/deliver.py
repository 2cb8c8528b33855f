"""Replies out: the router's ``deliver``, sent and recorded; the queue's ``typing``.

SYNOPSIS
    await deliver(daemon, req) -> reply
    await typing(daemon, req) -> reply

DESCRIPTION
    ``deliver`` hands one outbox row to the backend whose network the chat is on
    and records what went out as a bot message (``is_bot``: the flag, never the
    text, is how our own messages are recognised later). A repeated deliver of the
    same outbox row (our confirmation to the router was lost) finds that row and
    sends nothing twice; a send that went out but could not be recorded is refused
    to the router, which sends it again, and the backend knows the id it gave it.
    A terminal chat's delivery *is* its history: recorded first, then shown.

    ``typing`` shows or clears the typing indicator; it is cosmetic and never
    fails its caller.

DIAGNOSTICS
    A disk that refuses the record makes the reply ``not recorded: <why>`` and the
    daemon's status say MESSAGES NOT STORED until a write succeeds again.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from peewee import DatabaseError

from nanoclaw.channels import SendError
from nanoclaw.core import faults
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Message, db

if TYPE_CHECKING:
    from nanoclaw.daemons.channel import ChannelDaemon


async def deliver(daemon: ChannelDaemon, req: dict) -> dict:
    chat, text, outbox_id = req.get("chat"), req.get("text"), req.get("outbox_id")
    if not isinstance(chat, str) or not isinstance(text, str) or not isinstance(outbox_id, int):
        return {"ok": False, "error": "deliver needs 'chat', 'text' and 'outbox_id'"}
    backend = daemon.backend_for(chat)
    if backend is None:
        return {"ok": False, "error": f"no enabled channel handles chat {chat!r}"}
    # One id per outbox row: if the router re-sends because our confirmation
    # was lost, the row is found and nothing goes out twice.
    # Networks that pick their own ids (WhatsApp) are matched by the outbox row.
    msg_id = f"nc{outbox_id:08d}"
    sent = Message.get_or_none((Message.chat == chat) & ((Message.channel_id == msg_id)
                                                         | (Message.outbox_id == outbox_id)))
    if sent is not None:
        return {"ok": True, "channel_id": sent.channel_id, "already": True}
    sender = req.get("sender") if isinstance(req.get("sender"), str) else ""
    terminal = daemon.terminal
    if backend is terminal:
        # A terminal chat's delivery *is* its history: record, then show.
        if (refusal := record_sent(daemon, chat, text, msg_id, outbox_id, sender)) is not None:
            return refusal
        await terminal.send(chat, text, msg_id, sender=sender)
    else:
        try:
            quote = req.get("quote") if isinstance(req.get("quote"), dict) else None
            msg_id = await backend.send(chat, text, msg_id, quote=quote, sender=sender)
        except SendError as exc:
            return {"ok": False, "error": str(exc)}
        # Sent but not recorded: the router sends it again and the backend knows the id.
        if (refusal := record_sent(daemon, chat, text, msg_id, outbox_id, sender)) is not None:
            return refusal
        if terminal:
            await terminal.show(chat, {"text": text, "id": msg_id, "from": "assistant", "name": sender})
    daemon.log.info("sent as %s", msg_id, extra=log_fields(chat=chat, outbox=outbox_id))
    return {"ok": True, "channel_id": msg_id}


def record_sent(daemon: ChannelDaemon, chat: str, text: str, msg_id: str, outbox_id: int,
                sender: str = "") -> dict | None:
    """Store what we sent as a bot message: the flag, not its text, marks it as ours
    (``sender`` is the team member it went out as, if not the assistant). When the disk
    refuses it: the refusal for the router, which sends it again later (else None)."""
    cfg = daemon.cfg
    try:
        with db.atomic("IMMEDIATE"):
            Message.insert(chat=chat, sender=cfg.assistant_name,
                           sender_name=sender or cfg.assistant_name, text=text, timestamp=time.time(),
                           channel_id=msg_id, from_me=True, is_bot=True,
                           outbox_id=outbox_id).on_conflict_ignore().execute()
    except DatabaseError as exc:
        if faults.storage_error(exc) is None:
            raise
        failure = faults.describe(exc)
        daemon.log.error("sent message not recorded: %s; the router tries again", failure,
                         extra=log_fields(chat=chat, outbox=outbox_id))
        daemon.store_failed(failure)
        return {"ok": False, "error": f"not recorded: {failure}"}
    daemon.stored_again()
    return None


async def typing(daemon: ChannelDaemon, req: dict) -> dict:
    chat, on = req.get("chat"), req.get("on")
    if not isinstance(chat, str) or not isinstance(on, bool):
        return {"ok": False, "error": "typing needs 'chat' and 'on' (true or false)"}
    backend = daemon.backend_for(chat)
    if backend is not None:
        try:
            await backend.typing(chat, on)
        except Exception as exc:  # cosmetic: log, never fail the caller
            daemon.log.debug("typing failed: %s", exc, extra=log_fields(chat=chat))
    return {"ok": True}
