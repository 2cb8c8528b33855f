"""A budget change an agent asks for: a request the owner answers, never a change by itself.

The main group's lead may ask (its ``raise_budget`` tool; ipc checks that the request was
found in the main group lead's own directory). Asking makes a ``Request`` of kind "budget"
and one card in the main chat::

    The main agent asks to let family spend $5.00 per day (now $2.00) — reply `approve 12` or `deny 12`

answered as every request is (``core/approvals.py``): ``approve 12``/``deny 12`` from the
owner in the main chat, or ``nanoclaw approve 12``. Approving applies the change then
(``usage.set_limit``, set by "main" or "cli"); denying, or nobody answering before
``approval_timeout``, changes nothing. A main agent steered by a web page or a message can
ask; only the owner can grant. At most :data:`MAX_WAITING` wait at once.
"""

from __future__ import annotations

import json
import time

from nanoclaw.core import usage as usage_mod
from nanoclaw.core.config import Config
from nanoclaw.core.models import Group, Outbox, Request, db

MAX_WAITING = 3  # budget requests waiting at once: an agent cannot bury the main chat in cards


def _amount(unit: str, value: float) -> str:
    return f"${value:.2f}" if unit == "usd" else f"{int(value):,} tokens"


def _change(req: Request) -> dict:
    return json.loads(req.detail or "{}")


def describe(req: Request, cfg: Config | None = None) -> str:
    """What the request asks, in words ("let family spend $5.00 per day"); with ``cfg``, the
    budget in force beside it."""
    c = _change(req)
    whose = "all groups together" if req.folder == usage_mod.ALL else req.folder
    shown = _amount(c["unit"], c["amount"])
    what = (f"add {shown} to the {c['period']} budget of {whose}" if c.get("add")
            else f"let {whose} spend {shown} per {c['period']}")
    if cfg is not None:
        current = next((lim for lim in usage_mod.limits(cfg, req.folder)
                        if (lim.period, lim.unit) == (c["period"], c["unit"])), None)
        what += f" (now {_amount(c['unit'], current.limit)})" if current else " (now no budget)"
    return what


def ask(cfg: Config, main: Group, scope: str, period: str, unit: str, amount: float, add: bool) -> Request:
    """The main agent's ask, stored as a request with its card in the main chat (one
    transaction); BudgetError if it cannot be asked (a bad value, too many waiting)."""
    if period not in usage_mod.PERIODS:
        raise usage_mod.BudgetError(f"period must be day or month, not {period!r}")
    if unit not in usage_mod.UNITS:
        raise usage_mod.BudgetError(f"unit must be usd or tokens, not {unit!r}")
    now = time.time()
    with db.atomic("IMMEDIATE"):
        waiting = Request.select().where(Request.kind == "budget", Request.status == "pending",
                                         Request.expires_at > now).count()
        if waiting >= MAX_WAITING:
            raise usage_mod.BudgetError(f"{waiting} budget changes already wait for the owner's answer")
        req = Request.create(kind="budget", chat=main.jid, sender="agent:lead", message=0, created_at=now,
                             expires_at=now + cfg.approval_timeout, folder=scope,
                             detail=json.dumps({"period": period, "unit": unit, "amount": amount, "add": add}))
        text = (f"The main agent asks to {describe(req, cfg)} — reply `approve {req.id}` or "
                f"`deny {req.id}`")
        Outbox.insert(key=f"approval:{req.id}:card", chat=main.jid, text=text, kind="notice",
                      sender=cfg.assistant_name).on_conflict_ignore().execute()
    return req


def apply(cfg: Config, req: Request, by: str) -> str:
    """Carry out an approved request (call inside the approval's transaction); its one-line result."""
    c = _change(req)
    lim = usage_mod.set_limit(cfg, req.folder, c["period"], c["unit"], None if c.get("add") else c["amount"],
                              add=c["amount"] if c.get("add") else None, by=by)
    whose = "all groups together" if req.folder == usage_mod.ALL else req.folder
    return f"approved {req.id}: {whose} may now spend {_amount(lim.unit, lim.limit)} per {lim.period}"
