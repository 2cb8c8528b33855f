"""Files people send with a message: kept in the group's ``inbox/``, named in its prompt.

Whatever the channel (a WhatsApp photo, a file given to ``nanoclaw send
--file``), an attachment is saved under ``groups/<folder>/inbox/`` and the
message row carries a description (``Message.media``): its kind, type, size,
where it is (relative to the group folder), and a note where there is
something to say ("not downloaded: …"). The prompt shows it as an
``<attachment …/>`` element; the agent's Read tool opens images and PDFs.

The group folder is the agent's to write, so ``inbox/`` is reached through
:mod:`safefs`: walked without following links, the file created ``O_EXCL`` and
renamed into place, a planted link or FIFO replaced as an entry.
"""

from __future__ import annotations

import os
import re

from nanoclaw.core.config import Config
from nanoclaw.core.safefs import Dir

INBOX = "inbox"
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
_KINDS = (("image/", "image"), ("audio/", "audio"), ("video/", "video"))


def kind_of(mime: str) -> str:
    """image, audio, video or document, by the media type."""
    return next((kind for prefix, kind in _KINDS if mime.startswith(prefix)), "document")


def describe(kind: str, mime: str, size: int, file: str | None = None, seconds: int = 0, note: str = "") -> dict:
    """An attachment as stored with its message (``Message.media``)."""
    out: dict = {"kind": kind, "type": mime, "size": size}
    if seconds:
        out["seconds"] = seconds
    if file:
        out["file"] = file
    if note:
        out["note"] = note
    return out


def safe_name(name: str) -> str:
    """A file name that is one plain path part."""
    return _SAFE.sub("_", name).strip("._")[:120] or "file"


def save(cfg: Config, folder: str, filename: str, data: bytes) -> str:
    """Write ``data`` as ``inbox/<filename>`` in the group's folder; returns that relative path.

    Written by root (``nanoclaw send --file``), the inbox and the file are handed
    to the folder's owner, so the service user's channel can still write there.
    """
    name = safe_name(filename)
    with Dir.open(cfg.groups_dir / folder, create=True) as group, group.ensure_dir(INBOX) as inbox:
        inbox.write(name, data, 0o644)
        owner = os.fstat(group.fd)
        if os.geteuid() == 0 and owner.st_uid != 0:
            os.fchown(inbox.fd, owner.st_uid, owner.st_gid)
            os.chown(name, owner.st_uid, owner.st_gid, dir_fd=inbox.fd, follow_symlinks=False)
    return f"{INBOX}/{name}"


def valid(cfg: Config, folder: str, media: object) -> dict | None:
    """A description a socket client sent (the terminal's ``inbound``), checked: a known
    shape, and a file that is a regular file in that group's inbox. None if not."""
    if not isinstance(media, dict) or set(media) - {"kind", "type", "size", "file", "seconds", "note"}:
        return None
    file = media.get("file")
    if not isinstance(file, str) or not file.startswith(f"{INBOX}/") or safe_name(file[len(INBOX) + 1:]) != \
            file[len(INBOX) + 1:]:
        return None
    try:
        with Dir.open(cfg.groups_dir / folder, INBOX) as inbox:
            st = inbox.lstat(file[len(INBOX) + 1:])
    except OSError:
        return None
    if not (st.st_mode & 0o170000) == 0o100000:  # a regular file
        return None
    mime = media.get("type") if isinstance(media.get("type"), str) else "application/octet-stream"
    return describe(kind_of(mime), mime, st.st_size, file)
