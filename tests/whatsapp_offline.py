"""What the WhatsApp tests use to run neonize's real client without WhatsApp's servers.

* ``link_session``: a session store whatsmeow takes for linked. The schema is
  whatsmeow's own (made by neonize's Go side, which creates it without
  connecting); one device row with keys of the right sizes. The real client
  loads it and goes straight to connecting, as with a paired phone.
* ``closed_port``: a proxy address that refuses at once (a server that cannot
  be reached); ``SilentProxy``: one that accepts and never answers, so the real
  client sits in its dial (whatsmeow gives up after 60 s): a real hang.

Every real-client test sets ``[whatsapp] proxy`` to one of these, so nothing
ever reaches WhatsApp, whatever network the machine has.

Also a script, for the system test's machine:
    python whatsapp_offline.py link SESSION_DB [ACCOUNT]
    python whatsapp_offline.py silent PORT        (serves until killed)
"""

from __future__ import annotations

import os
import socket
import sqlite3
import sys
import threading
from pathlib import Path

ACCOUNT = "491700000001"


def link_session(path: Path, account: str = ACCOUNT, device: int = 7) -> None:
    """Make ``path`` a store holding one linked device of ``account``."""
    from neonize.aioze.client import ClientFactory

    path.parent.mkdir(parents=True, exist_ok=True)
    ClientFactory.get_all_devices_from_db(str(path))  # whatsmeow's schema, no connection
    r = os.urandom
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO whatsmeow_device (jid, lid, registration_id, noise_key, identity_key, "
                   "signed_pre_key, signed_pre_key_id, signed_pre_key_sig, adv_key, adv_details, "
                   "adv_account_sig, adv_account_sig_key, adv_device_sig, platform, push_name) "
                   "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                   (f"{account}:{device}@s.whatsapp.net", f"88{account[2:]}:{device}@lid", 1234, r(32), r(32),
                    r(32), 1, r(64), r(32), b"details", r(64), r(32), r(64), "android", "Owner"))
    db.close()


def map_lid(path: Path, lid: str, phone: str) -> None:
    """What whatsmeow's store learns from WhatsApp: this LID is that phone number."""
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO whatsmeow_lid_map (lid, pn) VALUES (?, ?)", (lid, phone))
    db.close()


def unlink_session(path: Path) -> None:
    """What whatsmeow does on a logout: the device leaves the store."""
    with sqlite3.connect(path) as db:
        db.execute("DELETE FROM whatsmeow_device")
    db.close()


def closed_port() -> str:
    """A proxy URL nothing listens on: every connect is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}"


class SilentProxy:
    """A proxy that accepts connections and never says a word."""

    def __init__(self, port: int = 0) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(50)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.accepted: list[socket.socket] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted.append(conn)  # kept open, never read from or written to

    def close(self) -> None:
        self.sock.close()
        for conn in self.accepted:
            conn.close()


if __name__ == "__main__":
    if sys.argv[1] == "link":
        link_session(Path(sys.argv[2]), *sys.argv[3:4])
    elif sys.argv[1] == "silent":
        SilentProxy(int(sys.argv[2]))
        threading.Event().wait()
    else:
        raise SystemExit(__doc__)
