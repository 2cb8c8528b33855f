"""The owner's folders in agents' containers, by an allowlist only root can change.

SUMMARY
    ``nanoclaw groups mount add GROUP HOST_PATH [--as NAME] [--rw [--allow-git-config]]``
    records a mount; the runner mounts it at ``/workspace/extra/NAME`` in that group's
    containers, after checking it again against the allowlist at every start
    (so editing the allowlist takes effect at once), and checks in the container that
    what was mounted is what was checked (``daemons/runner/binds.py``).

    A rule two programs apply: the CLI when the owner adds or lists a mount, the runner
    (``daemons/runner/owner_folders.py``) at every container start.

DESCRIPTION
    The allowlist is ``<config>/mount-allowlist.toml``::

        blocked = ["*.key"]           # more patterns; the built-in ones always apply

        [[root]]                      # a folder under which mounts are allowed
        path = "/home/me/projects"
        write = true                  # mounts under it may be read-write (default false)

    A path is resolved (symlinks, ``..``) before it is checked: it must lie
    under a root, must not be (or lie in) anything a blocked pattern names,
    must not directly contain such a thing (mounting a home folder would show
    its ``.ssh``), and must not overlap nanoclaw's own directories. Read-only
    unless asked for and allowed.

SECURITY
    The file must belong to root and be writable by root alone; otherwise no
    mount is allowed at all (fail closed). Agents can never add or widen a
    mount: only the CLI writes the ``mount`` table, and ``register_group``
    carries none. In a read-write mount, git's configuration and hooks stay read-only
    to the agent unless the owner allowed otherwise (``daemons/runner/binds.py``).
"""

from __future__ import annotations

import fnmatch
import os
import re
import stat
import tomllib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from nanoclaw.core.config import Config
from nanoclaw.core.models import Group, Mount, db

ALLOWLIST = "mount-allowlist.toml"
# Secrets that must never reach an agent, wherever they are. A pattern with a "/" names
# consecutive path parts (".config/gcloud"); others match one part (fnmatch).
BUILTIN_BLOCKED = (".ssh", ".gnupg", ".aws", ".azure", ".config/gcloud", ".kube", ".docker", ".netrc",
                   ".env", "id_rsa*", "id_ed25519*", "*.pem", "credentials*", ".password-store")
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # whole names only: fullmatch


class MountError(ValueError):
    """A mount that is not allowed (or an allowlist that cannot be used); the text says why."""


@dataclass(frozen=True)
class Root:
    path: Path  # resolved
    write: bool


@dataclass(frozen=True)
class Allowlist:
    roots: tuple[Root, ...]
    blocked: tuple[str, ...]


def allowlist_path(cfg: Config) -> Path:
    return cfg.config_dir / ALLOWLIST


def load(cfg: Config) -> Allowlist:
    """The owner's allowlist; MountError if it is missing, unsafe or malformed."""
    path = allowlist_path(cfg)
    try:
        st = path.stat()
        text = path.read_text()
    except FileNotFoundError:
        raise MountError(f"no mounts are allowed: {path} does not exist (see the README: the owner's "
                         "folders)") from None
    except OSError as exc:
        raise MountError(f"{path} cannot be read: {exc.strerror}") from None
    if st.st_uid != 0 or stat.S_IMODE(st.st_mode) & 0o022:
        raise MountError(f"{path} must belong to root and be writable by root alone "
                         f"(chown root {path}; chmod 644 {path}): no mounts until it is")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise MountError(f"{path}: {exc}") from None
    unknown = set(data) - {"root", "blocked"}
    if unknown:
        raise MountError(f"{path}: unknown setting {sorted(unknown)[0]!r} (root, blocked)")
    roots = []
    for i, entry in enumerate(data.get("root", [])):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) \
                or not isinstance(entry.get("write", False), bool) or set(entry) - {"path", "write"}:
            raise MountError(f"{path}: root {i + 1} must be {{path = \"/abs/dir\", write = true|false}}")
        if not entry["path"].startswith("/"):
            raise MountError(f"{path}: root {entry['path']!r} is not an absolute path")
        roots.append(Root(Path(os.path.realpath(entry["path"])), entry.get("write", False)))
    extra = data.get("blocked", [])
    if not isinstance(extra, list) or not all(isinstance(p, str) and p for p in extra):
        raise MountError(f"{path}: blocked must be a list of patterns")
    return Allowlist(tuple(roots), BUILTIN_BLOCKED + tuple(extra))


def blocked_by(parts: tuple[str, ...], patterns: tuple[str, ...]) -> str:
    """The first pattern naming a run of ``parts`` ('' if none)."""
    for pattern in patterns:
        want = PurePosixPath(pattern).parts
        for i in range(len(parts) - len(want) + 1):
            if all(fnmatch.fnmatchcase(parts[i + j], want[j]) for j in range(len(want))):
                return pattern
    return ""


def overlaps(a: Path, b: Path) -> bool:
    return a == b or a.is_relative_to(b) or b.is_relative_to(a)


def check(cfg: Config, host_path: str, rw: bool, allow: Allowlist | None = None) -> Path:
    """The resolved path if ``host_path`` may be mounted (read-write if ``rw``); else MountError."""
    allow = allow or load(cfg)
    if not host_path.startswith("/"):
        raise MountError(f"{host_path!r} is not an absolute path")
    try:
        resolved = Path(os.path.realpath(host_path, strict=True))
    except OSError as exc:
        raise MountError(f"{host_path} cannot be mounted: {exc.strerror}") from None
    for what in {Path(os.path.normpath(host_path)), resolved}:  # as written and where it leads
        hit = blocked_by(what.parts[1:], allow.blocked)
        if hit:
            raise MountError(f"{host_path} is refused: {what} is blocked ({hit!r} never reaches an agent)")
    for own in (cfg.state_dir, cfg.config_dir, cfg.runtime_dir):
        if overlaps(resolved, Path(os.path.realpath(own))):
            raise MountError(f"{host_path} is refused: it overlaps nanoclaw's own {own}")
    root = next((r for r in allow.roots if resolved.is_relative_to(r.path)), None)
    if root is None:
        roots = ", ".join(str(r.path) for r in allow.roots) or "none"
        raise MountError(f"{host_path} is refused: {resolved} is under no allowed root ({roots}); "
                         f"add one to {allowlist_path(cfg)}")
    if rw and not root.write:
        raise MountError(f"{host_path} cannot be mounted read-write: the allowlist lets {root.path} be read only")
    if resolved.is_dir():
        try:
            names = os.listdir(resolved)
        except OSError as exc:
            raise MountError(f"{host_path} cannot be read: {exc.strerror}") from None
        single = tuple(p for p in allow.blocked if "/" not in p)
        inside = [name for name in names if blocked_by((name,), single)] + \
            [pattern for pattern in allow.blocked if "/" in pattern and any(resolved.glob(pattern))]
        if inside:
            raise MountError(f"{host_path} is refused: it contains {inside[0]}, which never reaches an agent; "
                             "mount a folder inside it instead")
    return resolved


def validate_name(name: str) -> str:
    if not NAME_RE.fullmatch(name or ""):
        raise MountError(f"invalid mount name {name!r}: 1-64 of A-Z a-z 0-9 . _ -, starting with a letter or digit")
    return name


def default_name(path: str) -> str:
    """A mount's name from its folder's name, made valid."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", Path(path).name).strip("-._") or "folder"
    return name[:64]


def service_user_access(path: Path, rw: bool, user: str = "nanoclaw") -> str:
    """'' if the user agents run as can use ``path`` (read, and write if ``rw``); else why, with the fix.

    Rootless agents are the service user inside their container (``keep-id``), so the
    host's permissions decide. Run as another user (a development run), the check is
    made for that user instead.
    """
    need = "rwx" if rw else "rx"
    if os.geteuid() != 0:
        ok = os.access(path, os.R_OK | os.X_OK | (os.W_OK if rw else 0)) if path.is_dir() else \
            os.access(path, os.R_OK | (os.W_OK if rw else 0))
        who = "this user"
    else:
        import pwd
        import subprocess
        try:
            pwd.getpwnam(user)
        except KeyError:
            return ""  # a rootful development run: agents are an unprivileged uid the tests prepare
        test = ["test", "-r", str(path)] + (["-a", "-x", str(path)] if path.is_dir() else []) + \
            (["-a", "-w", str(path)] if rw else [])
        ok = subprocess.run(["runuser", "-u", user, "--", *test], capture_output=True).returncode == 0
        who = f"the {user} user"
    if ok:
        return ""
    return (f"{who} cannot {'read and write' if rw else 'read'} {path}: give it access, e.g. "
            f"setfacl -R -m u:{user}:{need.replace('x', 'X')} {path} (and setfacl -m u:{user}:x on each "
            "folder above it)")


def add(cfg: Config, group: Group, host_path: str, name: str | None = None, rw: bool = False,
        allow_git_config: bool = False) -> Mount:
    """Record a mount for ``group`` after every check; MountError says why not.
    ``allow_git_config``: the agent may change git's configuration and hooks in it (rw only)."""
    if allow_git_config and not rw:
        raise MountError("--allow-git-config is for a read-write mount (--rw): a read-only one's git files are "
                         "read-only anyway")
    resolved = check(cfg, host_path, rw)
    name = validate_name(name or default_name(str(resolved)))
    problem = service_user_access(resolved, rw)
    if problem:
        raise MountError(problem)
    with db.atomic("IMMEDIATE"):
        if Mount.get_or_none(Mount.group == group, Mount.name == name):
            raise MountError(f"group {group.folder} already has a mount named {name!r} (--as NAME for another)")
        return Mount.create(group=group, name=name, host_path=str(resolved), rw=rw,
                            allow_git_config=allow_git_config)


def remove(group: Group, name: str) -> None:
    if not Mount.delete().where(Mount.group == group, Mount.name == name).execute():
        raise MountError(f"group {group.folder} has no mount named {name!r} (see: nanoclaw groups mount list)")

