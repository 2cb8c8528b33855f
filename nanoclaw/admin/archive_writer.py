"""The archive writer: the agents' trees into a tar, read from descriptors, no link followed.

SYNOPSIS
    Writer(tar)                                   an archive being written, and what was left out of it
    Writer.add_bytes(name, data, mode)            a member from memory (the manifest, the credential)
    Writer.add_file(d, name, arcname, part)       one regular file of the directory d (a safefs.Dir)
    Writer.add_tree(base, arcroot, part, leave_out)
                                                  everything below base, walked with safefs.Dir
    Writer.skipped                                what was left out, counted by reason
    Part(label)                                   one area of the archive: its files and bytes

DESCRIPTION
    backup.py hands it the trees; it decides, file by file, what goes into the archive and
    says what did not. Modes are kept without set-id bits, owners are not (restore.py gives
    the state's owner everything).

HOSTILE INPUT
    The group folders and sessions are the agents'. They are walked with ``safefs.Dir``
    from descriptors: no link is followed (a symlink is archived as a symlink, its target
    as text), FIFOs, sockets and devices are skipped and counted, a file is read through a
    descriptor opened ``O_NOFOLLOW | O_NONBLOCK`` and must be a regular file then, nothing
    is archived as a hard link, the walk stays on the directory's own filesystem and goes
    no deeper than MAX_DEPTH. A file that shrinks while it is read is padded to the size
    its header gave, so the archive stays whole (and the file is counted as changed).
"""

from __future__ import annotations

import errno
import io
import os
import stat
import tarfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.core.safefs import Dir

MAX_DEPTH = 64  # directories deeper than this (an agent's making) are left out, and said


@dataclass
class Part:
    """One area of the archive, as the report shows it."""

    label: str
    files: int = 0
    bytes: int = 0


class _Exact(io.RawIOBase):
    """A file's bytes, exactly ``size`` of them: cut there, or padded with zeros if the file
    shrank since its header was written (tarfile would otherwise break off mid-archive)."""

    def __init__(self, fd: int, size: int) -> None:
        self.fd, self.left, self.short = fd, size, False

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self.left if n is None or n < 0 else min(n, self.left)
        chunks, got = [], 0
        while got < n:
            data = b"" if self.short else os.read(self.fd, n - got)
            if not data:
                self.short = True
                data = b"\0" * (n - got)
            chunks.append(data)
            got += len(data)
        self.left -= got
        return b"".join(chunks)


class Writer:
    """The archive being written, and what was left out of it."""

    def __init__(self, tar: tarfile.TarFile) -> None:
        self.tar = tar
        self.skipped: Counter = Counter()

    def _info(self, name: str, st: os.stat_result, kind: bytes) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = st.st_mode & 0o777  # no set-id bits, whoever set them
        info.mtime = int(st.st_mtime)
        info.uid = info.gid = 0
        info.uname = info.gname = ""
        return info

    def add_bytes(self, name: str, data: bytes, mode: int = 0o600) -> None:
        info = tarfile.TarInfo(name)
        info.size, info.mode, info.mtime = len(data), mode, int(time.time())
        self.tar.addfile(info, io.BytesIO(data))

    def add_file(self, d: Dir, name: str, arcname: str, part: Part) -> None:
        """One regular file of ``d``, read through a descriptor that followed no link."""
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d.fd)
        except OSError as exc:
            self.skipped["symbolic link swapped in" if exc.errno == errno.ELOOP else
                         "unreadable" if exc.errno == errno.EACCES else f"unopenable ({exc.strerror})"] += 1
            return
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.skipped["not a regular file any more"] += 1
                return
            info = self._info(arcname, st, tarfile.REGTYPE)
            info.size = st.st_size
            reader = _Exact(fd, st.st_size)
            self.tar.addfile(info, reader)
            if reader.short:
                self.skipped["changed while read (padded)"] += 1
            part.files += 1
            part.bytes += st.st_size
        finally:
            os.close(fd)

    def add_tree(self, base: Path, arcroot: str, part: Part, leave_out: frozenset[str] = frozenset()) -> None:
        """Everything below ``base`` (trusted itself) as ``arcroot/...``; top-level names in
        ``leave_out`` are not taken."""
        try:
            top = Dir.open(base)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                self.skipped[f"{arcroot} unreadable ({exc.strerror})"] += 1
            return
        with top:
            st = os.fstat(top.fd)
            self.tar.addfile(self._info(arcroot, st, tarfile.DIRTYPE))
            self._walk(top, arcroot, part, st.st_dev, 1, leave_out)

    def _walk(self, d: Dir, arc: str, part: Part, dev: int, depth: int, leave_out: frozenset[str]) -> None:
        try:
            names = d.names()
        except OSError:
            self.skipped["unreadable directory"] += 1
            return
        for name in names:
            if name in leave_out:
                continue
            arcname = f"{arc}/{name}"
            try:
                st = d.lstat(name)
            except OSError:
                continue  # gone since it was listed
            if stat.S_ISLNK(st.st_mode):
                try:
                    info = self._info(arcname, st, tarfile.SYMTYPE)
                    info.linkname = os.readlink(name, dir_fd=d.fd)
                except OSError:
                    continue
                self.tar.addfile(info)
                part.files += 1
            elif stat.S_ISREG(st.st_mode):
                self.add_file(d, name, arcname, part)
            elif stat.S_ISDIR(st.st_mode):
                if st.st_dev != dev:
                    self.skipped["another filesystem"] += 1
                    continue
                if depth >= MAX_DEPTH:
                    self.skipped[f"deeper than {MAX_DEPTH} directories"] += 1
                    continue
                try:
                    sub = d.sub(name)
                except OSError:
                    self.skipped["unreadable directory"] += 1
                    continue
                with sub:
                    self.tar.addfile(self._info(arcname, os.fstat(sub.fd), tarfile.DIRTYPE))
                    self._walk(sub, arcname, part, dev, depth + 1, frozenset())
            else:
                kind = ("FIFO" if stat.S_ISFIFO(st.st_mode) else "socket" if stat.S_ISSOCK(st.st_mode)
                        else "device")
                self.skipped[kind] += 1
