"""Parts of a root command done as the owner of the state, and whether the service is up.

``sudo nanoclaw backup|restore|migrate`` run as root, but SQLite makes files beside a
database it opens (its ``-wal``, ``-shm`` and ``-journal``): made by root, they would lock
the service user out of its own database. So whatever opens a database of the state runs
in a child process that has become the state's owner (``as_owner_of``), and root keeps
only what needs root: the configuration directory, the credential, the archive's file.
"""

from __future__ import annotations

import os
import pickle
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from nanoclaw.registry import NAMES as DAEMONS
from nanoclaw.core.config import Config

T = TypeVar("T")


def owner_of(path: Path) -> tuple[int, int] | None:
    """(uid, gid) to act as for ``path``: its owner when we are root and it is someone
    else's, else None (act as we are)."""
    if os.geteuid() != 0:
        return None
    st = os.stat(path)
    return None if st.st_uid == 0 else (st.st_uid, st.st_gid)


def as_owner_of(path: Path, fn: Callable[[], T]) -> T:
    """``fn()``, run as the owner of ``path`` when that is not us (a forked child that drops
    root for good); its result or its exception comes back as if it ran here."""
    who = owner_of(path)
    if who is None:
        return fn()
    sys.stdout.flush()
    sys.stderr.flush()
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        os.close(r)
        try:
            os.setgroups([who[1]])
            os.setgid(who[1])
            os.setuid(who[0])
            outcome = (True, fn())
        except BaseException as exc:  # noqa: BLE001 - handed to the parent to raise
            outcome = (False, exc)
        try:
            data = pickle.dumps(outcome)
        except Exception as exc:  # an unpicklable result: say so rather than hang the parent
            data = pickle.dumps((False, RuntimeError(f"cannot hand the result back: {exc}")))
        with os.fdopen(w, "wb") as out:
            out.write(data)
        sys.stdout.flush()
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as inp:
        data = inp.read()
    _, status = os.waitpid(pid, 0)
    if not data:
        raise RuntimeError(f"the part run as uid {who[0]} died (wait status {status})")
    ok, value = pickle.loads(data)  # from our own child, running our own code
    if not ok:
        raise value
    return value


def running(cfg: Config) -> list[str]:
    """The daemons that are up: answering on their sockets, or (under systemd) their units
    not stopped."""
    from nanoclaw.admin.status import ask_status, systemd_is_pid1

    up = [name for name in DAEMONS if ask_status(cfg, name, timeout=2)[0] is not None]
    if systemd_is_pid1():
        import subprocess
        states = subprocess.run(["systemctl", "is-active", *(f"nanoclaw-{d}" for d in DAEMONS)],
                                capture_output=True, text=True).stdout.split()
        up += [d for d, state in zip(DAEMONS, states) if d not in up
               and state in ("active", "activating", "deactivating", "reloading")]
    return up


def _units() -> bool:
    return os.path.isdir("/run/systemd/system") and Path("/etc/systemd/system/nanoclaw.target").exists()


def stop_hint() -> str:
    """How the owner stops nanoclaw on this host."""
    return "sudo systemctl stop nanoclaw.target" if _units() else "stop `nanoclaw run-all` (Ctrl-C where it runs)"


def start_hint() -> str:
    return "sudo systemctl start nanoclaw.target" if _units() else "nanoclaw run-all"
