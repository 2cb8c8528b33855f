"""The main agent's list of chats: ``available_groups.json`` in the main group's ``in/``.

SYNOPSIS
    chats = ChatList(daemon)
    await chats.update(whatsapp) -> seconds until the next update, or None

DESCRIPTION
    The WhatsApp groups we are in (listed again every CHATS_REFRESH seconds while
    WhatsApp is connected) and every registered chat, each with its name, id and
    the folder it is registered as. The main agent's ``list_available_groups``
    tool reads the file (read-only to it); it is written only when it changes.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

from nanoclaw.core.models import Group
from nanoclaw.core.safefs import write_atomic

if TYPE_CHECKING:
    from nanoclaw.channels import WhatsAppBackend
    from nanoclaw.daemons.channel import ChannelDaemon

CHATS_REFRESH = 3600.0  # seconds between listings of the WhatsApp groups we are in


class ChatList:
    def __init__(self, daemon: ChannelDaemon) -> None:
        self.cfg, self.log = daemon.cfg, daemon.log
        self._chats: list[dict] = []  # the WhatsApp groups we are in, as discover() last said
        self._chats_at = 0.0
        self._chats_written = ""

    async def update(self, wa: WhatsAppBackend | None) -> float | None:
        """List the WhatsApp groups again when due, and write the file if it changed."""
        main = Group.get_or_none(Group.is_main == True)  # noqa: E712
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
