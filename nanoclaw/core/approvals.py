"""Who may talk to the assistant: unknown chats and senders ask, and only the owner answers.

A message that names the trigger in a chat no group is registered for, or that comes from
a sender outside an ``ask`` group's allowlist, makes a *request*: a ``Request`` row and one
short card in the main chat ("Lisbon trip (5 members) asks for @Andy — reply `approve 7`
or `deny 7`"). The owner answers in the main chat or with ``nanoclaw pending``. Approving
a chat registers it as ``nanoclaw groups add`` does and replays the message that asked;
approving a sender admits it to the group from then on (an ``AllowedSender`` row beside the
allowlist file: the queue, which carries out the main chat's answers, cannot write the
configuration directory) and replays its message. A denial is
remembered for a week (no second card); a request nobody answers expires.

Fails closed: nothing here runs an agent. Until the owner approves, the queue never sees an
unregistered chat (it serves registered groups only) and never wakes an agent for a sender
its group's policy does not admit.

Used by the channel daemon (a request is made in the transaction that stores the message
that asked, so neither exists without the other), the queue daemon (the owner's
``approve N``/``deny N`` in the main chat, which never reach the main agent, read by
daemons/queue/approval_answers.py; expiry) and the CLI. An agent can only ask, never answer: the main agent's ``raise_budget`` becomes a
request of kind "budget" (``core/budget_requests.py``), and what an agent says in the main
chat is a bot message, never read as the owner's command.

The cursor is the queue's: an approved chat's agent starts at the message that asked
because the queue, making the new group's cursor, reads that from the request, decided at
the instant the group was added (its ``decided_at`` is the group's ``added_at``;
``daemons/queue/owner.py``). Approvals only reads the cursor (``_replay_sender``).

HOSTILE INPUT: chat names, sender names, ids and texts come from the chat network. What is
shown to the owner is cleaned (control and format characters removed, length capped).
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from datetime import datetime
from zoneinfo import ZoneInfo

from peewee import fn

from nanoclaw.core import budget_requests
from nanoclaw.core import groups as groups_mod
from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import AllowedSender, Cursor, Group, Job, Message, Outbox, Request, Turn, db
from nanoclaw.core.prompt import matches_trigger

MAX_PER_CHAT = 3  # requests waiting from one chat (an "ask" group's unknown senders)
MAX_PENDING = 20  # requests waiting in all: a flood of strangers cannot bury the main chat
DENIAL_DAYS = 7
DENIAL_SECONDS = DENIAL_DAYS * 86400.0  # no second card after a denial for this long
NAME_CAP = 60  # characters of a network-given name shown to the owner
log = logging.getLogger("nanoclaw.approvals")


class ApprovalError(ValueError):
    """An answer that cannot be carried out; the text says why, in one line."""


def clean(text: str, cap: int = NAME_CAP) -> str:
    """A network-given name made safe to show: no control or format characters (no line
    breaks, no bidi overrides or zero-width tricks), no backticks (they would break the
    card's `approve N`), whitespace collapsed, at most ``cap`` characters."""
    kept = []
    for ch in str(text or ""):
        category = unicodedata.category(ch)
        if category[0] == "C" or category in ("Zl", "Zp"):
            kept.append(" ")
        else:
            kept.append("'" if ch == "`" else ch)
    out = " ".join("".join(kept).split())
    return out if len(out) <= cap else out[:cap - 1].rstrip() + "…"


def _number(jid: str) -> str:
    """The phone number of a person's chat id, if it is one ("+491701234567"), else ""."""
    user, _, server = jid.partition("@")
    user = user.split(":")[0]
    return f"+{user}" if server == "s.whatsapp.net" and user.isdigit() and len(user) <= 16 else ""


def is_group_chat(jid: str) -> bool:
    return jid.endswith("@g.us")


def _open(now: float):
    """Requests still waiting for the owner (an expired one is not, whether or not the
    queue's sweep has marked it yet: expiry is decided by the clock, never by a sweep)."""
    return (Request.status == "pending") & (Request.expires_at > now)


def describe(req: Request) -> str:
    """Who asks, for the card, the CLI and the answers: already cleaned names."""
    if req.kind == "budget":
        return f"the main agent, to {budget_requests.describe(req)}"
    if req.kind == "chat":
        if is_group_chat(req.chat):
            name = req.chat_name or "A group"
            return f"{name} ({req.members} members)" if req.members else f"{name} (group chat)"
        number = _number(req.chat)
        name = req.chat_name or "Someone"
        return f"{name} ({number}, direct chat)" if number else f"{name} (direct chat)"
    number = _number(req.sender)
    who = req.sender_name or number or "someone"
    if number and req.sender_name:
        who = f"{req.sender_name} ({number})"
    return f"{who} in {req.chat_name or req.folder}"


def card_text(cfg: Config, req: Request, trigger: str) -> str:
    n = req.id
    return f"{describe(req)} asks for {clean(trigger, 30)} — reply `approve {n}` or `deny {n}`"


def _post(chat: str, key: str, text: str, cfg: Config) -> None:
    """Queue one line for the router (call in a transaction); its key makes a repeat harmless."""
    Outbox.insert(key=key, chat=chat, text=text, kind="notice", sender=cfg.assistant_name).on_conflict_ignore().execute()


def on_inbound(cfg: Config, msg: Message, group: Group | None, *, chat_name: str = "",
               members: int | None = None) -> Request | None:
    """Decide whether a just-stored message asks for the owner's approval; if so make the
    request and its card (call inside the transaction that stored ``msg``; ``group`` is the
    group registered for its chat, or None). Returns the new request, or None: not a
    request, or one that must not make a card (one from this chat or sender still waits, a
    denial in force, a cap reached)."""
    now = time.time()
    if group is None:
        if not matches_trigger(msg.text, cfg.default_trigger):
            return None
        kind, trigger = "chat", cfg.default_trigger
        same = Request.select().where(Request.chat == msg.chat, Request.kind == "chat")
    else:
        if group.is_main or msg.from_me or groups_mod.policy_of(cfg, group) != "ask":
            return None
        allowed = groups_mod.senders_for(cfg, group)
        if allowed is None or msg.sender in allowed:
            return None
        if group.requires_trigger and not matches_trigger(msg.text, group.trigger):
            return None
        kind, trigger = "sender", group.trigger
        same = Request.select().where(Request.chat == msg.chat, Request.kind == "sender",
                                      Request.sender == msg.sender)
    if same.where(_open(now)).exists():
        log.info("a request from it already waits; no second card", extra=log_fields(chat=msg.chat, message=msg.id))
        return None
    if same.where(Request.status == "denied", Request.decided_at > now - DENIAL_SECONDS).exists():
        log.info("denied within %d days; no card", DENIAL_DAYS, extra=log_fields(chat=msg.chat, message=msg.id))
        return None
    if Request.select().where(Request.chat == msg.chat, _open(now)).count() >= MAX_PER_CHAT:
        log.warning("%d requests from this chat already wait; no card", MAX_PER_CHAT,
                    extra=log_fields(chat=msg.chat, message=msg.id))
        return None
    if Request.select().where(_open(now)).count() >= MAX_PENDING:
        log.warning("%d requests already wait; no card", MAX_PENDING, extra=log_fields(chat=msg.chat, message=msg.id))
        return None
    req = Request.create(kind=kind, chat=msg.chat, sender=msg.sender, sender_name=clean(msg.sender_name),
                         chat_name=clean(chat_name if group is None else group.name),
                         members=members if isinstance(members, int) and 0 < members < 100000 else None,
                         message=msg.id, created_at=now, expires_at=now + cfg.approval_timeout,
                         folder=group.folder if group else "")
    main = Group.get_or_none(Group.is_main == True)  # noqa: E712
    if main is not None:
        _post(main.jid, f"approval:{req.id}:card", card_text(cfg, req, trigger), cfg)
    else:
        log.warning("has no main chat to be shown in; see nanoclaw pending", extra=log_fields(request=req.id))
    log.info("kind=%s sender=%s made", kind, msg.sender, extra=log_fields(request=req.id, chat=msg.chat))
    return req


def keeps_unregistered(chat: str) -> bool:
    """Whether a message from the unregistered ``chat`` is kept: only while a request from it is
    open (the message is replayed on approval); else, unless ``[whatsapp] store_unregistered``
    says otherwise, nothing of a chat the owner never accepted is kept."""
    return Request.select().where(Request.chat == chat, _open(time.time())).exists()


# -- the owner's answers -----------------------------------------------------------------

def _get_open(n: int, now: float, tz: str) -> Request:
    req = Request.get_or_none(Request.id == n)
    if req is None:
        raise ApprovalError(f"there is no request {n} (see: nanoclaw pending)")
    when = datetime.fromtimestamp(req.decided_at or req.expires_at, ZoneInfo(tz)).strftime("%Y-%m-%d %H:%M")
    if req.status == "approved":
        raise ApprovalError(f"request {n} was already approved at {when} (group {req.folder})")
    if req.status == "denied":
        raise ApprovalError(f"request {n} was denied at {when}")
    if req.status == "forgotten":
        raise ApprovalError(f"request {n} was denied, then forgotten; the chat can ask again")
    if req.status == "expired" or req.expires_at <= now:
        raise ApprovalError(f"request {n} expired at {when}; the chat can ask again by naming the trigger")
    return req


def derive_folder(name: str, n: int) -> str:
    """A folder name from a chat's name ("Lisbon trip!" -> "lisbon-trip"), free and valid;
    ``chat-N`` when the name has no usable letters."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    base = re.sub(r"[^a-z0-9]+", "-", ascii_name).strip("-")[:40].strip("-") or f"chat-{n}"
    if base.lower() in groups_mod.RESERVED_FOLDERS:
        base = f"{base}-chat"
    folder, i = base, 2
    while Group.get_or_none(Group.folder == folder):
        folder, i = f"{base}-{i}", i + 1
    return groups_mod.validate_folder(folder)


def _replay_sender(req: Request, group: Group) -> None:
    """Make the approved sender's message reach the agent: it does by itself if the agent
    has not passed it yet (it was held only by the policy); else a copy is stored after the
    cursor (once: its id is the request's). The queue's cursor and turns are only read, in
    the approval's transaction, so the queue cannot pass the message between the look and
    the copy; a new message is how the queue is told."""
    msg = Message.get_or_none(Message.id == req.message)
    if msg is None:
        return
    cursor = Cursor.get_or_none(Cursor.group == group, Cursor.agent == "")
    passed = cursor is not None and cursor.last_message_id >= msg.id
    passed = passed or (Turn.select().join(Job).where(Job.group == group, Job.agent == "",
                                                      Job.status.in_(("queued", "running")),
                                                      Turn.last_message_id >= msg.id).exists())
    if passed:
        Message.insert(chat=msg.chat, sender=msg.sender, sender_name=msg.sender_name, text=msg.text,
                       timestamp=msg.timestamp, channel_id=f"replay:{req.id}", from_me=msg.from_me,
                       media=msg.media).on_conflict_ignore().execute()


def approve(cfg: Config, n: int, folder: str | None = None, *, by: str = "cli",
            answer: tuple[str, str] | None = None) -> str:
    """Approve request ``n`` (the owner only: the CLI, or the main chat through the queue) and
    return the one-line result. A chat is registered as ``nanoclaw groups add`` registers it,
    in ``folder`` or one derived from its name; a sender joins its group's allowlist. The
    message that asked is replayed. ``answer`` (chat, key): post the result there in the same
    transaction. Raises ApprovalError, with nothing changed, when it cannot be done."""
    now = time.time()
    decided = now
    try:
        with db.atomic("IMMEDIATE"):
            req = _get_open(n, now, cfg.tz)
            if req.kind == "budget":
                if folder:
                    raise ApprovalError(f"request {n} is a budget change: it takes no folder")
                text = budget_requests.apply(cfg, req, "main" if by == "main" else "cli")
                folder = req.folder
            elif req.kind == "chat":
                registered = Group.get_or_none(Group.jid == req.chat)
                if registered is not None:
                    raise ApprovalError(f"the chat of request {n} is already registered as group {registered.folder}")
                name = req.chat_name or _number(req.chat) or req.chat
                folder = groups_mod.validate_folder(folder) if folder else derive_folder(name, n)
                group = groups_mod.add_group(cfg, folder, name=name, jid=req.chat)
                # The agent starts at the message that asked: what the chat said before is not its.
                # The queue, making the group's cursor, finds this request by its decision, taken
                # at the instant the group was added (daemons/queue/owner.py).
                decided = group.added_at
                text = f"approved {n}: {describe(req)} is now group {folder}; its message is replayed"
            else:
                if folder:
                    raise ApprovalError(f"request {n} is a sender's in group {req.folder}: it takes no folder")
                group = Group.get_or_none(Group.jid == req.chat)
                if group is None:
                    raise ApprovalError(f"the group of request {n} is no longer registered")
                AllowedSender.insert(group=group, sender=req.sender, request=req.id).on_conflict_ignore().execute()
                _replay_sender(req, group)
                folder = group.folder
                text = f"approved {n}: {describe(req)} may now talk to {group.folder}'s agent; its message is replayed"
            Request.update(status="approved", decided_at=decided, decided_by=by, folder=folder) \
                .where(Request.id == n).execute()
            if answer:
                _post(answer[0], answer[1], text, cfg)
    except ApprovalError:
        raise
    except ValueError as exc:  # a group that cannot be added; a budget that cannot be set
        raise ApprovalError(f"request {n} not approved: {exc}") from None
    log.info("approved by %s folder=%s", by, folder, extra=log_fields(request=n))
    return text


def deny(cfg: Config, n: int, *, by: str = "cli", answer: tuple[str, str] | None = None) -> str:
    """Deny request ``n``: nothing is registered, the chat's kept message is dropped, and no card
    comes from that chat (or sender) for DENIAL_DAYS. Returns the one-line result."""
    now = time.time()
    with db.atomic("IMMEDIATE"):
        req = _get_open(n, now, cfg.tz)
        Request.update(status="denied", decided_at=now, decided_by=by).where(Request.id == n).execute()
        _forget_messages(cfg, req.chat)
        if req.kind == "budget":
            text = f"denied {n}: the budget stays as it is"
        else:
            text = (f"denied {n}: {describe(req)} gets no answer, and no new card for {DENIAL_DAYS} days "
                    f"(nanoclaw pending forget {n} to allow it sooner)")
        if answer:
            _post(answer[0], answer[1], text, cfg)
    log.info("denied by %s", by, extra=log_fields(request=n))
    return text


def forget(cfg: Config, n: int) -> str:
    """Lift the denial of request ``n`` now: the chat (or sender) may ask again."""
    with db.atomic("IMMEDIATE"):
        req = Request.get_or_none(Request.id == n)
        if req is None:
            raise ApprovalError(f"there is no request {n} (see: nanoclaw pending --all)")
        if req.status != "denied" or req.kind == "budget":
            raise ApprovalError(f"request {n} is {'a budget change' if req.kind == 'budget' else req.status}, "
                                "not a denied chat or sender: there is nothing to forget")
        Request.update(status="forgotten").where(Request.id == n).execute()
    return f"forgot the denial of {n}: {describe(req)} may ask again"


def _forget_messages(cfg: Config, chat: str) -> None:
    """Drop what was kept of an unregistered chat once no request from it waits (call in a
    transaction): its messages were kept only to be replayed."""
    if cfg.whatsapp.store_unregistered or Group.get_or_none(Group.jid == chat) is not None:
        return
    if keeps_unregistered(chat):
        return
    Message.delete().where(Message.chat == chat).execute()


def expire(cfg: Config) -> float | None:
    """Mark requests past their time as expired (dropping what was kept for them); return the
    seconds until the next one expires, or None. The queue's ``work()`` returns that as its
    deadline, so no loop polls for expiry."""
    now = time.time()
    due = list(Request.select().where(Request.status == "pending", Request.expires_at <= now))
    if due:
        with db.atomic("IMMEDIATE"):
            for req in due:
                Request.update(status="expired", decided_at=req.expires_at, decided_by="expiry") \
                    .where(Request.id == req.id, Request.status == "pending").execute()
                _forget_messages(cfg, req.chat)
                log.info("expired unanswered", extra=log_fields(request=req.id, chat=req.chat))
    nxt = Request.select(fn.MIN(Request.expires_at)).where(Request.status == "pending").scalar()
    return None if nxt is None else max(0.0, nxt - time.time())


def pending_count() -> int:
    return Request.select().where(_open(time.time())).count()


def listing(cfg: Config, everything: bool = False) -> list[Request]:
    """The requests waiting (with ``everything``: also those decided or expired in the last
    DENIAL_DAYS), oldest first."""
    now = time.time()
    q = Request.select().order_by(Request.id)
    if everything:
        return list(q.where(_open(now) | (Request.created_at > now - DENIAL_SECONDS)))
    return list(q.where(_open(now)))
