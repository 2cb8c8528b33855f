"""The runner's first pass: remove agent containers that no job file accounts for.

SUMMARY
    A runner that crashed or was killed may leave containers behind. At its start the
    runner lists every container carrying nanoclaw's label; one whose name no job file
    in ``spool/runner`` (new or left in ``cur/``) accounts for is an orphan and is
    removed, unless it is an idle agent's paused container, which the pool adopts
    (``pause.py``). The same call learns where Podman keeps its store, which the disk
    checks watch (``disk.py``).

SYNOPSIS
    sweep_orphans(daemon, envs)   (in a thread: Podman calls)

HOSTILE INPUT
    None: the list is Podman's, of the service user's own containers (no agent reaches
    Podman: ``validate.py`` refuses its socket as a mount).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from podman.errors import APIError, NotFound

from nanoclaw.core.protocol import Envelope
from nanoclaw.daemons.runner import pause
from nanoclaw.daemons.runner.spec import LABEL, container_name

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon


def sweep_orphans(daemon: RunnerDaemon, envs: list[Envelope]) -> None:
    """Remove nanoclaw containers that none of ``envs`` (the jobs at hand) accounts for."""
    keep = {container_name(e.body["group"], e.body["job"], e.body.get("agent", "")) for e in envs if e.type == "job"}
    with daemon.client() as client:
        try:
            daemon.graph_root = Path(client.info()["store"]["graphRoot"])
        except (APIError, KeyError, TypeError):
            pass
        for ctr in client.containers.list(all=True, filters={"label": LABEL}):
            if ctr.name in keep or daemon.pool.adopt(ctr):
                continue
            daemon.log.warning("removing orphan container %s (no job file)", ctr.name)
            try:
                pause.kill(ctr)
            except (APIError, NotFound) as exc:
                daemon.log.error("cannot remove orphan %s: %s", ctr.name, exc)
