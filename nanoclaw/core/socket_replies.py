"""The replies on the daemons' Unix sockets, and the lines a daemon pushes to a watcher.

SUMMARY
    The other half of core/socket_lines.py: every reply a daemon sends back (``ok``, and
    ``error`` or its op's answer) and every line it pushes to a connection between replies
    (a watched chat's ``message`` and ``progress``, pairing's ``pair`` codes) is a
    ``msgspec.Struct`` that refuses fields it does not declare. The server encodes each
    through its struct (core/serve.py, channels/terminal.py, the channel's pairing), so a
    handler's slip is an "internal error" reply, never an undeclared field on the wire; the
    client decodes each through it (core/protocol.py's LineClient, request, arequest), so a
    reply it does not understand is refused with one line naming op and field.

SYNOPSIS
    REPLIES: dict[str, type[Reply]]         op -> its reply's struct (an op not in it: Reply)
    PUSHED: dict[str, type[Pushed]]         op -> the struct of a pushed line
    reply_line(op, reply: dict) -> bytes    a reply, checked and encoded (server side)
    pushed_line(op, fields: dict) -> bytes  a pushed line, likewise
    read(op, obj: dict, who) -> dict        a line from a daemon, checked (client side): BadReply

DESCRIPTION
    Every field of a reply but ``ok`` may be absent, since an error reply is ``{"ok":
    false, "error": ...}`` whatever was asked. A line with ``ok`` is a reply (to
    the oldest request not yet answered, the op the client sent); one without is pushed,
    read by its own ``op``. The wire is what it was: one JSON object per line.

HOSTILE INPUT
    What a chat or an agent said travels in ``text``, ``name`` and a history's lines,
    declared strings: never more than text here.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType, field

from nanoclaw.core.messages import explain


class BadReply(ValueError):
    """A daemon's line that does not fit its struct (as a line that is not JSON, a ValueError):
    the daemon speaks another protocol, e.g. another release's."""


class Reply(Struct, forbid_unknown_fields=True, kw_only=True):
    """An answer: ``ok``, and why not (``error``) or the fields of its op's answer (subclasses)."""
    ok: bool
    error: str | UnsetType = UNSET


def _reply(name: str, rename: dict[str, str] | None = None, **fields: Any) -> type[Reply]:
    """The reply of one op: ``ok``, ``error`` and ``fields`` (name: type), each of which may be
    absent (an error reply carries none of them)."""
    return msgspec.defstruct(name, [(k, t | UnsetType, UNSET) for k, t in fields.items()], bases=(Reply,),
                             module=__name__, rename=rename)


class PausedContainer(Struct, forbid_unknown_fields=True, kw_only=True):
    """A container the runner keeps paused for its agent's next job (``nanoclaw status``)."""
    group: str
    agent: str
    mib: int


class Said(Struct, forbid_unknown_fields=True, kw_only=True):
    """One line of a watched chat's recent history."""
    text: str
    sender: str = field(name="from")
    name: str
    time: int | float


class ChatGroup(Struct, forbid_unknown_fields=True, kw_only=True):
    """A WhatsApp group the account is in (``folder``: the group registered for it, or "")."""
    name: str
    jid: str
    participants: int
    folder: str


REPLIES: dict[str, type[Reply]] = {
    # every daemon (core/serve.py); the runner adds its paused containers to its status
    "ping": _reply("Pong", daemon=str, pid=int),
    "status": _reply("StatusReply", daemon=str, status=str, paused=list[PausedContainer], paused_budget_mib=int),
    # channel: ``inbound`` is answered only once the message is committed
    "inbound": _reply("Stored", message_id=int, duplicate=bool, chat=str),
    "watch": _reply("Watching", chat=str, group=str, history=list[Said]),
    "deliver": _reply("Delivered", channel_id=str, already=bool),
    "pair": _reply("Paired", paired=str, already=bool, status=str),
    "discover_groups": _reply("Discovered", rename={"own": "self"}, groups=list[ChatGroup], own=str),
    # queue, runner, proxy, egress
    "stop": _reply("Stopped", text=str),
    "kill": _reply("Killed", gone=bool),
    "ensure": _reply("Ensured", group=str, agent=str),
    "transcribe": _reply("Transcribed", text=str, cut=bool),
    "reload": _reply("Reloaded", kind=str, voice=bool),
    "check": _reply("Checked", status=int, detail=str),  # the API's HTTP status (0: unreachable)
}  # every other op (nudge has no reply; typing, progress): ok and error alone


# -- pushed to a connection between replies ------------------------------------------------

class Pushed(Struct, forbid_unknown_fields=True, kw_only=True):
    op: str


class MessageLine(Pushed):
    """A reply in a watched chat (channels/terminal.py): ``nanoclaw chat`` prints it."""
    chat: str
    text: str
    id: str
    sender: str = field(name="from")
    name: str = ""


class ProgressLine(Pushed):
    """What the agent is doing in a watched chat: ``nanoclaw chat``'s status line."""
    chat: str
    state: str
    seq: int
    job: int
    turn: int
    who: str = ""
    since: int | float = 0.0
    tool: str = ""
    detail: str = ""


class PairLine(Pushed):
    """A QR code to show (``event`` "qr", ``data``) or the code to type (``event`` "code")."""
    event: str
    data: str | UnsetType = UNSET
    code: str | UnsetType = UNSET


PUSHED: dict[str, type[Pushed]] = {"message": MessageLine, "progress": ProgressLine, "pair": PairLine}

_encoder = msgspec.json.Encoder()


def reply_line(op: str, reply: dict) -> bytes:
    """``reply`` to a request of ``op``, checked against its struct and encoded as a line;
    msgspec.ValidationError where it carries what the struct does not declare."""
    return _encoder.encode(msgspec.convert(reply, REPLIES.get(op, Reply))) + b"\n"


def pushed_line(op: str, fields: dict) -> bytes:
    """A line pushed to a watcher, checked against its op's struct and encoded."""
    return _encoder.encode(msgspec.convert({"op": op, **fields}, PUSHED[op])) + b"\n"


def read(op: str | None, obj: object, who: str) -> dict:
    """A line from the daemon ``who`` (already parsed from JSON), checked: a reply (it has
    ``ok``) to a request of ``op``, or a pushed line by its own op. The fields it carried,
    as a dict; BadReply saying in one line what does not fit."""
    if not isinstance(obj, dict):
        raise BadReply(f"the {who}'s line is not an object")
    if "ok" in obj:
        kind, cls = op or "?", REPLIES.get(op or "", Reply)
    elif isinstance(obj.get("op"), str) and obj["op"] in PUSHED:
        kind, cls = obj["op"], PUSHED[obj["op"]]
    else:
        raise BadReply(f"the {who}'s line is neither a reply nor a line it pushes: {str(obj.get('op'))[:40]!r}")
    try:
        return msgspec.to_builtins(msgspec.convert(obj, cls))
    except msgspec.ValidationError as exc:
        what = "reply" if "ok" in obj else "line"
        raise BadReply(f"the {who}'s {what} does not fit: {explain(kind, exc)}") from None
