"""The owner's commands in the main chat besides approvals: ``stop``, ``status``, ``revoke``.

``stop`` (main's running turn), ``stop GROUP`` (that group's and its members'; GROUP must
name a registered group, else the message is ordinary chat for the agent), ``status`` (the
one-screen summary ``nanoclaw status`` prints from the database) and ``revoke NAME`` (one
approved sender, core/revoke.py). The trigger in front is allowed, as for ``approve N``.

Carried out by the queue, as the owner's ``approve N``/``deny N`` are (approval_answers.py):
such a message never reaches an agent, and it is the owner's only when it is from the
owner's own account or a sender the main chat's policy admits; our own (bot) messages and
team messages never are, whatever they say. The answer is one outbox row keyed by the
message, so a second look (a restart, the next pass) repeats nothing.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Container, Iterable

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import revoke as revoke_mod
from nanoclaw.core.approvals import _post  # noqa: PLC2701 (the owner's answers go out one way)
from nanoclaw.core.config import Config
from nanoclaw.core.models import Group, Message, Outbox, db
from nanoclaw.core.prompt import matches_trigger

_COMMAND = re.compile(r"(stop|status|revoke)(?:\s+(.+?))?\s*[.!]?\s*", re.IGNORECASE | re.DOTALL)


def group_refs(groups: Iterable[Group] | None = None) -> frozenset[str]:
    """Every word ``stop GROUP`` may name a group by (as core.groups.find_group finds one):
    folders, chat ids, names, and "main" where there is a main group. ``groups``: the
    rows already read (default: every group)."""
    refs: set[str] = set()
    for g in list(Group.select()) if groups is None else groups:
        refs |= {g.folder, g.jid, g.name} | ({"main"} if g.is_main else set())
    return frozenset(refs - {""})


def parse(text: str, trigger: str = "", groups: Container[str] = frozenset()) -> tuple[str, str] | None:
    """(verb, argument) if ``text`` is one of these commands, else None (it is for the agent).
    ``groups``: the words that name a group (:func:`group_refs`); the queue's plan passes
    them, so deciding reads nothing."""
    text = text.strip()
    if trigger and matches_trigger(text, trigger):
        text = text[len(trigger):].lstrip(" ,:")
    m = _COMMAND.fullmatch(text)
    if m is None or "\n" in text:
        return None
    verb, arg = m.group(1).lower(), (m.group(2) or "").strip()
    if verb == "status" and arg:
        return None
    if verb == "revoke" and not arg:
        return None
    if verb == "stop" and arg and arg not in groups:
        return None  # "stop that", "stop talking": words for the agent
    return verb, arg


def is_owners(cfg: Config, msg: Message, main: Group) -> bool:
    """The rule of the owner's answers (approval_answers.handle_command): never a bot's or a
    team message; the owner's own account, or a sender the main chat's policy admits."""
    if msg.is_bot or getattr(msg, "agent", None) is not None:
        return False
    allowed = groups_mod.senders_for(cfg, main)
    return bool(msg.from_me) or allowed is None or msg.sender in allowed


def handle(cfg: Config, msg: Message, main: Group, stop: Callable[[Group], str],
           summary: Callable[[], list[str]]) -> str:
    """Carry out ``msg`` if it is one of these commands from the owner: "now", "earlier" (it
    was, in an earlier pass) or "" (it is not: the message is for the main agent). ``stop``
    stops a group's turns and returns the line to answer; ``summary`` gives the status."""
    cmd = parse(msg.text, main.trigger, group_refs())
    if cmd is None or not is_owners(cfg, msg, main):
        return ""
    key = f"owner:answer:{msg.id}"
    if Outbox.select().where(Outbox.key == key).exists():
        return "earlier"
    verb, arg = cmd
    if verb == "stop":
        text = stop(groups_mod.find_group(arg) if arg else main)
    elif verb == "status":
        text = "\n".join(summary())
    else:
        try:
            text = revoke_mod.revoke(arg)
        except revoke_mod.RevokeError as exc:
            text = f"revoke: {exc}"
    with db.atomic("IMMEDIATE"):
        _post(main.jid, key, text, cfg)
    return "now"
