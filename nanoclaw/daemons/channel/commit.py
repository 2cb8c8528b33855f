"""The commit line: every inbound message stored, in order, before its sender hears it was.

SYNOPSIS
    line = CommitLine(daemon)
    line.receive(msg) -> awaitable (row id, duplicate?), or raising StoreError
    line.received, line.commits

DESCRIPTION
    ``receive`` takes the message's place in the line at once (so a backend that
    hands over a chat's messages in order need not wait for one's commit before
    the next) and returns what its sender awaits.

    Group commit: messages that arrive together share one transaction, and so one
    fsync of the WAL; each sender is answered only after the commit that holds its
    row. In that transaction a message from a chat no group is registered for (or
    from an unknown sender in an ``ask`` group) that names the trigger makes its
    approval request and card (core/approvals.py): the message and the request are
    stored together, or neither is. A chat the owner never accepted leaves nothing.

DIAGNOSTICS
    The disk or the database failing fails the whole batch: every sender hears the
    real cause (a full disk, say) as StoreError and the daemon's status says it
    until a message is stored again. One message's own failure undoes only its rows.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING

from peewee import DatabaseError, IntegrityError

from nanoclaw.channels import LOOK_UP, Inbound, StoreError
from nanoclaw.core import approvals, faults
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Message, db
from nanoclaw.core.protocol import nudge

if TYPE_CHECKING:
    from nanoclaw.daemons.channel import ChannelDaemon

# Each inbound message's row, as plain SQL (peewee built this text anew for every message; the
# columns are Message's, with its defaults for what an inbound message does not set).
INSERT = ("INSERT INTO message (chat, sender, sender_name, text, timestamp, channel_id, from_me, is_bot, depth, "
          "media) VALUES (?, ?, ?, ?, ?, ?, ?, 0, 0, ?)")


class CommitLine:
    """The messages waiting for a commit, and the one task committing them."""

    def __init__(self, daemon: ChannelDaemon) -> None:
        self.daemon = daemon
        self.cfg, self.log = daemon.cfg, daemon.log
        self.received = 0
        self.commits = 0  # transactions that stored inbound messages (group commit: fewer than messages)
        self._to_store: list[tuple[Inbound, asyncio.Future[tuple[int, bool]]]] = []  # waiting for a commit
        self._committer: asyncio.Task | None = None

    def receive(self, msg: Inbound) -> asyncio.Future[tuple[int, bool]]:
        """Store an inbound message durably. Its place in the commit line is taken by this
        call, so messages are stored in the order of calls; the future gives (row id, was
        it a duplicate) once the commit holding it is done.

        The future raises StoreError (with the real cause, e.g. a full disk) when the
        message cannot be stored: the sender must not be told it was received.
        """
        done: asyncio.Future[tuple[int, bool]] = asyncio.get_running_loop().create_future()
        self._to_store.append((msg, done))
        self._commit_soon()
        return asyncio.ensure_future(self._stored(msg, done))  # the caller awaits it

    def _commit_soon(self) -> None:
        """Make sure a committer works on what waits to be stored; one that failed is replaced
        (its failure logged), so no sender waits for ever."""
        if self._to_store and (self._committer is None or self._committer.done()):
            self._committer = self.daemon.spawn(self._commit_pending(), "storing inbound messages",
                                                lambda exc: self._commit_soon())

    async def _stored(self, msg: Inbound, done: asyncio.Future[tuple[int, bool]]) -> tuple[int, bool]:
        try:
            return await done
        except (DatabaseError, OSError) as exc:
            failure = faults.describe(exc)
            self.log.error("cannot be stored: %s", failure, extra=log_fields(chat=msg.chat, msg=msg.channel_id))
            self.daemon.store_failed(failure)
            raise StoreError(f"not stored: {failure}") from exc

    async def _commit_pending(self) -> None:
        await asyncio.sleep(0)  # requests read in this turn of the loop join the same commit
        while self._to_store:
            batch, self._to_store = self._to_store, []
            self.commits += 1
            try:
                results = self._commit(batch)
            except Exception as exc:  # nothing of the batch is stored: every sender hears why
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            stored = False
            for (msg, done), (row_id, dup, request, kept, error) in zip(batch, results, strict=True):
                if error is not None:
                    done.set_exception(error)
                    continue
                done.set_result((row_id, dup))
                if dup:
                    continue
                if request is not None:
                    self.log.info("asks the owner",
                                  extra=log_fields(chat=msg.chat, msg=msg.channel_id, request=request.id))
                    nudge(self.cfg.socket("router"))
                if not kept:
                    self.log.info("unregistered chat, no request open; not kept",
                                  extra=log_fields(chat=msg.chat, msg=msg.channel_id))
                    continue
                stored = True
                self.received += 1
                self.log.info("stored", extra=log_fields(chat=msg.chat, msg=msg.channel_id, message=row_id))
                if self.daemon.terminal:
                    await self.daemon.terminal.show(msg.chat, {"text": msg.text, "id": msg.channel_id,
                                                               "from": msg.sender_name or msg.sender})
            self.daemon.stored_again()
            if stored:
                nudge(self.cfg.socket("queue"))

    def _commit(self, batch: list[tuple[Inbound, asyncio.Future]]) -> list[tuple]:
        """For each message (row id, duplicate?, the approval request it made, kept?, error),
        all in one committed transaction; one message's failure undoes only its own rows."""
        results: list[tuple] = []
        with db.atomic("IMMEDIATE"):
            for msg, _ in batch:
                try:
                    with db.atomic():  # a savepoint per message
                        media = json.dumps(msg.media) if msg.media else None
                        row_id = db.execute_sql(INSERT, (msg.chat, msg.sender, msg.sender_name, msg.text,
                                                         msg.timestamp, msg.channel_id, msg.from_me,
                                                         media)).lastrowid
                        row = Message(id=row_id, chat=msg.chat, sender=msg.sender, sender_name=msg.sender_name,
                                      text=msg.text, timestamp=msg.timestamp, channel_id=msg.channel_id,
                                      from_me=msg.from_me, is_bot=False, depth=0, media=media)
                        # An unknown chat (or an "ask" group's unknown sender) naming the trigger asks
                        # the owner: the request and its card are made with the message, or neither is.
                        group = Group.get_or_none(Group.jid == msg.chat) if msg.group == LOOK_UP else msg.group
                        request = approvals.on_inbound(self.cfg, row, group, chat_name=msg.chat_name,
                                                       members=msg.members)
                        kept = (request is not None or group is not None or self.cfg.whatsapp.store_unregistered
                                or approvals.keeps_unregistered(msg.chat))
                        if not kept:  # a chat the owner never accepted: nothing of it is kept
                            row.delete_instance()
                    results.append((row.id, False, request, kept, None))
                except IntegrityError:
                    existing = Message.get(Message.chat == msg.chat, Message.channel_id == msg.channel_id)
                    self.log.info("duplicate; stored once", extra=log_fields(chat=msg.chat, msg=msg.channel_id))
                    results.append((existing.id, True, None, True, None))
                except DatabaseError:
                    raise  # the disk or the database: the whole batch fails, every sender hears why
                except Exception as exc:  # this message's own problem: the others are still stored
                    self.log.exception("cannot be stored", extra=log_fields(chat=msg.chat, msg=msg.channel_id))
                    results.append((0, False, None, False, exc))
        return results
