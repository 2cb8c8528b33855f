"""The one check every container's spec passes before it is made: each mount classified.

SUMMARY
    :func:`validate` looks at a :class:`spec.Spec` as built, never at what it was built from,
    and classifies every mount; one that fits no class, or breaks its class's rule, refuses
    the whole spec (:class:`SpecError`, one line: which mount, why). The classes:

    identity material
        never mounted, whatever else would admit it: nanoclaw's configuration (the
        credential, the allowlist), a systemd credentials directory, the database, the
        spools, the Podman socket, anything holding all of the state or runtime directory,
        and every path a blocked pattern names (``.ssh``, ``*.pem``, ``credentials*``, ...:
        ``core.mounts.BUILTIN_BLOCKED`` and the allowlist's own).
    group state
        pinned to the spec's own group and agent: at each of ``/workspace/group``, its
        ``agents/``, ``/workspace/ipc/in`` and ``out``, ``/workspace/session`` and
        ``/run/nanoclaw-proxy`` only that agent's own directory, read-only where the host
        writes (``in``, ``agents/``, the sockets). A pre-check gets the group's folder alone,
        read-only.
    global memory
        ``/workspace/global``: read-only, except to the main group's own agent.
    owner's folder
        under ``/workspace/extra/``: only a folder opened as ``core.mounts.check`` admitted it
        (it carries the descriptor checked), under a root of the allowlist it was checked
        against, writable only where that root allows writing, overlapping none of
        nanoclaw's own directories.
    host volume
        one of ``[container] volumes`` as configured, or read-only where it says read-write
        (what this host needs for any container to start, such as the cgroup tree).
    scratch
        a tmpfs at ``/tmp``.

    Beyond the mounts: never root inside, no credential's name in the environment, the
    group and agent names plain folder names, and a pre-check or a transcription (``transcribe``:
    the runner's copy of one voice note at ``/in``, nothing of the group) with no network and
    nothing writable.

SYNOPSIS
    validate(spec, cfg, allow) -> {target: class};  SpecError
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

from nanoclaw.core import mounts as mounts_mod
from nanoclaw.core.agent_sockets import proxy_dir
from nanoclaw.core.config import FOLDER_RE, Config
from nanoclaw.core.groups import RESERVED_FOLDERS
from nanoclaw.daemons.runner.dirs import group_dirs
from nanoclaw.daemons.runner.spec import AGENT, PRECHECK, TRANSCRIBE, VOICE_LABEL, Mount, Spec, host_volumes

IDENTITY, GROUP_STATE, GLOBAL, OWNER_FOLDER, HOST, SCRATCH = (
    "identity material", "group state", "global memory", "owner's folder", "host volume", "scratch")
EXTRA = "/workspace/extra/"
# The names an Anthropic credential goes by: the proxy holds it, an agent never does.
CREDENTIAL_ENV = frozenset({"ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "CLAUDE_CODE_OAUTH_TOKEN"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


_ROLE_WORDS = {AGENT: "agent", PRECHECK: "pre-check", TRANSCRIBE: "transcription"}


class SpecError(ValueError):
    """A container's spec that must not be made; the text says which part and why."""


def validate(spec: Spec, cfg: Config, allow: mounts_mod.Allowlist | None = None) -> dict[str, str]:
    """The class of each of ``spec``'s mounts, by target; SpecError for the first that breaks
    a rule. ``allow``: the allowlist the owner's folders were checked against (None: there
    are none)."""
    _check_process(spec)
    targets: dict[str, str] = {}
    for m in spec.mounts:
        if posixpath.normpath(m.target) != m.target or not m.target.startswith("/"):
            raise SpecError(f"mount target {m.target!r} is not a plain absolute path")
        if m.target in targets:
            raise SpecError(f"two mounts at {m.target}")
        targets[m.target] = _classify(spec, m, cfg, allow)
        if spec.role in (PRECHECK, TRANSCRIBE) and m.source and not m.read_only:
            raise SpecError(f"{m.source} at {m.target} is writable; nothing is, in a {_ROLE_WORDS[spec.role]}")
    return targets


def _check_process(spec: Spec) -> None:
    """Who runs, with what environment, on what network."""
    if spec.role not in (AGENT, PRECHECK, TRANSCRIBE):
        raise SpecError(f"role {spec.role!r} is none of {AGENT}, {PRECHECK}, {TRANSCRIBE}")
    for name in (spec.group, spec.agent) if spec.agent else (spec.group,):
        if not FOLDER_RE.fullmatch(name) or name.lower() in RESERVED_FOLDERS:
            raise SpecError(f"{name!r} is not a group's or member's name")
    if spec.user.partition(":")[0] in ("", "0", "root"):
        raise SpecError(f"user {spec.user!r}: an agent's container never runs as root (nor as the image's user)")
    for key, value in spec.env.items():
        if not ENV_NAME.fullmatch(key) or "\0" in value:
            raise SpecError(f"environment variable {key!r} is not a plain name and value")
        if key.upper() in CREDENTIAL_ENV:
            raise SpecError(f"environment variable {key} is a credential's: only the proxy holds it")
    if spec.role in (PRECHECK, TRANSCRIBE) and spec.network != "none":
        raise SpecError(f"network {spec.network!r}: a {_ROLE_WORDS[spec.role]} has none")


def _classify(spec: Spec, m: Mount, cfg: Config, allow: mounts_mod.Allowlist | None) -> str:
    if not m.source:
        if m.target != "/tmp" or not m.size:
            raise SpecError(f"a tmpfs at {m.target}: the only scratch space is a sized tmpfs at /tmp")
        return SCRATCH
    if posixpath.normpath(m.source) != m.source or not m.source.startswith("/"):
        raise SpecError(f"mount source {m.source!r} is not a plain absolute path")
    source = Path(m.source)
    why = _identity_material(source, cfg, allow)
    if why:
        raise SpecError(f"{m.source} at {m.target} is {IDENTITY} ({why}): it never reaches an agent")
    pinned = _group_state(spec, cfg)
    if m.target in pinned:
        want, must_read_only = pinned[m.target]
        if source != want:
            raise SpecError(f"{m.source} at {m.target}: {spec.name}'s {GROUP_STATE} there is {want}, its own")
        if must_read_only and not m.read_only:
            raise SpecError(f"{m.source} at {m.target} must be read-only")
        return GROUP_STATE
    if spec.role == TRANSCRIBE and m.target.startswith("/workspace"):
        raise SpecError(f"{m.source} at {m.target}: a transcription gets none of the group's directories")
    if m.target in _AGENT_ONLY:
        raise SpecError(f"{m.source} at {m.target}: a pre-check gets none of its agent's directories")
    if m.target == "/workspace/global":
        if spec.role != AGENT or source != cfg.global_dir:
            raise SpecError(f"{m.source} at {m.target}: {GLOBAL} is {cfg.global_dir}, for an agent only")
        if not m.read_only and not spec.is_main:
            raise SpecError(f"{m.source} at {m.target} is writable: only the main group's agent writes "
                            f"{GLOBAL}")
        return GLOBAL
    if m.target.startswith(EXTRA):
        return _owner_folder(m, source, cfg, allow)
    if any((v.target, v.source) == (m.target, m.source) and (m.read_only or not v.read_only)
           for v in host_volumes(cfg.container)):
        own = _own_overlap(source, cfg)
        if own is not None:
            raise SpecError(f"{m.source} at {m.target} overlaps nanoclaw's own {own}")
        return HOST
    raise SpecError(f"{m.source} at {m.target} is none of: the group's own state, {GLOBAL}, an owner's folder "
                    "the allowlist admits, a host volume from [container] volumes")


# Where the agent's own directories go; a pre-check gets only the group's folder among them.
_AGENT_ONLY = ("/workspace/group/agents", "/workspace/ipc/in", "/workspace/ipc/out", "/workspace/session",
               "/run/nanoclaw-proxy")


def _group_state(spec: Spec, cfg: Config) -> dict[str, tuple[Path, bool]]:
    """Target -> (the only source, read-only required) for this spec's own group and agent."""
    if spec.role == TRANSCRIBE:  # the runner's copy of its one note, nothing of the group
        try:
            message = int(spec.labels[VOICE_LABEL])
        except (KeyError, ValueError):
            raise SpecError(f"a transcription without its message ({VOICE_LABEL})") from None
        return {"/in": (cfg.state_dir / "voice" / str(message), True)}
    dirs = group_dirs(cfg, spec.group, spec.agent)
    if spec.role == PRECHECK:
        return {"/workspace/group": (dirs["group"], True)}
    return {
        "/workspace/group": (dirs["group"], False),
        "/workspace/group/agents": (dirs["team"], True),
        "/workspace/ipc/in": (dirs["in"], True),
        "/workspace/ipc/out": (dirs["out"], False),
        "/workspace/session": (dirs["session"], False),
        "/run/nanoclaw-proxy": (proxy_dir(cfg, spec.group, spec.agent), True),
    }


def _identity_material(source: Path, cfg: Config, allow: mounts_mod.Allowlist | None) -> str:
    """Why ``source`` holds what never reaches an agent ('' when it does not)."""
    for whole in (cfg.state_dir, cfg.runtime_dir):
        if whole.is_relative_to(source):
            return f"it holds all of {whole}"
    secret = [cfg.config_dir, cfg.db_path, cfg.spool_dir, Path(cfg.podman_socket.removeprefix("unix://"))]
    if os.environ.get("CREDENTIALS_DIRECTORY"):
        secret.append(Path(os.environ["CREDENTIALS_DIRECTORY"]))
    for path in secret:
        if mounts_mod.overlaps(source, path):
            return f"it overlaps {path}"
    patterns = mounts_mod.BUILTIN_BLOCKED + (allow.blocked if allow is not None else ())
    hit = mounts_mod.blocked_by(source.parts[1:], patterns)
    return f"{hit!r} is blocked" if hit else ""


def _own_overlap(source: Path, cfg: Config) -> Path | None:
    return next((own for own in (cfg.state_dir, cfg.config_dir, cfg.runtime_dir) if mounts_mod.overlaps(source, own)),
                None)


def _owner_folder(m: Mount, source: Path, cfg: Config, allow: mounts_mod.Allowlist | None) -> str:
    b = m.checked
    if b is None or (str(b.source), b.target) != (m.source, m.target) or (b.read_only and not m.read_only):
        raise SpecError(f"{m.source} at {m.target} is no {OWNER_FOLDER} opened as the allowlist admitted it")
    if allow is None:
        raise SpecError(f"{m.source} at {m.target}: no allowlist admitted it")
    root = next((r for r in allow.roots if source.is_relative_to(r.path)), None)
    if root is None:
        raise SpecError(f"{m.source} at {m.target} is under no root of the allowlist")
    if not m.read_only and not root.write:
        raise SpecError(f"{m.source} at {m.target} is writable, and the allowlist lets {root.path} be read only")
    own = _own_overlap(source, cfg)
    if own is not None:
        raise SpecError(f"{m.source} at {m.target} overlaps nanoclaw's own {own}")
    return OWNER_FOLDER
