"""Taking back an approval: ``nanoclaw pending revoke NAME`` or ``revoke NAME`` in the main chat.

A sender the owner approved in an ``ask`` group (core/approvals.py) is an ``AllowedSender``
row; revoking removes that one row, so the sender's next message asks again (a new card),
as before the approval. Senders in the group's allowlist file are the owner's own edit and
are not touched here. NAME is what the owner sees in ``nanoclaw pending revoke`` (the list):
the approved request's number, the sender's number (+491701234567), chat id, or name;
``NAME in GROUP`` (or ``--group``) picks one when the name is approved in several groups.
"""

from __future__ import annotations

import re

from nanoclaw.core import approvals
from nanoclaw.core.models import AllowedSender, Group, Request, db


class RevokeError(ValueError):
    """A revoke that cannot be done; the text says why in one line."""


def approved() -> list[tuple[AllowedSender, Request | None]]:
    """Every approved sender, with the request that let it in, oldest first."""
    rows = list(AllowedSender.select().join(Group).order_by(AllowedSender.id))
    return [(a, Request.get_or_none(Request.id == a.request) if a.request else None) for a in rows]


def describe(a: AllowedSender, req: Request | None) -> str:
    who = approvals.describe(req) if req is not None else a.sender
    return f"{who} [{a.sender}] in {a.group.folder}" + (f" (request {req.id})" if req is not None else "")


def _matches(name: str, a: AllowedSender, req: Request | None) -> bool:
    wanted = approvals.clean(name, 200).casefold()
    number = approvals._number(a.sender)  # noqa: SLF001 (the one way a sender's number is shown)
    names = {a.sender.casefold(), number.casefold()} - {""}
    if req is not None:
        names |= {str(req.id), f"#{req.id}", req.sender_name.casefold()} - {""}
    return wanted in names


def revoke(name: str, group: str | None = None) -> str:
    """Remove one approved sender; the one-line result. Raises RevokeError (nothing changed)."""
    name = name.strip()
    m = re.fullmatch(r"(.+?)\s+in\s+(\S+)", name)
    if group is None and m and not _candidates(name, None):
        name, group = m.group(1), m.group(2)
    with db.atomic("IMMEDIATE"):
        found = _candidates(name, group)
        if not found:
            where = f" in {group}" if group else ""
            raise RevokeError(f"no approved sender {approvals.clean(name)!r}{where} (see: nanoclaw pending revoke)")
        if len(found) > 1:
            raise RevokeError(f"{approvals.clean(name)!r} is approved more than once: "
                              + "; ".join(describe(a, r) for a, r in found)
                              + " — name the group (revoke NAME in GROUP) or the request's number")
        a, req = found[0]
        AllowedSender.delete().where(AllowedSender.id == a.id).execute()
    return f"revoked: {describe(a, req)} must ask again to talk to its agent"


def _candidates(name: str, group: str | None) -> list[tuple[AllowedSender, Request | None]]:
    return [(a, r) for a, r in approved()
            if _matches(name, a, r) and (group is None or group in (a.group.folder, a.group.name))]
