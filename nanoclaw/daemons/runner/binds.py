"""Binds: the owner's folders as the runner mounts them, and as it checks them in the container.

SUMMARY
    :func:`open_checked` opens a folder the allowlist accepted without following a link
    and keeps its descriptor; :func:`git_guards` adds, for a read-write folder, the
    read-only binds over git's files that run programs for the owner; :func:`verify`
    looks at each bind from inside a container that Podman has set up but not yet started.

WHY
    The allowlist (``core/mounts.py``) decides on a path and Podman mounts a path. A
    container that can write where that path lies (a group with a read-write mount of a
    parent folder; a lead while its team member's container starts) can swap a folder for
    a symbolic link to ``~/.ssh`` between the two. Podman cannot be handed a descriptor
    instead (the runtime mounts from a new mount namespace, where a descriptor of ours is
    refused), so the runner checks the result: ``podman init`` makes the container's
    mounts and stops before its first program; each bind's target is then walked from
    ``/proc/<pid>/root`` one component at a time without following a link, and must be
    the very inode that was checked (the descriptor held open keeps its number from being
    reused) and read-only where it must be. Anything else, and the container is removed
    before the agent runs.

GIT
    In a read-write mount an agent could otherwise make the owner's next ``git status``
    (or a git-aware shell prompt) run its program: ``core.fsmonitor`` or an
    ``include.path`` in ``.git/config``, a hook in ``.git/hooks``, or a new
    ``.git/commondir`` naming a folder whose ``config`` git then reads instead (git checks
    who owns the repository, not that folder). So in each repository at the mount's top
    or one level down (a project, or a folder of projects), unless the owner allowed it
    for that mount (``--allow-git-config``):

    - ``.git/config``, ``.git/hooks``, ``.git/commondir``, ``.git/config.worktree``,
      ``.git/modules`` and ``.git/worktrees`` are bound read-only over themselves; a
      missing ``hooks`` is made empty, a missing ``commondir`` is made holding ``.``
      (git's own way of saying "this directory": nothing changes for git), a missing
      ``config`` empty, and a missing ``config.worktree`` empty when the config names
      ``worktreeConfig``;
    - ``.git`` (and a repository folder below the top) is bound over itself, read-write:
      a mount point cannot be renamed, so the agent cannot put a repository of its own
      making in its place;
    - a ``.git`` file (a linked worktree's or submodule's pointer) is read-only;
    - any of these that is a symbolic link refuses the mount (it cannot be pinned).

    The agent keeps the rest of ``.git``: it can commit, branch and read history, and
    ``git config`` fails for it (``git -c`` works). Not covered: a repository deeper
    down; a folder of the owner's that an agent renames into a new ``.git`` deeper down.
    Not guarded, on purpose: ``.envrc`` (direnv runs none that was changed until you
    ``direnv allow`` it again), ``.git/info/attributes`` (it names filters and diff
    drivers; the programs come from the config, which is guarded), editor settings such
    as ``.vscode/`` (a change shows in ``git status``; VS Code runs a folder's tasks only
    in a workspace you trusted).

SECURITY
    Every path below a checked folder is reached through descriptors with ``O_NOFOLLOW``;
    files the runner makes are created with ``O_EXCL``. The allowlist's own checks run on
    the resolved path before any of this (``mounts.check``).
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nanoclaw.daemons.runner import mount_table

O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
GIT_READ_ONLY = ("config", "hooks", "commondir", "config.worktree", "modules", "worktrees")
MAX_REPOSITORIES = 64  # repositories guarded in one mount; more refuses the mount


class BindError(OSError):
    """A bind that is not what was checked, or cannot be made safe; the text says which."""

    def __str__(self) -> str:
        return str(self.strerror)


@dataclass
class Bind:
    """One bind mount: what was checked (its descriptor, held until the container is
    verified) and where it goes."""

    source: Path
    target: str
    read_only: bool
    fd: int
    ident: tuple[int, int]  # (st_dev, st_ino) of the source as checked
    name: str = ""  # the owner's mount name, for the folder's own bind ("" for a guard)


def _ident(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _at(dir_fd: int, name: str) -> int | None:
    """An O_PATH descriptor of ``name`` in ``dir_fd`` (a link itself, never its target), or None."""
    try:
        return os.open(name, O_PATH, dir_fd=dir_fd)
    except FileNotFoundError:
        return None


def _walk(start_fd: int, parts: Iterable[str], shown: str) -> int:
    """Walk ``parts`` from ``start_fd`` without following a link; the last one's O_PATH descriptor."""
    fd = os.dup(start_fd)
    try:
        for part in parts:
            if part in ("", ".", ".."):
                raise BindError(errno.EINVAL, f"{shown}: not a plain path")
            if stat.S_ISLNK(os.fstat(fd).st_mode):
                raise BindError(errno.ELOOP, f"{shown}: a symbolic link is on the way")
            nxt = os.open(part, O_PATH, dir_fd=fd)
            os.close(fd)
            fd = nxt
        if stat.S_ISLNK(os.fstat(fd).st_mode):
            raise BindError(errno.ELOOP, f"{shown} is a symbolic link")
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_checked(path: Path, target: str, read_only: bool, name: str) -> Bind:
    """The folder at the resolved ``path``, opened from ``/`` without following any link: if
    one of its components became a link since it was checked, BindError."""
    root = os.open("/", O_PATH | os.O_DIRECTORY)
    try:
        fd = _walk(root, path.parts[1:], str(path))
    except OSError as exc:
        raise BindError(exc.errno or errno.EIO, f"{path} changed after it was checked ({exc.strerror or exc})") \
            from None
    finally:
        os.close(root)
    return Bind(path, target, read_only, fd, _ident(fd), name)


def close(binds: Iterable[Bind]) -> None:
    for b in binds:
        try:
            os.close(b.fd)
        except OSError:
            pass


# -- git's files in a read-write mount --------------------------------------------------

def _make(dir_fd: int, name: str, content: bytes | None) -> None:
    """Make ``name`` (a directory when ``content`` is None) if it is missing; a runner that
    may not write there leaves it, since an agent (never more privileged) may not either."""
    try:
        if content is None:
            os.mkdir(name, 0o755, dir_fd=dir_fd)
        else:
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=dir_fd)
            try:
                os.write(fd, content)
                os.fsync(fd)
            finally:
                os.close(fd)
    except FileExistsError:
        pass
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise


def _names_worktree_config(git_fd: int) -> bool:
    try:
        fd = os.open("config", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=git_fd)
    except OSError:
        return False
    try:
        return b"worktreeconfig" in os.read(fd, 1 << 20).lower()
    finally:
        os.close(fd)


def _guard(out: list[Bind], dir_fd: int, name: str, source: Path, target: str, read_only: bool) -> None:
    """Bind ``name`` in ``dir_fd`` over itself; a link there refuses the mount."""
    fd = _at(dir_fd, name)
    if fd is None:
        return
    if stat.S_ISLNK(os.fstat(fd).st_mode):
        os.close(fd)
        raise BindError(errno.ELOOP, f"{source / name} is a symbolic link, so it cannot be kept from the agent: "
                                     "make it a real file or folder, or mount read-only, or allow it "
                                     "(--allow-git-config)")
    out.append(Bind(source / name, f"{target}/{name}", read_only, fd, _ident(fd)))


def _guard_repository(out: list[Bind], repo_fd: int, source: Path, target: str) -> None:
    git = _at(repo_fd, ".git")
    if git is None:
        return
    try:
        mode = os.fstat(git).st_mode
        if stat.S_ISLNK(mode):
            raise BindError(errno.ELOOP, f"{source}/.git is a symbolic link, so it cannot be kept from the agent: "
                                         "mount read-only, or allow it (--allow-git-config)")
        if not stat.S_ISDIR(mode):  # a worktree's or submodule's "gitdir: ..." pointer
            _guard(out, repo_fd, ".git", source, target, read_only=True)
            return
        _guard(out, repo_fd, ".git", source, target, read_only=False)  # pinned: cannot be renamed away
        made = {"hooks": None, "commondir": b".\n", "config": b""}
        if _names_worktree_config(git):
            made["config.worktree"] = b""
        for name in GIT_READ_ONLY:
            if name in made:
                _make(git, name, made[name])
            _guard(out, git, name, source / ".git", f"{target}/.git", read_only=True)
    finally:
        os.close(git)


def git_guards(folder: Bind) -> list[Bind]:
    """The binds that keep git's configuration and hooks from the agent in the read-write
    ``folder``: its own repository and those of the folders directly in it."""
    out: list[Bind] = []
    if not stat.S_ISDIR(os.fstat(folder.fd).st_mode):
        return out  # a single file: no repository in it
    try:
        _guard_repository(out, folder.fd, folder.source, folder.target)
        listing = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder.fd)
        with os.scandir(listing) as entries:
            children = sorted(e.name for e in entries if e.name != ".git" and e.is_dir(follow_symlinks=False))
        repositories = 0
        for child in children:
            fd = _at(folder.fd, child)
            if fd is None:
                continue
            try:
                if not stat.S_ISDIR(os.fstat(fd).st_mode) or not _at_exists(fd, ".git"):
                    continue
                repositories += 1
                if repositories > MAX_REPOSITORIES:
                    raise BindError(errno.E2BIG, f"{folder.source} holds more than {MAX_REPOSITORIES} git "
                                                 "repositories to guard: mount a folder with fewer, or read-only")
                source, target = folder.source / child, f"{folder.target}/{child}"
                out.append(Bind(source, target, False, os.dup(fd), _ident(fd)))  # pinned, as .git is
                _guard_repository(out, fd, source, target)
            finally:
                os.close(fd)
    except BaseException:
        close(out)
        raise
    return out


def _at_exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False


# -- the container's side -----------------------------------------------------------------

def verify(pid: int, binds: Iterable[Bind]) -> None:
    """Check every bind in the set-up container whose first process is ``pid``: BindError
    naming the first that is not the inode that was checked, or not read-only as it must be.
    A root this process may not walk (a FUSE root, rootless) is checked from the container's
    mount table instead (``mount_table.py`` says what that sees)."""
    binds = list(binds)
    root = os.open(f"/proc/{pid}/root", O_PATH & ~os.O_NOFOLLOW | os.O_DIRECTORY)  # the container's root
    try:
        for b in binds:
            parts = PurePosixPath(b.target).parts[1:]
            try:
                fd = _walk(root, parts, b.target)
            except PermissionError:
                try:
                    return mount_table.verify(pid, binds)
                except OSError as exc:
                    raise BindError(exc.errno or errno.EIO, exc.strerror or str(exc)) from None
            except OSError as exc:
                raise BindError(exc.errno or errno.EIO, f"{b.target} in the container is not {b.source}: "
                                                        f"{exc.strerror or exc}") from None
            try:
                if _ident(fd) != b.ident:
                    raise BindError(errno.EXDEV, f"{b.target} in the container is not the {b.source} that was "
                                                 "checked (it was replaced while the container was made)")
                if b.read_only and not os.fstatvfs(fd).f_flag & os.ST_RDONLY:
                    raise BindError(errno.EROFS, f"{b.target} in the container is writable; it must be read-only")
            finally:
                os.close(fd)
    finally:
        os.close(root)
