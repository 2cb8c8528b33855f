"""The account's WhatsApp groups as WhatsApp describes them: listed, named, counted.

SYNOPSIS
    groups = Groups(conn)
    await groups.discover() -> {ok, groups: [{name, jid, participants, folder}], self}
    await groups.refresh_names() -> how many registered groups were renamed
    groups.keep_refreshing()         once connected: every ``name_refresh`` seconds
    await groups.name_of(chat) -> (name, size)   an unregistered group, for its approval card
    groups.stop()

DESCRIPTION
    ``discover`` serves `nanoclaw groups discover` and the main agent's list of
    chats. Registered groups take the name WhatsApp shows, looked at again every
    ``name_refresh`` seconds while connected. An unregistered group that names the trigger may ask
    the owner; its card shows the name and size WhatsApp gives, looked up once
    per chat (cached) and within NAME_TIMEOUT, or nothing if WhatsApp does not say.

HOSTILE INPUT
    Group names are chosen by whoever made the group: stored and shown as data,
    cleaned before a card shows them (core/approvals.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from nanoclaw.channels.whatsapp.connection import Connection
from nanoclaw.channels.whatsapp.convert import GROUP_SERVER, jid_str, parse_jid
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, db
from nanoclaw.core.skeleton import supervise

log = logging.getLogger("nanoclaw.whatsapp")

NAME_TIMEOUT = 10.0  # an unregistered group's name lookup; the card says less without it


class Groups:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self._names: OrderedDict[str, tuple[str, int | None]] = OrderedDict()  # unregistered group -> name, size
        self._refresher: asyncio.Task | None = None

    async def discover(self) -> dict:
        """The account's groups, for `nanoclaw groups discover`."""
        if not self.conn.connected:
            return {"ok": False, "error": f"WhatsApp is not connected ({self.conn.status})"}
        groups = await self.conn.client.get_joined_groups()
        registered = {g.jid: g.folder for g in Group.select()}
        rows = []
        for g in groups:
            jid = jid_str(g.JID)
            rows.append({"name": g.GroupName.Name, "jid": jid, "participants": len(g.Participants),
                         "folder": registered.get(jid, "")})
        rows.sort(key=lambda r: r["name"].lower())
        return {"ok": True, "groups": rows, "self": self.conn.own_phone}

    async def refresh_names(self) -> int:
        """Update registered WhatsApp groups' display names from WhatsApp; return how many changed."""
        changed = 0
        for group in list(Group.select().where(Group.jid.endswith("@" + GROUP_SERVER))):
            try:
                info = await self.conn.client.get_group_info(parse_jid(group.jid))
            except Exception as exc:
                log.debug("name refresh failed: %s", exc, extra=log_fields(group=group.folder))
                continue
            name = info.GroupName.Name
            if name and name != group.name:
                with db.atomic("IMMEDIATE"):
                    Group.update(name=name).where(Group.id == group.id).execute()
                log.info("renamed %r -> %r", group.name, name, extra=log_fields(group=group.folder))
                changed += 1
        return changed

    def keep_refreshing(self) -> None:
        """Refresh the names while connected (started at each connect, unless still running)."""
        if self._refresher is None or self._refresher.done():
            self._refresher = supervise(asyncio.create_task(self._refresh_names_forever()), log,
                                        "refreshing group names")

    def stop(self) -> None:
        if self._refresher:
            self._refresher.cancel()

    async def _refresh_names_forever(self) -> None:
        while self.conn.connected and not self.conn.stopping:
            try:
                await self.refresh_names()
            except Exception:
                log.exception("group name refresh failed")
            await asyncio.sleep(self.conn.wcfg.name_refresh)

    async def name_of(self, chat: str) -> tuple[str, int | None]:
        """An unregistered WhatsApp group's name and size, as WhatsApp says (cached: a chat that
        keeps naming the trigger costs one lookup); ("", None) when WhatsApp does not answer."""
        if chat in self._names:
            return self._names[chat]
        info = await self.conn.while_connected(
            lambda: asyncio.wait_for(self.conn.client.get_group_info(parse_jid(chat)), NAME_TIMEOUT))
        if info is None:
            return "", None
        self._names[chat] = (info.GroupName.Name, len(info.Participants))
        while len(self._names) > 1000:
            self._names.popitem(last=False)
        return self._names[chat]
