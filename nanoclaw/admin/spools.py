"""``nanoclaw spool``: what waits, and what was refused, in every spool (as Postfix's
postqueue -p, postcat and postsuper -r / -d).

    nanoclaw spool [list]        every spool: waiting (new/), being worked on (cur/), refused (bad/ with reasons)
    nanoclaw spool show NAME     one file: where it is, its type and body, and why it was refused
    nanoclaw spool retry NAME    a refused file back into its spool's new/, if it now passes the daemons' checks
    nanoclaw spool drop NAME     delete a waiting or refused file (and its reason)

Files are found by name (or an unambiguous prefix) in any spool. A retried file
is read and validated exactly as its daemon would (``Spool.read``) before it
goes back, and the daemon is nudged. Files in ``tmp/`` are never touched (a
writer may be filling them); files in ``cur/`` are being worked on and are
shown, not retried or dropped.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from nanoclaw.core.config import Config
from nanoclaw.core.protocol import BadMessage, Spool, decode, nudge
from nanoclaw.core.safefs import Dir, UnsafeEntry


@dataclass(frozen=True)
class Found:
    spool: Spool
    daemon: str  # who consumes it (to nudge)
    where: str  # "new", "cur" or "bad"
    path: Path


def spools(cfg: Config) -> list[tuple[Spool, str]]:
    """Every spool with the daemon that consumes it."""
    out = [(Spool(cfg.spool_dir / name, max_bytes=cfg.max_spool_bytes), name) for name in ("queue", "runner", "router")]
    ipc_host = cfg.spool_dir / "ipc"
    folders = sorted({p.name for p in ipc_host.iterdir()} if ipc_host.is_dir() else set())
    for folder in folders:
        out.append((Spool(ipc_host / folder, exposed=cfg.ipc_dir / folder / "out", max_bytes=cfg.max_spool_bytes,
                          name=f"ipc/{folder}"), "ipc"))
        members = ipc_host / folder / "agents"  # a team's members each have their own
        for agent in sorted(p.name for p in members.iterdir()) if members.is_dir() else []:
            out.append((Spool(members / agent, exposed=cfg.agent_ipc(folder, agent) / "out",
                              max_bytes=cfg.max_spool_bytes, name=f"ipc/{folder}/{agent}"), "ipc"))
    return out


def _dir(spool: Spool, where: str) -> Dir:
    """A spool directory, walked without following links where a container can write it."""
    if spool.exposed is not None and where == "new":
        return Dir.open(spool.exposed, "new")
    return Dir.open(getattr(spool, where))


def _names(spool: Spool, where: str) -> list[str]:
    try:
        with _dir(spool, where) as d:
            return [n for n in d.names() if not n.endswith(".reason")]
    except (FileNotFoundError, UnsafeEntry):
        return []


def reason_of(path: Path) -> str:
    try:
        return path.with_name(path.name + ".reason").read_text().strip()
    except OSError:
        return ""


def listing(cfg: Config) -> list[str]:
    """Lines for `nanoclaw spool`: a summary per spool, then each refused file with its reason."""
    lines = []
    for spool, _daemon in spools(cfg):
        counts = {where: len(_names(spool, where)) for where in ("new", "cur", "bad")}
        lines.append(f"{spool.name:<16} waiting {counts['new']:>4}   in work {counts['cur']:>4}   "
                     f"refused {counts['bad']:>4}")
        for name in _names(spool, "bad"):
            reason = reason_of(spool.bad / name)
            lines.append(f"    bad/{name}: {reason.splitlines()[0] if reason else '(no reason recorded)'}")
    return lines


def find(cfg: Config, name: str) -> Found:
    """The one file whose name is ``name`` or starts with it; ValueError if none or several."""
    if not name or "/" in name:
        raise ValueError(f"not a spool file name: {name!r}")
    hits = [Found(spool, daemon, where, getattr(spool, where) / n)
            for spool, daemon in spools(cfg) for where in ("new", "cur", "bad")
            for n in _names(spool, where) if n == name or n.startswith(name)]
    exact = [h for h in hits if h.path.name == name]
    if len(exact) == 1 or len(hits) == 1:
        return (exact or hits)[0]
    if not hits:
        raise ValueError(f"no spool file {name!r} (see: nanoclaw spool)")
    raise ValueError(f"{name!r} names {len(hits)} files; give more of the name: "
                     + ", ".join(h.path.name for h in hits[:5]))


def show(cfg: Config, name: str) -> str:
    f = find(cfg, name)
    head = f"{f.spool.name}/{f.where}/{f.path.name}"
    try:
        kind, fields = _read(f)
        body = json.dumps({"type": kind, "body": fields}, indent=2, ensure_ascii=False)
    except BadMessage as exc:
        body = f"(not readable as a message: {exc})"
    reason = reason_of(f.path) if f.where == "bad" else ""
    return "\n".join([head] + ([f"refused: {reason}"] if reason else []) + [body])


def retry(cfg: Config, name: str) -> str:
    """Put a refused file back where its daemon takes it, if it now passes the daemon's checks."""
    f = find(cfg, name)
    if f.where != "bad":
        raise ValueError(f"{f.path.name} is in {f.where}/, not refused: only files in bad/ can be retried")
    try:
        _read(f)
    except BadMessage as exc:
        raise ValueError(f"{f.path.name} still fails the daemon's checks: {exc}") from None
    if f.spool.exposed is not None:  # a container's request: back into the host's cur/, read at restart
        raise ValueError(f"{f.path.name} came from a container ({f.spool.name}); the container's own "
                         "outbox is not written by the host: drop it instead")
    dest = f.spool.new / f.path.name
    if os.path.lexists(dest):
        raise ValueError(f"{dest} exists")
    os.rename(f.path, dest)
    f.path.with_name(f.path.name + ".reason").unlink(missing_ok=True)
    nudge(cfg.socket(f.daemon))
    return f"{f.path.name} is back in {f.spool.name}/new/; {f.daemon} was woken"


def drop(cfg: Config, name: str) -> str:
    f = find(cfg, name)
    if f.where == "cur":
        raise ValueError(f"{f.path.name} is being worked on (cur/); it cannot be dropped now")
    with _dir(f.spool, f.where) as d:
        d.unlink(f.path.name)
        d.unlink(f.path.name + ".reason")
    return f"dropped {f.spool.name}/{f.where}/{f.path.name}"


def _read(f: Found) -> tuple[str, dict]:
    """Read and validate as the consuming daemon does (size limit, links, schema)."""
    try:
        with _dir(f.spool, f.where) as d:
            return decode(d.read(f.path.name, f.spool.max_bytes))
    except UnsafeEntry as exc:
        raise BadMessage(exc.strerror or str(exc)) from None
