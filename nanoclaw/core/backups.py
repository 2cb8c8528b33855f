"""Where backups are kept and how they are named, for the code that makes them
(``admin/backup.py``), restores them (``admin/restore.py``) and names one to go back to
(``core/migrations.py``, when a database is newer than the code).

A backup nanoclaw makes without being given a file is
``<state>/backups/nanoclaw-<YYYYmmdd-HHMMSS>[.<n>]-schema<N>[-<kind>].tar.gz``: the database's
schema version is in the name, so the backup to go back to after an upgrade is found without
opening any archive. ``kind`` says who made it: ``nightly`` (the timer), ``pre-upgrade``
(install.sh), ``pre-migrate`` (``nanoclaw migrate``); none for the owner's own.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

NAME_RE = re.compile(r"^nanoclaw-(\d{8}-\d{6}(?:\.\d{1,3})?)-schema(\d{1,6})(?:-([a-z][a-z-]{0,30}))?\.tar\.gz$")
KINDS = ("nightly", "pre-upgrade", "pre-migrate")  # made by nanoclaw itself; kept `[backup] keep` of each


@dataclass(frozen=True)
class Found:
    path: Path
    stamp: str
    schema: int
    kind: str


def directory(state_dir: Path) -> Path:
    return Path(state_dir) / "backups"


def name_for(schema: int, kind: str = "", at: float | None = None, n: int = 0) -> str:
    """A backup's name; ``n`` tells apart backups made within the same second."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(time.time() if at is None else at))
    return f"nanoclaw-{stamp}{f'.{n}' if n else ''}-schema{schema}" + (f"-{kind}" if kind else "") + ".tar.gz"


def listing(where: Path) -> list[Found]:
    """The named backups in ``where``, oldest first."""
    try:
        names = [p.name for p in Path(where).iterdir()]
    except OSError:
        return []
    found = []
    for name in names:
        m = NAME_RE.match(name)
        if m:
            found.append(Found(Path(where) / name, m.group(1), int(m.group(2)), m.group(3) or ""))
    return sorted(found, key=lambda f: (f.stamp[:15], int(f.stamp[16:] or 0)))


def newest_restorable(where: Path, known: int) -> Found | None:
    """The newest backup whose database this code can read (schema ``known`` or older)."""
    usable = [f for f in listing(where) if f.schema <= known]
    return usable[-1] if usable else None
