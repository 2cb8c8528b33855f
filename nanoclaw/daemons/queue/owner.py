"""owner: the owner's requests, as far as the queue carries them out.

SUMMARY
    ``approve N``/``deny N`` in the main chat are carried out here (core/approvals.py
    decides), as are ``stop [GROUP]`` (stop.py), ``status`` and ``revoke NAME``
    (owner_chat.py): answered in one line and never handed to the main agent. A
    request nobody answers expires at its time (the next expiry is one of ``work()``'s
    deadlines); a chat the owner approved has its agent start at the message that asked.

SYNOPSIS
    Owner(q).sweep() -> float | None
    Owner.answer(main, message)
    Owner.lead_start(group) -> int

DESCRIPTION
    The cursor is the queue's: a group's lead gets its cursor when the queue first serves
    the group (state.py), at ``lead_start``: for a chat the owner approved, the message
    before the one that asked, which the approving request says (core/approvals.py only
    records the decision; it never moves the cursor).

HOSTILE INPUT
    Only a main-chat message from the owner's own account or a sender the main chat
    admits is an answer (pending.owner_command, and approvals or owner_chat again); bot and
    team messages never are.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING


from nanoclaw.core import approvals
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Message, Request
from nanoclaw.core.protocol import nudge
from nanoclaw.core.status_summary import summary
from nanoclaw.daemons.queue import approval_answers, owner_chat, sql

if TYPE_CHECKING:
    from nanoclaw.daemons.queue import QueueDaemon


class Owner:
    def __init__(self, q: QueueDaemon) -> None:
        self.q = q
        self._expiry_seen = -1  # the newest request when requests' expiry was last looked at
        self._expiry_next: float | None = None  # when the next pending request expires

    def sweep(self) -> float | None:
        """Requests nobody answered expire at their time: the next one's is a deadline like a
        retry's, so nothing polls for it. Without a new request or a deadline passed there is
        nothing to look at (answered requests only take deadlines away). Returns the seconds
        until the next expiry."""
        newest = sql.scalar(sql.NEWEST_REQUEST) or 0
        if newest != self._expiry_seen or (self._expiry_next is not None and time.time() >= self._expiry_next):
            left = approvals.expire(self.q.cfg)
            self._expiry_seen, self._expiry_next = newest, None if left is None else time.time() + left
        return None if self._expiry_next is None else max(0.0, self._expiry_next - time.time())

    def answer(self, main: Group, m: Message) -> None:
        """Carry out the owner's ``approve N``/``deny N`` (once: core/approvals.py records the
        answer), or ``stop``, ``status``, ``revoke`` (once: owner_chat.py)."""
        cfg = self.q.cfg
        done = owner_chat.handle(cfg, m, main, self.q.stopper.stop, lambda: summary(cfg)) \
            or approval_answers.handle_command(cfg, m, main)
        if done != "now":
            return
        self.q.log.info("is the owner's answer to a request; handled, not for the agent",
                        extra=log_fields(message=m.id))
        # a new group (or an allowed sender) has work now; the daemons that cache groups look again
        self.q.wake.set()
        for daemon in ("router", "ipc", "proxy", "channel"):
            nudge(self.q.cfg.socket(daemon))

    @staticmethod
    def lead_start(group: Group) -> int:
        """Where a group's lead starts (the message id before its first): a chat the owner
        approved at the message that asked (what the chat said before is not its agent's),
        any other group at the beginning. The approving request is the one decided as the
        group was added (core/approvals.py sets its ``decided_at`` to the group's
        ``added_at``, in the one transaction), so a chat registered again later by hand is
        not taken for it."""
        req = (Request.select(Request.message)
               .where(Request.kind == "chat", Request.status == "approved", Request.chat == group.jid,
                      Request.folder == group.folder, Request.decided_at == group.added_at).first())
        return req.message - 1 if req is not None else 0
