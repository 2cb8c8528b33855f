"""Whether whatsmeow's session store holds a linked device, read without neonize.

The channel's own client only ever connects a linked session: an unlinked one
would sit in pairing, where neonize 0.5.2 cannot be stopped (see pairproc).
So the store is looked at first, read-only, with Python's sqlite3: no Go
library, no network, no file created.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path


class SessionError(Exception):
    """The session store exists but cannot be read (locked, damaged)."""


def linked_account(path: Path) -> str | None:
    """The account the session at ``path`` is linked to, as its phone JID without the
    device part (``491701234567@s.whatsapp.net``); None when it holds no device: never
    paired, or logged out (whatsmeow then deletes the device from its store)."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5)
        try:
            row = con.execute("SELECT jid FROM whatsmeow_device ORDER BY jid LIMIT 1").fetchone()
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None  # created, never paired (whatsmeow makes its tables at the first connect)
        raise SessionError(f"cannot read the WhatsApp session {path}: {exc}") from exc
    except sqlite3.DatabaseError as exc:
        raise SessionError(f"cannot read the WhatsApp session {path}: {exc}") from exc
    if not row or not row[0]:
        return None
    return bare_jid(row[0])


def bare_jid(text: str) -> str:
    """``user[.agent][:device]@server`` without the agent and device parts ("" if empty)."""
    user, at, server = text.strip().partition("@")
    if not at:
        return ""
    return f"{user.split(':')[0].split('.')[0]}@{server}"
