"""channel: the chat connections, in and out.

SUMMARY
    Every message from a chat network is stored before it is acknowledged;
    every reply the router hands over is sent and recorded.

READS
    WhatsApp (neonize) events; terminal clients on its socket (``inbound``,
    ``watch``); the router's ``deliver``; the queue's ``typing``; ``nanoclaw
    pair`` and ``groups discover``; the ``groups`` table.

WRITES
    ``message`` rows (``Message``, deduplicated by chat and the network's id),
    committed *before* the sender is acknowledged (messages that arrive
    together share one commit), then a nudge to the queue;
    bot messages (``is_bot``) for what it sent, which is how our own messages
    are recognised later, never by their text; media into
    ``groups/<folder>/inbox/`` (walked with ``safefs``: the agent can write
    that folder); a notice to ``spool/router`` for the main chat when a
    network stops for good or for hours (WhatsApp logged out, banned) and
    the main chat is on another one. When an unknown chat (or an unknown
    sender in an ``ask`` group) names the trigger: a ``request`` row and its
    card for the main chat (an ``outbox`` row), in the transaction that
    stores the message (core/approvals.py); an unregistered chat's message
    is kept only while its request is open (or ``store_unregistered``).

PRIVILEGE
    The service user; network for WhatsApp only (nanoclaw-channel.service).

HOSTILE INPUT
    Everything from the chat network (text, media, names, ids) and every
    socket line: sizes are capped, unknown chats never reach an agent (they
    can only ask the owner; the names they give are cleaned before shown).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid

from peewee import DatabaseError, IntegrityError

from nanoclaw.channels import (
    BACKENDS,
    LOOK_UP,
    Backend,
    Inbound,
    SendError,
    StoreError,
    TerminalBackend,
    WhatsAppBackend,
    attachments,
)
from nanoclaw.core import approvals, faults
from nanoclaw.core import config as config_mod
from nanoclaw.core import groups as groups_mod
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Message, db
from nanoclaw.core.protocol import Spool, nudge
from nanoclaw.core.safefs import write_atomic
from nanoclaw.core.skeleton import Daemon

MAX_TEXT = 64 * 1024
CHATS_REFRESH = 3600.0  # seconds between listings of the WhatsApp groups we are in  # longer inbound text is refused, not truncated silently
HISTORY = 10
CHAT_ID = groups_mod.CHAT_ID  # a chat network's id, e.g. 1203…@g.us


class ChannelDaemon(Daemon):
    name = "channel"

    async def setup(self) -> None:
        self._chats: list[dict] = []  # the WhatsApp groups we are in, as discover() last said
        self._chats_at = 0.0
        self._chats_written = ""
        self.received = 0
        self.commits = 0  # transactions that stored inbound messages (group commit: fewer than messages)
        self.store_failure = ""  # why the last message could not be stored, until one is
        self._to_store: list[tuple[Inbound, asyncio.Future[tuple[int, bool]]]] = []  # waiting for a commit
        self._committer: asyncio.Task | None = None
        self.backends: list[Backend] = []
        for name in self.cfg.channels:
            if name not in BACKENDS:
                raise SystemExit(f"unknown channel backend {name!r} (known: {', '.join(BACKENDS)})")
            self.backends.append(BACKENDS[name].create(self.cfg))
        self.terminal = next((b for b in self.backends if isinstance(b, TerminalBackend)), None)
        for backend in self.backends:
            backend.on_status = self._status_changed
            backend.on_alert = lambda text, b=backend: self._alert(b, text)
            await backend.start(self.receive)

    def receive(self, msg: Inbound) -> asyncio.Future[tuple[int, bool]]:
        """Store an inbound message durably. Its place in the commit line is taken by this
        call, so messages are stored in the order of calls (a backend that hands over a
        chat's messages in order need not wait for one's commit before the next); the
        future gives (row id, was it a duplicate) once the commit holding it is done.

        Group commit: messages that arrive together share one transaction, and so one
        fsync of the WAL; each sender is answered only after the commit that holds its row.
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
            self._committer = self.spawn(self._commit_pending(), "storing inbound messages",
                                         lambda exc: self._commit_soon())

    async def _stored(self, msg: Inbound, done: asyncio.Future[tuple[int, bool]]) -> tuple[int, bool]:
        try:
            return await done
        except (DatabaseError, OSError) as exc:
            self.store_failure = faults.describe(exc)
            self.log.error("cannot be stored: %s", self.store_failure,
                           extra=log_fields(chat=msg.chat, msg=msg.channel_id))
            self._set_status()
            raise StoreError(f"not stored: {self.store_failure}") from exc

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
                if self.terminal:
                    await self.terminal.show(msg.chat, {"text": msg.text, "id": msg.channel_id,
                                                        "from": msg.sender_name or msg.sender})
            if self.store_failure:
                self.store_failure = ""
                self._set_status()
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
                        row = Message.create(
                            chat=msg.chat, sender=msg.sender, sender_name=msg.sender_name, text=msg.text,
                            timestamp=msg.timestamp, channel_id=msg.channel_id, from_me=msg.from_me,
                            is_bot=False, media=json.dumps(msg.media) if msg.media else None)
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

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        op = req["op"]
        if op == "inbound":
            return await self._inbound(req)
        if op == "watch":
            return self._watch(req, writer)
        if op == "deliver":
            return await self._deliver(req)
        if op == "typing":
            return await self._typing(req)
        if op == "pair":
            return await self._pair(req, writer)
        if op == "discover_groups":
            wa = self._whatsapp()
            return await wa.discover() if wa else self._no_whatsapp()
        return await super().handle(req, writer)

    def _status_changed(self) -> None:
        self._set_status()
        self.wake.set()  # e.g. WhatsApp connected: time to list its groups for the main agent

    async def work(self) -> float | None:
        """Keep ``available_groups.json`` in the main group's ``in/`` (read-only to its agent, whose
        ``list_available_groups`` tool reads it): the WhatsApp groups we are in, and every
        registered chat, each with its name, id and the folder it is registered as."""
        main = Group.get_or_none(Group.is_main == True)  # noqa: E712
        wa = self._whatsapp()
        if wa is not None and wa.connected and time.time() - self._chats_at >= CHATS_REFRESH:
            try:
                reply = await wa.discover()
                if reply.get("ok"):
                    self._chats, self._chats_at = reply["groups"], time.time()
            except Exception as exc:  # WhatsApp may drop mid-call: the next pass tries again
                self.log.debug("listing WhatsApp groups failed: %s", exc)
        if main is not None:
            registered = {g.jid: g.folder for g in Group.select()}
            chats = [{"jid": c["jid"], "name": c["name"], "members": c["participants"],
                      "registered_as": registered.get(c["jid"])} for c in self._chats]
            listed = {c["jid"] for c in chats}
            chats += [{"jid": g.jid, "name": g.name, "registered_as": g.folder}
                      for g in Group.select().order_by(Group.folder) if g.jid not in listed]
            text = json.dumps(chats, indent=1, ensure_ascii=False)
            if text != self._chats_written:
                path = self.cfg.ipc_dir / main.folder / "in" / "available_groups.json"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_atomic(path, text, 0o644)
                self._chats_written = text
        return CHATS_REFRESH if wa is not None and wa.connected else None

    def disconnected(self, writer: asyncio.StreamWriter) -> None:
        # `nanoclaw send --wait` or a chat that exited: no longer a terminal attached
        if self.terminal:
            self.terminal.detach(writer)

    def _backend_for(self, chat: str) -> Backend | None:
        """The enabled backend whose network this chat id belongs to."""
        return next((b for b in self.backends if b.owns(chat)), None)

    def _whatsapp(self) -> WhatsAppBackend | None:
        return next((b for b in self.backends if isinstance(b, WhatsAppBackend)), None)

    @staticmethod
    def _no_whatsapp() -> dict:
        return {"ok": False, "error": 'the WhatsApp channel is not enabled: add "whatsapp" to channels '
                                      "in the configuration and restart the channel"}

    async def _typing(self, req: dict) -> dict:
        chat, on = req.get("chat"), req.get("on")
        if not isinstance(chat, str) or not isinstance(on, bool):
            return {"ok": False, "error": "typing needs 'chat' and 'on' (true or false)"}
        backend = self._backend_for(chat)
        if backend is not None:
            try:
                await backend.typing(chat, on)
            except Exception as exc:  # cosmetic: log, never fail the caller
                self.log.debug("typing failed: %s", exc, extra=log_fields(chat=chat))
        return {"ok": True}

    async def _pair(self, req: dict, writer: asyncio.StreamWriter) -> dict:
        """Pair WhatsApp, pushing each QR code (or the phone code) on this connection."""
        wa = self._whatsapp()
        if wa is None:
            return self._no_whatsapp()
        phone = req.get("phone")
        if phone is not None and not isinstance(phone, str):
            return {"ok": False, "error": "'phone' must be a string"}

        async def emit(event: dict) -> None:
            writer.write(json.dumps({"op": "pair", **event}).encode() + b"\n")
            await asyncio.wait_for(writer.drain(), 10)

        return await wa.pair(phone, emit)

    def _terminal_group(self, req: dict) -> tuple[Group | None, dict | None]:
        """The group a terminal request names, or the error reply to send instead."""
        if self.terminal is None:
            return None, {"ok": False, "error": "the terminal channel is not enabled in the configuration"}
        ref = req.get("group") or req.get("chat")
        if not isinstance(ref, str) or not ref:
            return None, {"ok": False, "error": "a 'group' (folder, name or chat id) is required"}
        try:
            return groups_mod.find_group(ref), None
        except groups_mod.GroupError as exc:
            return None, {"ok": False, "error": str(exc)}

    async def _inbound(self, req: dict) -> dict:
        group, error = self._terminal_group(req)
        chat = req.get("chat")
        if error and self.terminal is not None and not req.get("group") and isinstance(chat, str) \
                and CHAT_ID.fullmatch(chat):
            # A message from a chat no group is registered for, as a chat network would hand it
            # over (scripts and tests on this owner-only socket): stored and treated as one.
            return await self._inbound_unregistered(req, chat)
        if error:
            return error
        text = req.get("text")
        media = None
        if req.get("media") is not None:  # a file `nanoclaw send --file` put in the group's inbox
            media = attachments.valid(self.cfg, group.folder, req["media"])
            if media is None:
                return {"ok": False, "error": "the attachment is not a file in this group's inbox/"}
        if not isinstance(text, str) or not (text.strip() or media):
            return {"ok": False, "error": "empty message"}
        if len(text) > MAX_TEXT:
            return {"ok": False, "error": f"message too long ({len(text)} > {MAX_TEXT} characters)"}
        msg_id = req.get("id") or uuid.uuid4().hex
        sender = req.get("sender") or "owner@term"
        if not isinstance(msg_id, str) or not isinstance(sender, str):
            return {"ok": False, "error": "'id' and 'sender' must be strings"}
        try:
            row_id, dup = await self.receive(Inbound(
                chat=group.jid, sender=sender, sender_name=str(req.get("sender_name") or sender.split("@")[0]),
                text=text, channel_id=msg_id, timestamp=time.time(), from_me=sender == "owner@term", media=media,
                group=group))
        except StoreError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "message_id": row_id, "duplicate": dup, "chat": group.jid}

    async def _inbound_unregistered(self, req: dict, chat: str) -> dict:
        text, sender = req.get("text"), req.get("sender") or "stranger@term"
        msg_id = req.get("id") or uuid.uuid4().hex
        members = req.get("members")
        if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
            return {"ok": False, "error": "a message needs text (at most 64 KiB)"}
        if not isinstance(msg_id, str) or not isinstance(sender, str) or \
                (members is not None and (not isinstance(members, int) or isinstance(members, bool))):
            return {"ok": False, "error": "'id' and 'sender' must be strings, 'members' a number"}
        sender_name = str(req.get("sender_name") or sender.split("@")[0])
        # a direct chat is named after the person in it, as the WhatsApp backend names it
        chat_name = str(req.get("chat_name") or ("" if chat.endswith("@g.us") else sender_name))
        try:
            row_id, dup = await self.receive(Inbound(
                chat=chat, sender=sender, sender_name=sender_name, text=text, channel_id=msg_id,
                timestamp=time.time(), from_me=False, chat_name=chat_name, members=members))
        except StoreError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True, "message_id": row_id, "duplicate": dup, "chat": chat}

    def _watch(self, req: dict, writer: asyncio.StreamWriter) -> dict:
        group, error = self._terminal_group(req)
        if error:
            return error
        self.terminal.attach(group.jid, writer)
        recent = list(Message.select().where(Message.chat == group.jid, Message.agent.is_null())  # not team-internal
                      .order_by(Message.id.desc()).limit(HISTORY))
        history = [{"text": m.text, "from": "assistant" if m.is_bot else (m.sender_name or m.sender),
                    "name": m.sender_name if m.is_bot and m.sender_name != self.cfg.assistant_name else "",
                    "time": m.timestamp} for m in reversed(recent)]
        return {"ok": True, "chat": group.jid, "group": group.folder, "history": history}

    async def _deliver(self, req: dict) -> dict:
        chat, text, outbox_id = req.get("chat"), req.get("text"), req.get("outbox_id")
        if not isinstance(chat, str) or not isinstance(text, str) or not isinstance(outbox_id, int):
            return {"ok": False, "error": "deliver needs 'chat', 'text' and 'outbox_id'"}
        backend = self._backend_for(chat)
        if backend is None:
            return {"ok": False, "error": f"no enabled channel handles chat {chat!r}"}
        # One id per outbox row: if the router re-sends because our confirmation
        # was lost, the row is found and nothing goes out twice.
        # Networks that pick their own ids (WhatsApp) are matched by the outbox row.
        msg_id = f"nc{outbox_id:08d}"
        sent = Message.get_or_none((Message.chat == chat) & ((Message.channel_id == msg_id)
                                                             | (Message.outbox_id == outbox_id)))
        if sent is not None:
            return {"ok": True, "channel_id": sent.channel_id, "already": True}
        sender = req.get("sender") if isinstance(req.get("sender"), str) else ""
        if backend is self.terminal:
            # A terminal chat's delivery *is* its history: record, then show.
            if (refusal := self._record_sent(chat, text, msg_id, outbox_id, sender)) is not None:
                return refusal
            await self.terminal.send(chat, text, msg_id, sender=sender)
        else:
            try:
                quote = req.get("quote") if isinstance(req.get("quote"), dict) else None
                msg_id = await backend.send(chat, text, msg_id, quote=quote, sender=sender)
            except SendError as exc:
                return {"ok": False, "error": str(exc)}
            # Sent but not recorded: the router sends it again and the backend knows the id.
            if (refusal := self._record_sent(chat, text, msg_id, outbox_id, sender)) is not None:
                return refusal
            if self.terminal:
                await self.terminal.show(chat, {"text": text, "id": msg_id, "from": "assistant", "name": sender})
        self.log.info("sent as %s", msg_id, extra=log_fields(chat=chat, outbox=outbox_id))
        return {"ok": True, "channel_id": msg_id}

    def _record_sent(self, chat: str, text: str, msg_id: str, outbox_id: int, sender: str = "") -> dict | None:
        """Store what we sent as a bot message: the flag, not its text, marks it as ours
        (``sender`` is the team member it went out as, if not the assistant). When the disk
        refuses it: the refusal for the router, which sends it again later (else None)."""
        try:
            with db.atomic("IMMEDIATE"):
                Message.insert(chat=chat, sender=self.cfg.assistant_name,
                               sender_name=sender or self.cfg.assistant_name, text=text, timestamp=time.time(),
                               channel_id=msg_id, from_me=True, is_bot=True,
                               outbox_id=outbox_id).on_conflict_ignore().execute()
        except DatabaseError as exc:
            if faults.storage_error(exc) is None:
                raise
            self.store_failure = faults.describe(exc)
            self.log.error("sent message not recorded: %s; the router tries again", self.store_failure,
                           extra=log_fields(chat=chat, outbox=outbox_id))
            self._set_status()
            return {"ok": False, "error": f"not recorded: {self.store_failure}"}
        if self.store_failure:
            self.store_failure = ""
            self._set_status()
        return None

    def _alert(self, backend: Backend, text: str) -> None:
        """Tell the owner that ``backend`` stopped (for good, or for hours) in the main chat, when
        that chat is on another network: the network that failed cannot carry the news. The
        router delivers it like any notice (spool/router)."""
        main = Group.get_or_none(Group.is_main == True)  # noqa: E712
        other = self._backend_for(main.jid) if main else None
        if other is None or other is backend:
            self.log.info("%s alert not posted: the main chat is not on another channel", backend.name)
            return
        self.put(Spool(self.cfg.spool_dir / "router").ensure(), "outbound", {
            "key": f"channel:{backend.name}:{uuid.uuid4().hex}", "chat": main.jid, "kind": "notice",
            "text": f"{backend.name}: {text}"}, then=lambda: nudge(self.cfg.socket("router")))
        self.wake.set()  # a kept write is tried at the next pass
        self.log.info("%s alert posted to the main chat %s", backend.name, main.jid)

    def status(self) -> str:
        parts = [f"{b.name}: {b.status()}" for b in self.backends]
        if self.store_failure:
            parts.append(f"MESSAGES NOT STORED: {self.store_failure}")
        stuck = self.stuck()
        if stuck:
            parts.append(f"STUCK: {stuck}")
        return "; ".join(parts) + f"; {self.received} received since start in {self.commits} commits"

    def stuck(self) -> str:
        return "; ".join(filter(None, (b.stuck() for b in getattr(self, "backends", ()))))

    async def shutdown(self) -> None:
        for backend in self.backends:
            await backend.stop()

    async def run_async(self) -> None:
        await super().run_async()
        wa = self._whatsapp() if hasattr(self, "backends") else None
        if wa is not None and wa.lingering:
            # neonize left a Go call blocked in a worker thread (a stop during a dial waits for
            # the dial): asyncio.run, then the interpreter, would wait for it until systemd's
            # SIGKILL. Everything is stored; leave from inside the loop.
            self.log.info("exiting without waiting for the WhatsApp client's thread")
            logging.shutdown()
            os._exit(0)

    @classmethod
    def main(cls) -> None:
        cfg = config_mod.get()
        if "whatsapp" in cfg.channels:
            from nanoclaw.channels.whatsapp.goenv import exec_with_go_environment
            exec_with_go_environment(cfg.whatsapp)  # returns once the environment is right
        cls(cfg).run()


main = ChannelDaemon.main
