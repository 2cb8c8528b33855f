"""The sockets an agent reaches the host through: where they are, and which agents have them.

Each agent (a group's lead, or one member of its team) has a directory of its own,
``<runtime>/proxy/<folder>/`` (a member's ``<runtime>/proxy/.team/<folder>/<member>/``),
mounted read-only at ``/run/nanoclaw-proxy`` in that agent's containers only. Two daemons
serve in it: the API relay (``nanoclaw-proxy``) ``api.sock``, and the web
(``nanoclaw-egress``) ``web.sock``. Each makes the directory, so either may start first,
and the runner mounts the same directory whichever is up.

No aiohttp here: the runner imports this to know what to mount.
"""

from __future__ import annotations

import os
from pathlib import Path

from nanoclaw.core import team as team_mod
from nanoclaw.core.config import Config

API_SOCKET = "api.sock"
WEB_SOCKET = "web.sock"


def proxy_dir(cfg: Config, folder: str, agent: str = "") -> Path:
    """The directory holding the sockets of a group's lead (or of one member of its team),
    mounted into that agent's containers only. A member's is outside what the lead mounts
    (``.team`` cannot be a folder name), so each call is counted for the right agent."""
    if agent:
        return cfg.runtime_dir / "proxy" / ".team" / folder / agent
    return cfg.runtime_dir / "proxy" / folder


def make_dir(cfg: Config, folder: str, agent: str = "") -> Path:
    """An agent's socket directory, made if missing: listable by the container's uid (0755),
    with ``.team/`` only traversable (0711), so no container lists the other members."""
    d = proxy_dir(cfg, folder, agent)
    d.mkdir(parents=True, exist_ok=True)
    os.chmod(d, 0o755)
    if agent:
        os.chmod(d.parent.parent, 0o711)
    return d


class Agents:
    """Which agents should have sockets: every group's lead and each member of its team.
    A group's members are read again only when its ``agents/`` folder changes."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.teams: dict[str, tuple[int, list[str]]] = {}  # folder -> (agents/ mtime, member names)

    def members(self, folder: str) -> list[str]:
        try:
            mtime = (self.cfg.groups_dir / folder / team_mod.AGENTS).stat().st_mtime_ns
        except OSError:
            return []
        cached = self.teams.get(folder)
        if cached is None or cached[0] != mtime:
            cached = self.teams[folder] = (mtime, [m.name for m in team_mod.members(self.cfg, folder)])
        return cached[1]

    def wanted(self) -> set[tuple[str, str]]:
        """(folder, agent) of every agent that should have sockets ("" is the lead)."""
        from nanoclaw.core.models import Group
        out = set()
        for group in list(Group.select(Group.folder)):
            out.add((group.folder, ""))
            out.update((group.folder, name) for name in self.members(group.folder))
        return out
