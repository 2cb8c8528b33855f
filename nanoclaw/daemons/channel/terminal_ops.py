"""The terminal's socket ops: a message typed in (``inbound``), a chat watched (``watch``).

SYNOPSIS
    await inbound(daemon, req) -> reply
    watch(daemon, req, writer) -> reply

DESCRIPTION
    ``inbound`` hands a message from ``nanoclaw chat`` or ``nanoclaw send`` (a
    registered group, by folder, name or chat id) to the commit line, with the
    attachment ``nanoclaw send --file`` put in the group's ``inbox/``; a chat id
    no group is registered for is taken as a chat network would hand its message
    over (scripts and tests on this owner-only socket): stored and treated as one.
    ``watch`` attaches the connection to a chat: its recent history now, every
    message and reply after.

HOSTILE INPUT
    Every field of the request: types and sizes are checked, text over MAX_TEXT is
    refused (not cut), an attachment must be a regular file in that group's inbox.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import TYPE_CHECKING

from nanoclaw.channels import Inbound, StoreError, attachments
from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Group, Message

if TYPE_CHECKING:
    from nanoclaw.daemons.channel import ChannelDaemon

MAX_TEXT = 64 * 1024  # longer inbound text is refused, not truncated silently
HISTORY = 10
CHAT_ID = groups_mod.CHAT_ID  # a chat network's id, e.g. 1203…@g.us


def terminal_group(daemon: ChannelDaemon, req: dict) -> tuple[Group | None, dict | None]:
    """The group a terminal request names, or the error reply to send instead."""
    if daemon.terminal is None:
        return None, {"ok": False, "error": "the terminal channel is not enabled in the configuration"}
    ref = req.get("group") or req.get("chat")
    if not isinstance(ref, str) or not ref:
        return None, {"ok": False, "error": "a 'group' (folder, name or chat id) is required"}
    try:
        return groups_mod.find_group(ref), None
    except groups_mod.GroupError as exc:
        return None, {"ok": False, "error": str(exc)}


async def inbound(daemon: ChannelDaemon, req: dict) -> dict:
    group, error = terminal_group(daemon, req)
    chat = req.get("chat")
    if error and daemon.terminal is not None and not req.get("group") and isinstance(chat, str) \
            and CHAT_ID.fullmatch(chat):
        # A message from a chat no group is registered for, as a chat network would hand it
        # over (scripts and tests on this owner-only socket): stored and treated as one.
        return await inbound_unregistered(daemon, req, chat)
    if error:
        return error
    text = req.get("text")
    media = None
    if req.get("media") is not None:  # a file `nanoclaw send --file` put in the group's inbox
        media = attachments.valid(daemon.cfg, group.folder, req["media"])
        if media is None:
            return {"ok": False, "error": "the attachment is not a file in this group's inbox/"}
    if not isinstance(text, str) or not (text.strip() or media):
        return {"ok": False, "error": "empty message"}
    if len(text) > MAX_TEXT:
        return {"ok": False, "error": f"message too long ({len(text)} > {MAX_TEXT} characters)"}
    msg_id = req.get("id") or uuid.uuid4().hex
    sender = req.get("sender") or "owner@term"
    if not isinstance(msg_id, str) or not isinstance(sender, str):
        return {"ok": False, "error": "'id' and 'sender' must be strings"}
    try:
        row_id, dup = await daemon.receive(Inbound(
            chat=group.jid, sender=sender, sender_name=str(req.get("sender_name") or sender.split("@")[0]),
            text=text, channel_id=msg_id, timestamp=time.time(), from_me=sender == "owner@term", media=media,
            group=group))
    except StoreError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "message_id": row_id, "duplicate": dup, "chat": group.jid}


async def inbound_unregistered(daemon: ChannelDaemon, req: dict, chat: str) -> dict:
    text, sender = req.get("text"), req.get("sender") or "stranger@term"
    msg_id = req.get("id") or uuid.uuid4().hex
    members = req.get("members")
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        return {"ok": False, "error": "a message needs text (at most 64 KiB)"}
    if not isinstance(msg_id, str) or not isinstance(sender, str) or \
            (members is not None and (not isinstance(members, int) or isinstance(members, bool))):
        return {"ok": False, "error": "'id' and 'sender' must be strings, 'members' a number"}
    sender_name = str(req.get("sender_name") or sender.split("@")[0])
    # a direct chat is named after the person in it, as the WhatsApp backend names it
    chat_name = str(req.get("chat_name") or ("" if chat.endswith("@g.us") else sender_name))
    try:
        row_id, dup = await daemon.receive(Inbound(
            chat=chat, sender=sender, sender_name=sender_name, text=text, channel_id=msg_id,
            timestamp=time.time(), from_me=False, chat_name=chat_name, members=members))
    except StoreError as exc:
        return {"ok": False, "error": str(exc)}
    return {"ok": True, "message_id": row_id, "duplicate": dup, "chat": chat}


def watch(daemon: ChannelDaemon, req: dict, writer: asyncio.StreamWriter) -> dict:
    group, error = terminal_group(daemon, req)
    if error:
        return error
    daemon.terminal.attach(group.jid, writer)
    recent = list(Message.select().where(Message.chat == group.jid, Message.agent.is_null())  # not team-internal
                  .order_by(Message.id.desc()).limit(HISTORY))
    history = [{"text": m.text, "from": "assistant" if m.is_bot else (m.sender_name or m.sender),
                "name": m.sender_name if m.is_bot and m.sender_name != daemon.cfg.assistant_name else "",
                "time": m.timestamp} for m in reversed(recent)]
    return {"ok": True, "chat": group.jid, "group": group.folder, "history": history}
