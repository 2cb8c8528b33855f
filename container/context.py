"""This container: whom it runs for and where its files are.

SYNOPSIS
    Context.from_env() -> Context    what the host's runner said, in NANOCLAW_* variables
    ctx.inbox, ctx.outbox            the spools: prompts in (read-only here), results and requests out
    log(text)                        one line on stderr, which the runner keeps in its journal

DESCRIPTION
    The runner on the host starts every agent container with the group, the
    job, the team member (if any), the model, the idle timeout and the owner's
    folders in its environment, and mounts the group's files under
    ``/workspace``. Everything else in the container reads them from here.

READS
    The ``NANOCLAW_*`` environment the host's runner set. Writes nothing
    (``log`` prints to stderr).

HOSTILE INPUT
    None: the environment is the host's. A malformed number fails the
    container's start, which the host reports.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from protocol import Spool

WORKSPACE = Path("/workspace")


def log(msg: str) -> None:
    print(f"agent-runner: {msg}", file=sys.stderr, flush=True)


@dataclass
class Context:
    # The job being answered: the first one's from the environment, a later one's from its first
    # prompt (a paused container handed the agent's next job); the tools' requests name it.
    job: int
    group: str  # the group's folder
    is_main: bool  # the owner's main admin channel
    agent: str  # the team member this container runs; "" = the group's lead
    model: str  # "" = the CLI's default
    idle_timeout: float  # seconds without work before the container exits; 0: never (the host pauses it)
    mounts: tuple[tuple[str, str], ...]  # the owner's folders: (name, "ro" or "rw")
    workspace: Path = WORKSPACE

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ, workspace: Path = WORKSPACE) -> Context:
        mounts = tuple((name, mode) for name, _, mode in
                       (m.partition(":") for m in env.get("NANOCLAW_MOUNTS", "").split(",") if ":" in m))
        return cls(job=int(env.get("NANOCLAW_JOB", "0")), group=env.get("NANOCLAW_GROUP", ""),
                   is_main=env.get("NANOCLAW_IS_MAIN") == "1", agent=env.get("NANOCLAW_AGENT", ""),
                   model=env.get("NANOCLAW_MODEL", ""),
                   idle_timeout=float(env.get("NANOCLAW_IDLE_TIMEOUT", "600")), mounts=mounts,
                   workspace=workspace)

    @property
    def ipc(self) -> Path:
        return self.workspace / "ipc"

    @property
    def group_dir(self) -> Path:
        """The group's folder: the agent's working directory (a team's shared folder)."""
        return self.workspace / "group"

    @property
    def inbox(self) -> Spool:
        """Prompts and ``close``, read-only here: the host writes it, we only read."""
        return Spool(self.ipc / "in")

    @property
    def outbox(self) -> Spool:
        """Ours: out/tmp and out/new, turn results and the tools' requests."""
        return Spool(self.ipc / "out")
