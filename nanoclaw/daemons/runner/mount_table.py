"""Checking the owner's folders from a container's mount table, when its root cannot be walked.

WHY
    :func:`binds.verify` walks each bind from ``/proc/<pid>/root``. Rootless Podman on a
    host whose kernel cannot give it overlayfs in a user namespace mounts the container's
    root with fuse-overlayfs, and FUSE lets no process outside the mounting user namespace
    in (EACCES), the runner included. The container's mount table
    (``/proc/<pid>/mountinfo``) is readable all the same: for each bind it names the
    filesystem (major:minor), the path within that filesystem of the folder mounted (as it
    is named now: the kernel follows renames), and whether it is read-only.

WHAT IS CHECKED
    A bind's entry (the last at its target: mounts stacked at one point list in order) must
    be on the device of the descriptor that was checked, at the path that descriptor has
    now within that filesystem, and read-only where it must be. A folder swapped for a link
    to ``~/.ssh`` between the check and the mount shows as another path; one renamed away
    and back shows where it went. The path is read before and after the table, and must be
    the same both times. What this cannot see, where the walk can: a folder that was
    renamed away and replaced by another of the same name, on the same filesystem, inside
    a folder the attacker could already write (so nothing it could not already reach).

HOSTILE INPUT
    None parsed from a container: the table is the kernel's. Paths in it are octal-escaped
    (space, tab, newline, backslash), undone here before they are compared.
"""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

_ESCAPED = re.compile(r"\\([0-7]{3})")


@dataclass(frozen=True)
class Entry:
    device: tuple[int, int]
    root: str  # the mounted folder's path within its filesystem
    point: str  # where it is mounted
    read_only: bool


def _unescape(field: str) -> str:
    return _ESCAPED.sub(lambda m: chr(int(m.group(1), 8)), field)


def parse(text: str) -> list[Entry]:
    """The entries of a ``mountinfo`` file, in its order."""
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        if len(fields) < 7:
            continue
        major, _, minor = fields[2].partition(":")
        out.append(Entry((int(major), int(minor)), _unescape(fields[3]), _unescape(fields[4]),
                         "ro" in fields[5].split(",")))
    return out


def _read(path: str) -> list[Entry]:
    with open(path, encoding="utf-8", errors="surrogateescape") as f:
        return parse(f.read())


def _device(fd: int) -> tuple[int, int]:
    dev = os.fstat(fd).st_dev
    return os.major(dev), os.minor(dev)


def _inside(point: str, path: str) -> bool:
    return path == point or point == "/" or path.startswith(point + "/")


def path_in_filesystem(fd: int, own: list[Entry] | None = None) -> str:
    """Where the folder open at ``fd`` is now, as a path within its own filesystem (what a
    mount table's root field says), from this process's own mount table (``own``: already
    read, for several folders at once; else read now)."""
    here = os.readlink(f"/proc/self/fd/{fd}")
    if not here.startswith("/") or here.endswith(" (deleted)"):
        raise OSError(errno.ENOENT, f"the checked folder is gone ({here})")
    device = _device(fd)
    if own is None:
        own = _read("/proc/self/mountinfo")
    mounts = [e for e in own if e.device == device and _inside(e.point, here)]
    if not mounts:
        raise OSError(errno.ENOENT, f"{here} is on no mount this process can see")
    mount = max(mounts, key=lambda e: len(e.point))
    rest = here[len(mount.point):] if mount.point != "/" else here
    return os.path.normpath(mount.root.rstrip("/") + "/" + rest.lstrip("/"))


def verify(pid: int, binds: Iterable[Any]) -> None:
    """Check every bind (a ``binds.Bind``: source, target, read_only, its held descriptor)
    against the mount table of the set-up container whose first process is ``pid``;
    OSError naming the first that is not what was checked."""
    binds = list(binds)
    # This process's own table is read once for all binds before the container's, once after:
    # the runner's mounts do not change between two binds, the folders' paths may.
    own = _read("/proc/self/mountinfo")
    before = [path_in_filesystem(b.fd, own) for b in binds]
    table = _read(f"/proc/{pid}/mountinfo")
    own = _read("/proc/self/mountinfo")
    after = [path_in_filesystem(b.fd, own) for b in binds]
    for b, was, now in zip(binds, before, after):
        if was != now:
            raise OSError(errno.EXDEV, f"{b.source} moved while the container was made")
        entries = [e for e in table if e.point == b.target]
        if not entries:
            raise OSError(errno.ENOENT, f"{b.target} is not mounted in the container")
        entry = entries[-1]
        if entry.device != _device(b.fd) or entry.root != now:
            raise OSError(errno.EXDEV, f"{b.target} in the container is not the {b.source} that was checked "
                                       "(it was replaced while the container was made)")
        if b.read_only and not entry.read_only:
            raise OSError(errno.EROFS, f"{b.target} in the container is writable; it must be read-only")
