"""The requests on the daemons' Unix sockets, one typed struct per ``op``.

SUMMARY
    Every request line a daemon serves (core/serve.py reads them) is a ``msgspec.Struct``
    that refuses fields it does not declare, as core/messages.py does for spool files. A
    line is parsed once at the socket, checked against its op's struct, and handed on as
    the dict of the fields it carried (``UNSET`` ones absent), so the handlers read what
    they did before and never see a field of the wrong type. A line that does not fit gets
    one reply naming the op and the field (``explain``), never a traceback.

SYNOPSIS
    REQUESTS: dict[str, type[Request]]    op -> its struct (the daemon that serves it in the comment)
    check(obj: dict) -> tuple[str, dict]  a parsed line, checked; BadMessage naming op and field

DESCRIPTION
    The wire stays what it was: one JSON object per line with ``op`` and, from a
    nanoclaw client, ``v`` (core/protocol.py's LineClient, request, tell). An op no daemon
    serves is "unknown op"; one served elsewhere passes here and the daemon's ``handle``
    answers "unknown op" for it. Replies and pushed lines (``message``, ``progress``,
    ``pair``) are declared beside these, in core/socket_replies.py.

HOSTILE INPUT
    The sockets are the daemons' own (mode 0660, the nanoclaw group), but the channel's
    carries what chats and agents said (``inbound`` text, the router's ``deliver`` of an
    agent's reply): every such field is declared a string, so an agent's text is never
    more than text here; what it means (which group, which chat) the handlers check.
"""

from __future__ import annotations

from typing import Any

import msgspec
from msgspec import UNSET, Struct, UnsetType

from nanoclaw.core import messages
from nanoclaw.core.messages import VERSION, BadMessage, explain


class Request(Struct, forbid_unknown_fields=True, kw_only=True):
    """One request line: its ``op``, the protocol version a nanoclaw client adds, and the
    fields of its kind (subclasses)."""
    op: str
    v: int | UnsetType = UNSET


# -- every daemon (core/serve.py) ----------------------------------------------------------

class Nudge(Request):
    """Wake the loop: something landed in a spool."""


class Ping(Request):
    """Are you there (nanoclaw ping)."""


class Status(Request):
    """The one-line status (nanoclaw status)."""


# -- channel (daemons/channel): the chats' words pass here ---------------------------------

class Media(Struct, forbid_unknown_fields=True, kw_only=True):
    """A file `nanoclaw send --file` put in the group's inbox, described as
    channels/attachments.describe does (attachments.valid checks the file itself)."""
    kind: str | UnsetType = UNSET
    type: str | UnsetType = UNSET
    size: int | UnsetType = UNSET
    file: str | UnsetType = UNSET
    seconds: int | float | UnsetType = UNSET
    note: str | UnsetType = UNSET


class Inbound(Request):
    """A message typed at a terminal (`nanoclaw chat`/`send`), or a chat's as a network would
    hand it over (``chat`` of a registered group's, or of none: then it may ask the owner)."""
    group: str | None | UnsetType = UNSET
    chat: str | None | UnsetType = UNSET
    text: str | None | UnsetType = UNSET
    media: Media | None | UnsetType = UNSET
    id: str | None | UnsetType = UNSET
    sender: str | None | UnsetType = UNSET
    sender_name: str | None | UnsetType = UNSET
    chat_name: str | None | UnsetType = UNSET
    members: int | None | UnsetType = UNSET


class Watch(Request):
    """Push this group's messages on this connection (a terminal attached)."""
    group: str | None | UnsetType = UNSET
    chat: str | None | UnsetType = UNSET


class Deliver(Request):
    """router -> channel: one outbox row to send (an agent's text, a notice)."""
    outbox_id: int
    chat: str
    text: str
    kind: str | UnsetType = UNSET
    sender: str | None | UnsetType = UNSET
    quote: dict[str, Any] | None | UnsetType = UNSET


class Progress(messages.Progress, kw_only=True):
    """What a turn is doing, cosmetic, on two sockets with the one op: the container's report
    (``job``, ``turn``, ``state``, ``tool``, ``detail``: core/messages.py's ``Progress``) passed
    on by ipc -> queue (with ``group``, ``agent``: where ipc found it) and queue -> channel
    (``chat``, the message it answers, who works on it, since when, the tool's kind: for the
    chat to show). A request like the others, though declared from the report it carries."""
    op: str
    v: int | UnsetType = UNSET
    group: str | UnsetType = UNSET
    agent: str | UnsetType = UNSET
    chat: str | UnsetType = UNSET
    seq: int | UnsetType = UNSET
    message: int | None | UnsetType = UNSET
    who: str | UnsetType = UNSET
    since: float | UnsetType = UNSET
    kind: str | UnsetType = UNSET


class Typing(Request):
    """queue -> channel: show (or stop showing) that the agent is typing in a chat."""
    chat: str
    on: bool


class Pair(Request):
    """`nanoclaw pair`: link WhatsApp, by QR code or by a code for ``phone``."""
    phone: str | None | UnsetType = UNSET


class DiscoverGroups(Request):
    """`nanoclaw groups discover`: the WhatsApp account's groups."""


# -- queue, runner ----------------------------------------------------------------------------

class Stop(Request):
    """`nanoclaw stop GROUP` -> queue: stop that group's running turns."""
    group: str


class Kill(Request):
    """queue -> runner: kill the container of a stopped turn that did not end in time."""
    job: int


# -- proxy, egress ----------------------------------------------------------------------------

class Ensure(Request):
    """runner -> proxy and egress: have this agent's socket before its container starts."""
    group: str
    agent: str | UnsetType = UNSET


class Transcribe(Request):
    """runner -> proxy ([voice] engine = "api"): send the runner's copy of this note (the
    proxy finds it under the runner's voice directory by the message alone) to the voice API."""
    message: int
    group: str
    ext: str | UnsetType = UNSET


class Reload(Request):
    """`nanoclaw credential set` -> proxy: read the credential again."""


class Check(Request):
    """`nanoclaw credential set` -> proxy: does the API accept the credential?"""


REQUESTS: dict[str, type[Struct]] = {
    "nudge": Nudge, "ping": Ping, "status": Status,
    "inbound": Inbound, "watch": Watch, "deliver": Deliver, "progress": Progress, "typing": Typing, "pair": Pair,
    "discover_groups": DiscoverGroups,
    "stop": Stop, "kill": Kill,
    "ensure": Ensure, "transcribe": Transcribe, "reload": Reload, "check": Check,
}


def check(obj: Any) -> tuple[str, dict]:
    """A request line already parsed from JSON, checked against its op's struct: (op, the
    fields it carried), or BadMessage saying in one line which op and field is wrong."""
    if not isinstance(obj, dict) or not isinstance(obj.get("op"), str):
        raise BadMessage("expected an object with an 'op'")
    op = obj["op"]
    if obj.get("v", VERSION) != VERSION or isinstance(obj.get("v"), bool):
        raise BadMessage(f"unsupported version {obj.get('v')!r}")
    cls = REQUESTS.get(op)
    if cls is None:
        raise BadMessage(f"unknown op {op[:40]!r}")
    try:
        req = msgspec.convert(obj, cls)
    except msgspec.ValidationError as exc:
        raise BadMessage(explain(op, exc)) from None
    return op, msgspec.to_builtins(req)
