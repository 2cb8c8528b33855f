"""The owner's folders for one container: checked against the allowlist now, and opened.

SUMMARY
    :func:`for_container` reads a group's ``mount`` rows (only the CLI writes them), checks
    each against the allowlist as it is at this start (``core.mounts.check``: an edited
    allowlist takes effect at once), and opens what passed as :mod:`binds` do, with the
    binds that keep git's configuration and hooks read-only in a read-write folder.

DIAGNOSTICS
    A refused mount is logged with its reason (``mount=NAME refused: ...``) and left out,
    never skipped in silence; an unusable allowlist refuses them all.
"""

from __future__ import annotations

import logging

from nanoclaw.core import mounts
from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Mount
from nanoclaw.daemons.runner import binds


def for_container(cfg: Config, folder: str, log: logging.Logger,
                  read_only: bool = False) -> tuple[list[binds.Bind], mounts.Allowlist | None]:
    """The binds of a group's mounts that pass the allowlist as it is now, each opened as it
    was checked (close them with :func:`binds.close` once the container is verified), and
    the allowlist they passed (``validate`` holds the container's spec to it again).

    Checked at every container start, so an edited allowlist takes effect at once; a refused
    mount is logged with its reason, never skipped in silence. A read-write mount brings the
    binds that keep git's configuration and hooks read-only (unless the owner allowed it);
    ``read_only`` makes every mount read-only (a task's pre-check).
    """
    rows = list(Mount.select().join(Group).where(Group.folder == folder).order_by(Mount.name))
    if not rows:
        return [], None
    try:
        allow = mounts.load(cfg)
    except mounts.MountError as exc:
        log.error("mounts refused, all %d: %s", len(rows), exc, extra=log_fields(group=folder))
        return [], None
    out: list[binds.Bind] = []
    for row in rows:
        rw = row.rw and not read_only
        try:
            resolved = mounts.check(cfg, row.host_path, row.rw, allow)
            folder_bind = binds.open_checked(resolved, f"/workspace/extra/{row.name}", not rw, row.name)
        except (mounts.MountError, OSError) as exc:
            log.error("mount=%s refused: %s", row.name, exc, extra=log_fields(group=folder))
            continue
        try:
            guards = binds.git_guards(folder_bind) if rw and not row.allow_git_config else []
        except OSError as exc:
            binds.close([folder_bind])
            log.error("mount=%s refused: %s", row.name, exc, extra=log_fields(group=folder))
            continue
        out += [folder_bind, *guards]
    return out, allow
