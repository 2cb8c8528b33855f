"""A group's agent's directories on the host, and who the agent is in its container.

SYNOPSIS
    group_dirs(cfg, folder, agent) -> {what: host path}
    prepare_dirs(cfg, folder, is_main, agent) -> the same, made
    clear_inbox(spool) -> the spool, emptied (an agent's ipc/in)
    agent_identity(cfg) -> (user, userns);  agent_owner(cfg) -> (uid, gid) or None

HOSTILE INPUT
    The group's folder, ``out/`` and session directory, which an earlier container wrote:
    walked through :mod:`safefs` only (no link followed, no recursive chown).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from nanoclaw.core import team as team_mod
from nanoclaw.core.agent_sockets import proxy_dir
from nanoclaw.core.config import Config
from nanoclaw.core.protocol import Spool
from nanoclaw.core.safefs import Dir


def group_dirs(cfg: Config, folder: str, agent: str = "") -> dict[str, Path]:
    """The host directories a container of a group's agent may see (made by :func:`prepare_dirs`):
    the group's folder (the team's shared workspace) and global memory, and the agent's own
    IPC and session."""
    return {
        "group": cfg.groups_dir / folder,
        "team": cfg.groups_dir / folder / team_mod.AGENTS,
        "global": cfg.global_dir,
        "in": cfg.agent_ipc(folder, agent) / "in",
        "out": cfg.agent_ipc(folder, agent) / "out",
        "session": cfg.agent_session(folder, agent),
        "proxy": proxy_dir(cfg, folder, agent),  # a member's own: its calls are counted as its
    }


def prepare_dirs(cfg: Config, folder: str, is_main: bool = False, agent: str = "") -> dict[str, Path]:
    """Make the directories of a group's agent before its container starts.

    ``in/`` is the host's (the container sees it read-only) and is made
    normally. The rest is the container's to write: each is a trusted base
    whose contents are walked without following links (:mod:`safefs`); an
    ``out/new`` or ``out/tmp`` that an earlier container replaced by a link
    is removed and made again. In rootful runs the agent's uid is handed the
    directories it writes, non-recursively (:meth:`safefs.Dir.give`).
    """
    dirs = group_dirs(cfg, folder, agent)
    Spool(dirs["in"]).ensure()
    for key in ("group", "global", "session", "proxy"):
        dirs[key].mkdir(parents=True, exist_ok=True)
    with Dir.open(dirs["group"]) as group:  # the team's files: mounted read-only over the shared folder
        group.ensure_dir(team_mod.AGENTS).close()
    owner = agent_owner(cfg)
    with Dir.open(dirs["out"], create=True) as out:
        for sub in ("new", "tmp"):
            with out.ensure_dir(sub) as d:
                if owner:
                    d.give(*owner, children=False)
        if owner:
            out.give(*owner, children=False)
    if owner:
        for key in ("group", "session") + (("global",) if is_main else ()):
            with Dir.open(dirs[key]) as d:
                d.give(*owner, children=key != "session")  # the CLAUDE.md (and inbox/) the host made
    return dirs


def agent_identity(cfg: Config) -> tuple[str, str]:
    """(user, userns) for agent containers: never root inside.

    Rootless (the normal install), ``keep-id`` maps the service user into the
    container, so the agent runs as it and owns what it writes. Rootful (the
    runner running as root), the agent runs as an unprivileged uid and is
    handed its writable directories.
    """
    c = cfg.container
    if os.geteuid() != 0:
        return c.user or f"{os.getuid()}:{os.getgid()}", c.userns or "keep-id"
    return c.user or "1000:1000", c.userns


def agent_owner(cfg: Config) -> tuple[int, int] | None:
    """The (uid, gid) to hand writable directories to: only when the agent runs
    under another uid than this daemon (rootful Podman)."""
    user = agent_identity(cfg)[0]
    uid, _, gid = user.partition(":")
    if os.geteuid() != 0 or not uid.isdigit() or not (gid or uid).isdigit():
        return None
    return int(uid), int(gid or uid)


def clear_inbox(inbox: Spool) -> Spool:
    """Empty an agent's ``ipc/in`` (host-only: the agent's view is read-only) file by file.
    Its directories stay: a paused container handed the next job (pause.py) watches
    ``in/new``, and a watch on a directory removed and made again would see nothing."""
    inbox.ensure()
    for d in (inbox.new, inbox.cur, inbox.tmp):
        with os.scandir(d) as entries:
            for entry in entries:
                try:
                    os.unlink(entry.path)
                except IsADirectoryError:
                    shutil.rmtree(entry.path, ignore_errors=True)
                except FileNotFoundError:
                    pass
    return inbox
