"""The queue's ``progress``: what an agent is doing on a turn, handed to the chat's backend.

SYNOPSIS
    await progress(daemon, req) -> reply

DESCRIPTION
    The queue says each state change of a turn (core/progress.py) in one fire-and-forget
    line: the chat, the row id of the message the turn answers, who works on it, the tool.
    The message's id and sender on its network are looked up here (a reaction needs them);
    a row of another chat, or one of our own messages, is not a message to mark. Cosmetic:
    a backend's failure is logged at debug level, never returned.

HOSTILE INPUT
    The socket line's fields are checked for type and bounded again; the tool and detail
    come from a container (cleaned by ipc), and are only ever shown, never logged as fields.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nanoclaw.channels.base import Progress
from nanoclaw.core import progress as progress_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Message

if TYPE_CHECKING:
    from nanoclaw.daemons.channel import ChannelDaemon


def parse(req: dict) -> Progress | None:
    chat, state, seq, job, turn = (req.get(k) for k in ("chat", "state", "seq", "job", "turn"))
    ints = (seq, job, turn)
    if not isinstance(chat, str) or state not in progress_mod.STATES \
            or not all(isinstance(i, int) and not isinstance(i, bool) for i in ints):
        return None
    since = req.get("since")
    update = Progress(chat=chat, state=state, seq=seq, job=job, turn=turn,
                      who=progress_mod.clean(req.get("who"), progress_mod.TOOL_MAX),
                      since=float(since) if isinstance(since, (int, float)) and not isinstance(since, bool) else 0.0,
                      tool=progress_mod.clean(req.get("tool"), progress_mod.TOOL_MAX),
                      kind=progress_mod.kind_of(progress_mod.clean(req.get("tool"), progress_mod.TOOL_MAX)),
                      detail=progress_mod.clean(req.get("detail"), progress_mod.DETAIL_MAX))
    row = req.get("message")
    if isinstance(row, int) and not isinstance(row, bool):
        m = Message.get_or_none(Message.id == row)
        if m is not None and m.chat == chat and not m.is_bot and m.agent is None:
            update = Progress(**{**update.__dict__, "message_id": m.channel_id, "message_sender": m.sender,
                                 "message_from_me": m.from_me})
    return update


async def progress(daemon: ChannelDaemon, req: dict) -> dict:
    update = parse(req)
    if update is None:
        return {"ok": False, "error": "progress needs 'chat', a known 'state', and 'seq', 'job', 'turn' numbers"}
    backend = daemon.backend_for(update.chat)
    if backend is not None:
        try:
            await backend.progress(update)
        except Exception as exc:  # cosmetic: log, never fail the caller
            daemon.log.debug("progress not shown: %s", exc, extra=log_fields(chat=update.chat))
    return {"ok": True}
