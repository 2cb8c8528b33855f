"""router: the outbox between agents and the channel.

SUMMARY
    Stores each reply once (by its key), hands pending ones to the channel in
    order per chat, and marks them sent when the channel confirms.

READS
    ``spool/router`` (``outbound``: key, chat, text, kind, sender, reply_to);
    the ``outbox`` and ``message`` tables.

WRITES
    ``outbox`` rows (a re-delivered file finds its row and adds nothing); the
    channel's ``deliver`` requests. A failed send is retried with backoff;
    rows still pending at start are sent then.

PRIVILEGE
    The service user; no network.

HOSTILE INPUT
    Reply texts are the agents': ``<internal>`` notes are removed, nothing
    else is interpreted (formatting is the channel's).
"""

from __future__ import annotations

import asyncio
import time

from nanoclaw.core.backoff import backoff
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Message, Outbox, db
from nanoclaw.core.prompt import strip_internal
from nanoclaw.core.protocol import Spool, arequest
from nanoclaw.core.skeleton import Daemon

SEND_TIMEOUT = 60.0
RETRY_BASE, RETRY_MAX, MAX_SEND_ATTEMPTS = 1.0, 600.0, 50


class RouterDaemon(Daemon):
    name = "router"

    def setup(self) -> None:
        self.spool = Spool(self.cfg.spool_dir / "router", max_bytes=self.cfg.max_spool_bytes).ensure()
        self.watch(self.spool.new)
        self._pending = self.spool.leftovers()
        self.sent = 0

    async def work(self) -> float | None:
        paths, self._pending = self._pending + self.spool.claim_new(), []
        for env in self.spool.take(paths):
            if env.type != "outbound":
                self.spool.reject(env.path, f"type {env.type!r} is not for the router")
                continue
            self._store(env.body)
            self.spool.done(env.path)
        return await self._deliver()

    def _store(self, b: dict) -> None:
        text = strip_internal(b["text"])
        if not text:  # the queue drops silent turns; this is any other all-internal text
            self.log.info("key=%s silent: nothing to send after removing internal notes", b["key"])
            return
        with db.atomic("IMMEDIATE"):
            created = Outbox.insert(key=b["key"], chat=b["chat"], text=text, kind=b["kind"],
                                    sender=b.get("sender") or self.cfg.assistant_name,
                                    reply_to=b.get("reply_to")).on_conflict_ignore().execute()
        if not created:
            self.log.info("key=%s already in the outbox; not queued twice", b["key"])

    async def _deliver(self) -> float | None:
        now = time.time()
        blocked: set[str] = set()  # chats whose earlier message must go first
        next_due: float | None = None
        for row in list(Outbox.select().where(Outbox.status == "pending").order_by(Outbox.id)):
            if row.chat in blocked:
                continue
            if row.next_attempt_at > now:
                blocked.add(row.chat)
                next_due = min(next_due or row.next_attempt_at, row.next_attempt_at)
                continue
            ok, info = await self._send(row)
            if ok:
                row.status, row.sent_at, row.channel_id, row.error = "sent", time.time(), info, ""
                self.sent += 1
                self.log.info("key=%s sent", row.key, extra=log_fields(outbox=row.id, chat=row.chat))
            else:
                row.attempts += 1
                row.error = info[:500]
                if row.attempts >= MAX_SEND_ATTEMPTS:
                    row.status = "failed"
                    self.log.error("given up after %d attempts: %s", row.attempts, info,
                                   extra=log_fields(outbox=row.id, chat=row.chat))
                else:
                    delay = backoff(row.attempts, RETRY_BASE, RETRY_MAX)
                    row.next_attempt_at = time.time() + delay
                    blocked.add(row.chat)
                    next_due = min(next_due or row.next_attempt_at, row.next_attempt_at)
                    self.log.warning("send failed (%s); retry in %.0fs", info, delay,
                                     extra=log_fields(outbox=row.id, chat=row.chat))
            row.save()
        return None if next_due is None else max(0.0, next_due - time.time())

    async def _send(self, row: Outbox) -> tuple[bool, str]:
        """Hand one row to the channel; (True, channel message id) once it confirms."""
        req = {"op": "deliver", "outbox_id": row.id, "chat": row.chat,
               "text": row.text, "kind": row.kind, "sender": row.sender or self.cfg.assistant_name}
        quote = quote_for(row)
        if quote:
            req["quote"] = quote
        try:
            reply = await arequest(self.cfg.socket("channel"), req, timeout=SEND_TIMEOUT)
        except (OSError, asyncio.TimeoutError, ValueError) as exc:  # not reached, or no confirmation
            return False, f"channel unreachable or silent: {exc!r}"
        if reply.get("ok"):
            return True, str(reply.get("channel_id", ""))
        return False, str(reply.get("error", "refused"))

    def status(self) -> str:
        pending = Outbox.select().where(Outbox.status == "pending").count()
        return f"{pending} pending, {self.sent} sent since start"


def quote_for(row: Outbox) -> dict | None:
    """The message a reply answers, when quoting it helps: in a chat where others
    spoke after it, so the reply would otherwise seem to answer them."""
    if row.kind != "reply" or not row.reply_to:
        return None
    asked = Message.get_or_none(Message.id == row.reply_to)
    if asked is None or asked.chat != row.chat:
        return None
    spoke_since = Message.select().where(Message.chat == row.chat, Message.id > asked.id,
                                         Message.is_bot == False,  # noqa: E712
                                         Message.agent.is_null()).exists()  # a team's own messages are not the chat's
    if not spoke_since:
        return None
    return {"id": asked.channel_id, "sender": asked.sender, "text": asked.text[:500]}


main = RouterDaemon.main
