"""Registering chats as groups: validation, folders and memory templates.

The main group (the owner's admin channel) is chosen here, from the CLI, and
never by an agent: agents reach group administration only through requests
that the ipc daemon authorises.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path

from nanoclaw.core.config import FOLDER_RE, Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import AllowedSender, Group, db
from nanoclaw.core.safefs import Dir

RESERVED_FOLDERS = {"global"}
log = logging.getLogger("nanoclaw.groups")


class GroupError(ValueError):
    """A group request that cannot be carried out; the text says why."""


# A chat network's id as nanoclaw stores one (1203…@g.us, 4917…@s.whatsapp.net, main@term): an
# agent's register_group names one, and it becomes the CHAT of journal lines, so it is checked.
CHAT_ID = re.compile(r"[A-Za-z0-9._:+-]{1,100}@[a-z0-9.]{1,30}")  # fullmatch


def validate_jid(jid: str) -> str:
    """Return ``jid`` if it has the shape of a chat id, else raise GroupError."""
    if not isinstance(jid, str) or not CHAT_ID.fullmatch(jid):
        raise GroupError(f"invalid chat id {jid!r}: user@server, e.g. 120363000000000000@g.us")
    return jid


def validate_folder(folder: str) -> str:
    """Return ``folder`` if it is a safe, allowed folder name, else raise GroupError."""
    if not FOLDER_RE.fullmatch(folder or ""):
        raise GroupError(f"invalid folder name {folder!r}: use 1-64 of A-Z a-z 0-9 _ -, "
                         "starting with a letter or digit")
    if folder.lower() in RESERVED_FOLDERS:
        raise GroupError(f"folder name {folder!r} is reserved")
    return folder


def terminal_jid(folder: str) -> str:
    """The chat id the terminal channel uses for a group with no chat of its own."""
    return f"{folder}@term"


def share_dirs(name: str) -> list[Path]:
    """Where shipped files (``groups``, ``container``) may be: the source checkout, then
    ``<venv>/share`` where ``install.sh --prefix DIR`` put them (the venv is DIR)."""
    return [Path(__file__).resolve().parents[2] / name, Path(sys.prefix) / "share" / name]


def template_dir() -> Path:
    """Where the CLAUDE.md templates live (source checkout or installed share dir)."""
    for candidate in share_dirs("groups"):
        if (candidate / "main" / "CLAUDE.md").exists():
            return candidate
    return share_dirs("groups")[0]


def ensure_global(cfg: Config) -> None:
    """Create the shared memory folder from its template if missing.

    The main group's agent may write this folder: the file is created only if
    no entry of its name exists (a planted link is left alone, not followed).
    """
    src = template_dir() / "global" / "CLAUDE.md"
    with Dir.open(cfg.global_dir, create=True) as d:
        if src.exists():
            d.create("CLAUDE.md", src.read_bytes())


def add_group(cfg: Config, folder: str, *, name: str | None = None, jid: str | None = None,
              trigger: str | None = None, requires_trigger: bool | None = None,
              is_main: bool = False) -> Group:
    """Register a chat as a group and create its folder with a CLAUDE.md. Its agents' cursors
    are the queue's to make, when it first serves the group."""
    validate_folder(folder)
    jid = jid or terminal_jid(folder)
    trigger = trigger if trigger is not None else cfg.default_trigger
    if not trigger.strip():
        raise GroupError("trigger must not be empty")
    if requires_trigger is None:
        requires_trigger = not is_main
    with db.atomic("IMMEDIATE"):
        if Group.get_or_none(Group.folder == folder):
            raise GroupError(f"a group with folder {folder!r} already exists")
        if Group.get_or_none(Group.jid == jid):
            raise GroupError(f"chat {jid!r} is already registered")
        if is_main and Group.get_or_none(Group.is_main == True):  # noqa: E712
            raise GroupError("there is already a main group; remove it first")
        group = Group.create(jid=jid, name=name or folder, folder=folder, trigger=trigger,
                             requires_trigger=requires_trigger, is_main=is_main)
    # A re-registered group's folder is its earlier agent's to write: the memory file is
    # created only where no entry of its name exists, never through a planted link.
    src = template_dir() / ("main" if is_main else "default") / "CLAUDE.md"
    text = src.read_text() if src.exists() else f"# {name or folder}\n"
    with Dir.open(cfg.groups_dir / folder, create=True) as d:
        d.create("CLAUDE.md", text.replace("{{ASSISTANT}}", cfg.assistant_name)
                 .replace("{{GROUP}}", name or folder).encode())
    ensure_global(cfg)
    log.info("group added folder=%s jid=%s main=%s", folder, jid, is_main)
    return group


def remove_group(cfg: Config, folder: str) -> None:
    """Unregister a group. Its folder (the agent's memory) is kept on disk."""
    group = Group.get_or_none(Group.folder == folder)
    if group is None:
        raise GroupError(f"no group with folder {folder!r}")
    group.delete_instance(recursive=True)
    log.info("group removed folder=%s (folder kept on disk)", folder)


# By folder, else JID, else display name: one statement (kept as text, for the channel's every
# inbound message; the rest is peewee).
_FIND = 'SELECT * FROM "group" WHERE folder = ?1 OR jid = ?1 OR name = ?1 ' \
        "ORDER BY folder = ?1 DESC, jid = ?1 DESC, id LIMIT 1"


def find_group(ref: str) -> Group:
    """Look a group up by folder, JID or display name."""
    for group in Group.raw(_FIND, ref):
        return group
    if ref == "main":
        group = Group.get_or_none(Group.is_main == True)  # noqa: E712
        if group:
            return group
    raise GroupError(f"no group {ref!r} (see: nanoclaw groups list)")


def allowlist_path(cfg: Config, folder: str) -> Path:
    """Kept in the config dir, out of the agent's reach (its folder is writable to it)."""
    return cfg.config_dir / "allowlists" / f"{folder}.json"


def read_allowlist(path: Path) -> tuple[set[str] | None, str]:
    """(senders, problem) from an allowlist file: (None, "") if there is none; an
    unreadable or invalid file gives (empty set, why): nobody may trigger (fail closed)."""
    try:
        raw = path.read_text()
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return set(), f"unreadable: {exc.strerror}"
    try:
        data = json.loads(raw)
        senders = data["senders"]
        if not isinstance(senders, list) or not all(isinstance(s, str) for s in senders):
            raise ValueError("'senders' must be a list of strings")
    except (ValueError, KeyError, TypeError) as exc:
        return set(), f"invalid: {exc}"
    return set(senders), ""


def allowed_senders(cfg: Config, folder: str) -> set[str] | None:
    """Who may trigger the group's agent: None means anyone.

    The file is ``{"senders": ["jid", ...]}``. If it exists but cannot be
    read or parsed, nobody is allowed (fail closed) and the reason is logged.
    """
    path = allowlist_path(cfg, folder)
    senders, problem = read_allowlist(path)
    if problem:
        log.error("allowlist %s %s; nobody may trigger", path, problem, extra=log_fields(group=folder))
    return senders


POLICIES = ("open", "allowlist", "ask")


def policy_of(cfg: Config, group: Group) -> str:
    """Who may wake the group's agent: "open" (anyone in the chat), "allowlist" (the senders
    in its allowlist file), or "ask" (those, and anyone else once the owner approves them).

    A group that never had a policy set keeps what it had before policies existed: its
    allowlist file if there is one (even a broken one, which then admits nobody), else open.
    An unknown stored value admits only the allowlist (fail closed).
    """
    if group.policy in POLICIES:
        return group.policy
    if group.policy:
        log.error("has unknown policy %r; treated as allowlist", group.policy, extra=log_fields(group=group.folder))
        return "allowlist"
    return "allowlist" if os.path.lexists(allowlist_path(cfg, group.folder)) else "open"


def senders_for(cfg: Config, group: Group) -> set[str] | None:
    """The senders who may wake the group's agent under its policy; None means anyone.
    Under "allowlist" and "ask": the allowlist file's senders (a missing file has none) and
    those the owner approved when they asked (``AllowedSender``, core/approvals.py)."""
    if policy_of(cfg, group) == "open":
        return None
    senders = allowed_senders(cfg, group.folder)
    if senders is not None and not senders and read_allowlist(allowlist_path(cfg, group.folder))[1]:
        return set()  # a broken file admits nobody, not even those approved (fail closed; logged)
    approved = AllowedSender.select(AllowedSender.sender).where(AllowedSender.group == group.id)
    return (senders or set()) | {s for (s,) in approved.tuples()}


def set_policy(cfg: Config, ref: str, policy: str) -> Group:
    """Set a group's policy (the owner's CLI only)."""
    if policy not in POLICIES:
        raise GroupError(f"unknown policy {policy!r}: use one of {', '.join(POLICIES)}")
    group = find_group(ref)
    with db.atomic("IMMEDIATE"):
        Group.update(policy=policy).where(Group.id == group.id).execute()
    group.policy = policy
    log.info("policy=%s", policy, extra=log_fields(group=group.folder))
    return group

