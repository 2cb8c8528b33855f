"""The ids WhatsApp gave our sends, on disk: our own echoes are recognised by id, never by text."""

from __future__ import annotations

import os
from collections import deque
from pathlib import Path


class SentIds:
    """Ids WhatsApp gave the messages we sent, remembered across restarts.

    An append-only file of the last ``keep`` ids (compacted when it doubles):
    a late echo of our own reply after a restart must still be recognised,
    or in the owner's self-chat the assistant would answer itself.
    """

    def __init__(self, path: Path, keep: int = 5000) -> None:
        self.path, self.keep = path, keep
        self.ids: deque[str] = deque(maxlen=keep)
        try:
            self.ids.extend(line.strip() for line in path.read_text().splitlines() if line.strip())
        except FileNotFoundError:
            pass
        self.members = set(self.ids)
        self.lines = len(self.ids)

    def __contains__(self, msg_id: str) -> bool:
        return msg_id in self.members

    def add(self, msg_id: str) -> None:
        if msg_id in self.members:
            return
        if len(self.ids) == self.keep:
            self.members.discard(self.ids[0])
        self.ids.append(msg_id)
        self.members.add(msg_id)
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, (msg_id + "\n").encode())
        finally:
            os.close(fd)
        self.lines += 1
        if self.lines > 2 * self.keep:
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(i + "\n" for i in self.ids))
            os.chmod(tmp, 0o600)
            os.replace(tmp, self.path)
            self.lines = len(self.ids)
