"""Files in directories a hostile party can write: the host's only way in.

SUMMARY
    A container may write into its group folder, its ``ipc/<group>/out``
    directory and its session directory. Whatever it leaves there may be a
    symlink, a hard link or a FIFO planted to make a host daemon write, read,
    chmod, chown or delete somewhere else. Host code reaches such trees only
    through :class:`Dir`, after Postfix's ``safe_open()``.

DESCRIPTION
    The directory a container gets mounted (``groups/<folder>``,
    ``ipc/<folder>/out``, ``sessions/<folder>``) is a *trusted base*: its own
    path lies in host-only directories, so it is opened normally. Everything
    beneath it is walked one component at a time with
    ``O_NOFOLLOW | O_DIRECTORY`` relative to the parent's descriptor, so no
    symlink anywhere on the way is followed. Files are created with
    ``O_CREAT | O_EXCL | O_NOFOLLOW`` under a temporary name, changed through
    their descriptor (``fchmod``, ``fsync``) and put in place by a rename
    within the same directory descriptor, which replaces a planted entry
    without following it. Files are read with ``O_NOFOLLOW | O_NONBLOCK`` and
    accepted only when they are regular files with a single link.

SECURITY
    Every method acts on descriptors; none takes a path below the base.
    Refusals raise :class:`UnsafeEntry` with the reason, for the caller to
    log; nothing outside the base is ever opened for writing, chmodded,
    chowned or unlinked.
"""

from __future__ import annotations

import errno
import itertools
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("nanoclaw.safefs")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_tmp_counter = itertools.count()


class UnsafeEntry(OSError):
    """An entry that is not what the host expects (a link, a FIFO, a file for a directory)."""


def _name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise UnsafeEntry(errno.EINVAL, f"not a plain file name: {name!r}")
    return name


class Dir:
    """An open directory; every operation is relative to its descriptor.

    Use as a context manager, or call :meth:`close`.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path  # for messages only; never used to reach a file

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, base: Path | str, rel: str | Path = "", *, create: bool = False,
             mode: int = 0o755) -> "Dir":
        """Open ``base`` (trusted) and walk ``rel`` beneath it without following links.

        With ``create``, missing directories on the way are made with ``mode``.
        """
        base = Path(base)
        if create:
            base.mkdir(parents=True, exist_ok=True, mode=mode)
        try:
            fd = os.open(base, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise UnsafeEntry(exc.errno, f"cannot open {base}: {exc.strerror}") from None
        d = cls(fd, base)
        try:
            for part in Path(rel).parts:
                nxt = d.sub(part, create=create, mode=mode)
                d.close()
                d = nxt
        except BaseException:
            d.close()
            raise
        return d

    def sub(self, name: str, *, create: bool = False, mode: int = 0o755) -> "Dir":
        """The subdirectory ``name``, refusing a symlink or anything not a directory."""
        _name(name)
        if create:
            try:
                os.mkdir(name, mode, dir_fd=self.fd)
            except FileExistsError:
                pass
        try:
            fd = os.open(name, _DIR_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeEntry(exc.errno, f"{self.path / name} is not a directory (a symbolic link "
                                             "or another kind of file was put there)") from None
            raise
        return Dir(fd, self.path / name)

    def ensure_dir(self, name: str, mode: int = 0o755) -> "Dir":
        """The subdirectory ``name``, made if missing. Whatever else stands under that
        name (a planted link or file) is removed as an entry first: the host needs a
        directory here, in a tree that is the container's own."""
        try:
            return self.sub(name, create=True, mode=mode)
        except (UnsafeEntry, FileExistsError) as exc:
            self.unlink(name)
            log.warning("removed %s: a directory belongs there (%s)", self.path / name, exc.strerror or exc)
            return self.sub(name, create=True, mode=mode)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Dir":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- looking -----------------------------------------------------------------------
    def names(self) -> list[str]:
        """The entries, sorted (what they are is not looked at)."""
        return sorted(os.listdir(self.fd))

    def lstat(self, name: str) -> os.stat_result:
        return os.stat(_name(name), dir_fd=self.fd, follow_symlinks=False)

    def exists(self, name: str) -> bool:
        try:
            self.lstat(name)
        except FileNotFoundError:
            return False
        return True

    # -- reading -----------------------------------------------------------------------
    def read(self, name: str, max_bytes: int = 1 << 20) -> bytes:
        """A regular file's content; refuses links, FIFOs, devices and oversize files."""
        try:
            fd = os.open(_name(name), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                         dir_fd=self.fd)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeEntry(exc.errno, "is a symbolic link") from None
            raise
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise UnsafeEntry(errno.EINVAL, "not a regular file")
            if st.st_nlink != 1:
                raise UnsafeEntry(errno.EMLINK, f"has {st.st_nlink} links (a hard link was put there)")
            if st.st_size > max_bytes:
                raise UnsafeEntry(errno.EFBIG, f"too large ({st.st_size} bytes > {max_bytes})")
            chunks, total = [], 0
            while chunk := os.read(fd, 65536):
                total += len(chunk)
                if total > max_bytes:
                    raise UnsafeEntry(errno.EFBIG, f"too large (> {max_bytes} bytes)")
                chunks.append(chunk)
            return b"".join(chunks)
        finally:
            os.close(fd)

    # -- writing -----------------------------------------------------------------------
    def new_file(self, name: str, data: bytes, mode: int = 0o644, sync: bool = True) -> None:
        """Write a new file ``name``; fails (FileExistsError) if any entry of that name exists."""
        fd = os.open(_name(name), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     mode, dir_fd=self.fd)
        try:
            os.fchmod(fd, mode)  # the umask must not decide who may read it
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            if sync:
                os.fsync(fd)
        except BaseException:
            os.close(fd)
            self.unlink(name)
            raise
        os.close(fd)

    def write(self, name: str, data: bytes, mode: int = 0o644, *, sync: bool = True) -> None:
        """Replace ``name`` whole: readers see the old file or the new one, never half.

        The new content goes to a fresh temporary entry (``O_EXCL``), is synced,
        then renamed over ``name``; a symlink or hard link found at ``name`` is
        replaced as an entry, never written through.
        """
        _name(name)
        tmp = f".{name}.{os.getpid()}.{next(_tmp_counter)}.tmp"
        self.unlink(tmp)  # a planted entry of that name goes first
        self.new_file(tmp, data, mode, sync)
        try:
            os.rename(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException:
            self.unlink(tmp)
            raise
        if sync:
            os.fsync(self.fd)

    def create(self, name: str, data: bytes, mode: int = 0o644) -> bool:
        """Write ``name`` only if no entry of that name exists; True if written."""
        if self.exists(_name(name)):
            return False
        tmp = f".{name}.{os.getpid()}.{next(_tmp_counter)}.tmp"
        self.unlink(tmp)
        self.new_file(tmp, data, mode)
        try:
            os.link(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
        except FileExistsError:
            return False
        finally:
            self.unlink(tmp)
        os.fsync(self.fd)
        return True

    def rename(self, name: str, dest: "Dir", dest_name: str | None = None) -> None:
        """Move the entry ``name`` (whatever it is; it is not opened) into ``dest``."""
        os.rename(_name(name), _name(dest_name or name), src_dir_fd=self.fd, dst_dir_fd=dest.fd)

    def unlink(self, name: str) -> bool:
        """Remove a non-directory entry (a link itself, never its target); False if absent."""
        try:
            os.unlink(_name(name), dir_fd=self.fd)
        except FileNotFoundError:
            return False
        return True

    def fsync(self) -> None:
        os.fsync(self.fd)

    # -- ownership (rootful runs only) --------------------------------------------------
    def give(self, uid: int, gid: int, children: bool = True) -> list[str]:
        """Hand this directory, and the host's own files directly in it, to ``uid``:``gid``.

        Used where agents run under another uid than the daemons (rootful
        Podman). Not recursive, and never by name: each child is opened with
        ``O_NOFOLLOW | O_NONBLOCK`` and changed through its descriptor, only if
        it is a directory or a single-link regular file owned by us. Returns
        the children it changed.
        """
        os.fchown(self.fd, uid, gid)
        changed: list[str] = []
        if not children:
            return changed
        me = os.geteuid()
        for name in self.names():
            try:
                fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=self.fd)
            except OSError:
                continue  # a symlink (ELOOP) or unreadable: not ours to hand over
            try:
                st = os.fstat(fd)
                regular = stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                if st.st_uid == me and (regular or stat.S_ISDIR(st.st_mode)):
                    os.fchown(fd, uid, gid)
                    changed.append(name)
            finally:
                os.close(fd)
        return changed


def write_atomic(path: Path, text: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` whole and durably (file and directory synced before returning).

    ``path``'s directory is trusted (host-only); the entry itself is replaced,
    never written through, whatever was there.
    """
    data = text.encode() if isinstance(text, str) else text
    with Dir.open(Path(path).parent) as d:
        d.write(Path(path).name, data, mode)
