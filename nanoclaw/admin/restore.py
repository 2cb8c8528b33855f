"""``nanoclaw restore FILE``: put a backup back, with nanoclaw stopped.

SUMMARY
    Refuses while any daemon runs (and says how to stop them), and refuses an archive whose
    database is at a newer schema than this code knows. Otherwise every entry is checked,
    everything is written into staging directories beside the state and the configuration,
    the restored database is checked (``PRAGMA integrity_check``), and only then does it
    swap: what was there (the database, groups, sessions, the WhatsApp session, and the
    spools and IPC directories, whose work in flight belongs to the state being replaced)
    is moved to ``<state>/restore-replaced-<when>/`` (configuration files to
    ``<config>/restore-replaced-<when>/``), and the restored ones take their places. A
    database from an older schema is then migrated (core/migrations.py). The credential
    is put back only if the archive has it; otherwise the one in place stays.

PRIVILEGE
    Root (``sudo nanoclaw restore``) under the units: the configuration is root's. The
    restored state is given to the state directory's owner, never to the archive's uids;
    the database is opened only as that owner (admin/owner.py).

SECURITY
    The archive is hostile until checked: a group folder's files are an agent's, and an
    archive can come from anywhere. Before anything is written, every entry must have a
    relative name without ``.`` or ``..`` components, lie inside what a backup holds
    (``state/nanoclaw.db``, ``state/groups``, ``state/sessions``, ``state/whatsapp``,
    ``config/``), be a regular file or a directory, or a symbolic link inside the agents'
    own trees (``state/groups``, ``state/sessions``, where backups keep links as links);
    no hard link, device or FIFO, nothing below a link, no name twice. One refused entry
    refuses the archive and nothing is written. Entries are then made through descriptors
    (``safefs.Dir``: directories walked ``O_NOFOLLOW``, files created ``O_EXCL``) in new
    staging directories, so no link, even one the archive itself made, is ever written
    through; set-id bits are dropped.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import sys
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from nanoclaw.admin.backup import FORMAT, human
from nanoclaw.admin.owner import as_owner_of, running, start_hint, stop_hint
from nanoclaw.core import migrations
from nanoclaw.core.config import Config
from nanoclaw.core.credentials import CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME

SECRETS = (CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME)  # the only files config/credentials/ may hold
from nanoclaw.core.release import describe
from nanoclaw.core.safefs import Dir

STATE_AREAS = ("nanoclaw.db", "groups", "sessions", "whatsapp")
LINKS_ALLOWED = ("groups", "sessions")  # the agents' trees: links are theirs, kept as links
REPLACED = ("nanoclaw.db", "nanoclaw.db-wal", "nanoclaw.db-shm", "nanoclaw.db-journal",
            "groups", "sessions", "whatsapp", "spool", "ipc")
MAX_MANIFEST = 64 * 1024


class Refused(Exception):
    """The archive cannot be restored; nothing was written. ``reasons``: one line each."""

    def __init__(self, reasons: list[str]) -> None:
        super().__init__("; ".join(reasons))
        self.reasons = reasons


@dataclass
class Checked:
    manifest: dict
    state: list[tarfile.TarInfo]
    config: list[tarfile.TarInfo]
    size: int  # bytes once unpacked


def _problem(m: tarfile.TarInfo, seen: set[str], links: set[str]) -> str:
    """Why entry ``m`` may not be restored, or ""."""
    name = m.name
    parts = name.split("/")
    if parts == ["state"] and m.isdir() and name not in seen:
        return ""  # the state area's own directory entry, which a hand-made archive may have
    if name.startswith("/"):
        return "an absolute path"
    if any(p in ("", ".", "..") for p in parts):
        return "a '.', '..' or empty path component"
    if name in seen:
        return "a second entry of the same name"
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            return "below a symbolic link"
    area = parts[1] if parts[0] == "state" and len(parts) > 1 else None
    if parts[0] == "config":
        if len(parts) > 1 and parts[1] == "credentials" and not (
                (len(parts) == 2 and m.isdir()) or (len(parts) == 3 and parts[2] in SECRETS and m.isreg())):
            return "not a credential file"
    elif area not in STATE_AREAS or parts == ["state"]:
        return "not part of a nanoclaw backup"
    elif area == "nanoclaw.db" and (len(parts) != 2 or not m.isreg()):
        return "not the database file"
    if m.issym():
        return "" if area in LINKS_ALLOWED and len(parts) > 2 else "a symbolic link outside the agents' folders"
    if m.islnk():
        return "a hard link"
    if not (m.isreg() or m.isdir()):
        return "a device, FIFO or other special file"
    return ""


def check(tar: tarfile.TarFile) -> Checked:
    """Read and check every entry's header; ``Refused`` with every reason, or the plan."""
    try:
        members = tar.getmembers()
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise Refused([f"the archive cannot be read ({exc})"]) from None
    if not members or members[0].name != "MANIFEST.json" or not members[0].isreg() \
            or members[0].size > MAX_MANIFEST:
        raise Refused(["it is not a nanoclaw backup (no MANIFEST.json first)"])
    try:
        manifest = json.loads(tar.extractfile(members[0]).read())
        schema = int(manifest["schema"])
        fmt = manifest["format"]
    except (ValueError, KeyError, TypeError, tarfile.TarError, OSError) as exc:
        raise Refused([f"its MANIFEST.json is unreadable ({exc})"]) from None
    if fmt != FORMAT:
        raise Refused([f"it is of backup format {fmt!r}; this nanoclaw {describe()} reads format {FORMAT}"])
    if schema > migrations.LATEST:
        raise Refused([f"its database is at schema {schema}, newer than this nanoclaw {describe()} knows "
                       f"(schema {migrations.LATEST}): restore it with the nanoclaw that made it "
                       f"({manifest.get('nanoclaw', '?')}, commit {manifest.get('commit', '?')})"])
    reasons, seen, links = [], {"MANIFEST.json"}, set()
    state, config, size = [], [], 0
    for m in members[1:]:
        why = _problem(m, seen, links)
        if why:
            reasons.append(f"entry {m.name!r}: {why}")
            continue
        seen.add(m.name)
        if m.issym():
            links.add(m.name)
        size += m.size if m.isreg() else 0
        (config if m.name.split("/")[0] == "config" else state).append(m)
    if not reasons and "state/nanoclaw.db" not in seen:
        reasons.append("it holds no database (state/nanoclaw.db)")
    if reasons:
        raise Refused(reasons)
    return Checked(manifest, state, config, size)


def _extract(tar: tarfile.TarFile, members: list[tarfile.TarInfo], root: Path, top: str) -> None:
    """Make ``members`` (named ``top/...``) below ``root``, a new directory of our own."""
    dirs = []
    for m in members:
        rel = m.name[len(top) + 1:]
        if not rel:
            continue
        *parents, leaf = rel.split("/")
        with Dir.open(root, "/".join(parents), create=True, mode=0o700) as d:
            if m.isdir():
                d.sub(leaf, create=True, mode=0o700).close()
                dirs.append((rel, m))
            elif m.issym():
                os.symlink(m.linkname, leaf, dir_fd=d.fd)
            else:
                fd = os.open(leaf, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=d.fd)
                try:
                    src = tar.extractfile(m)
                    left = m.size
                    while left > 0:
                        chunk = src.read(min(left, 1 << 20))
                        if not chunk:
                            raise OSError(f"{m.name}: the archive ends inside it")
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                        left -= len(chunk)
                    os.fchmod(fd, m.mode & 0o777)
                    os.fsync(fd)
                    os.utime(fd, (m.mtime, m.mtime))
                finally:
                    os.close(fd)
    for rel, m in reversed(dirs):  # deepest first: a directory's time is set after its entries
        with Dir.open(root, rel) as d:
            os.fchmod(d.fd, (m.mode & 0o777) | 0o700)
            os.utime(d.fd, (m.mtime, m.mtime))


def _chown_tree(d: Dir, uid: int, gid: int) -> None:
    """Give everything below ``d`` (our own staging tree) to ``uid:gid``, links as links."""
    os.fchown(d.fd, uid, gid)
    for name in d.names():
        st = d.lstat(name)
        if stat.S_ISDIR(st.st_mode):
            with d.sub(name) as sub:
                _chown_tree(sub, uid, gid)
        else:
            os.chown(name, uid, gid, dir_fd=d.fd, follow_symlinks=False)


def _inspect(db: Path) -> dict:
    """The staged database's health and size, read as its owner."""
    con = sqlite3.connect(f"file:{quote(str(db))}?mode=ro", uri=True)
    try:
        return {"integrity": con.execute("PRAGMA integrity_check").fetchone()[0],
                "schema": con.execute("PRAGMA user_version").fetchone()[0],
                "messages": con.execute('SELECT count(*) FROM "message"').fetchone()[0],
                "groups": con.execute('SELECT count(*) FROM "group"').fetchone()[0]}
    finally:
        con.close()


def _swap(staged: Path, live: Path, names, aside: Path) -> list[str]:
    """Move ``names`` from ``live`` to ``aside`` (those there), then the staged ones in."""
    moved = []
    for name in names:
        if os.path.lexists(live / name):
            aside.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.rename(live / name, aside / name)
            moved.append(name)
    for name in os.listdir(staged):
        os.rename(staged / name, live / name)
    return moved


def restore(cfg: Config, archive: Path, out=print) -> int:
    up = running(cfg)
    if up:
        out(f"nanoclaw: refusing to restore while nanoclaw runs ({', '.join(up)}): stop it first: {stop_hint()}")
        return 2
    if not cfg.state_dir.is_dir():
        out(f"nanoclaw: no state directory {cfg.state_dir}: install nanoclaw first (sudo ./install.sh --no-start)")
        return 2
    try:
        tar = tarfile.open(archive, "r:gz")
    except (OSError, tarfile.TarError) as exc:
        out(f"nanoclaw: cannot read {archive}: {exc}")
        return 2
    with tar:
        try:
            plan = check(tar)
        except Refused as exc:
            shown = exc.reasons[:10] + ([f"... and {len(exc.reasons) - 10} more"] if len(exc.reasons) > 10 else [])
            out(f"nanoclaw: refusing to restore {archive}: " + "; ".join(shown) + "; nothing was restored")
            return 2
        if plan.config and not os.access(cfg.config_dir, os.W_OK):
            out(f"nanoclaw: {cfg.config_dir} is root's: sudo nanoclaw restore {archive}")
            return 2
        stamp = _stamp(cfg)
        staging = cfg.state_dir / f".restore-{stamp}"
        conf_staging = cfg.config_dir / f".restore-{stamp}"
        try:
            return _restore(cfg, tar, plan, archive, stamp, staging, conf_staging, out)
        finally:
            for where in (staging, conf_staging):
                _remove_tree(where)


def _stage(cfg: Config, tar: tarfile.TarFile, plan: Checked, staging: Path, conf_staging: Path) -> dict:
    """Everything written and checked beside the live state; the restored database's facts."""
    staging.mkdir(mode=0o700)
    _extract(tar, plan.state, staging, "state")
    owner = os.stat(cfg.state_dir)
    if os.geteuid() == 0 and owner.st_uid != 0:
        with Dir.open(staging) as d:
            _chown_tree(d, owner.st_uid, owner.st_gid)
    db = staging / "nanoclaw.db"
    facts = as_owner_of(cfg.state_dir, lambda: _inspect(db))
    if facts["integrity"] != "ok" or facts["schema"] != int(plan.manifest["schema"]):
        raise sqlite3.DatabaseError(f"its database fails the check ({facts['integrity']}, schema {facts['schema']})")
    if plan.config:
        conf_staging.mkdir(mode=0o700)
        _extract(tar, plan.config, conf_staging, "config")
        if os.geteuid() == 0:
            _own_config(cfg, conf_staging)
    os.sync()  # everything staged is on disk before anything is replaced
    return facts


def _stamp(cfg: Config) -> str:
    """When, as the names of the staging and set-aside directories take it: one no other
    restore (say, one in the same second) has used."""
    base, n = time.strftime("%Y%m%d-%H%M%S"), 0
    while True:
        stamp = f"{base}.{n}" if n else base
        names = [cfg.state_dir / f".restore-{stamp}", cfg.state_dir / f"restore-replaced-{stamp}",
                 cfg.config_dir / f".restore-{stamp}", cfg.config_dir / f"restore-replaced-{stamp}"]
        if not any(os.path.lexists(p) for p in names):
            return stamp
        n += 1


def _restore(cfg: Config, tar: tarfile.TarFile, plan: Checked, archive: Path, stamp: str,
             staging: Path, conf_staging: Path, out) -> int:
    try:
        facts = _stage(cfg, tar, plan, staging, conf_staging)
    except (OSError, EOFError, zlib.error, tarfile.TarError, sqlite3.Error) as exc:
        # a damaged archive, a full disk, or a link where the writing refused to follow one
        out(f"nanoclaw: cannot restore {archive}: {exc}; nothing was restored")
        return 1
    aside = cfg.state_dir / f"restore-replaced-{stamp}"
    moved = _swap(staging, cfg.state_dir, REPLACED, aside)
    conf_aside = cfg.config_dir / f"restore-replaced-{stamp}"
    conf_moved: list[str] = []
    if plan.config:
        creds = [n for n in SECRETS if (conf_staging / "credentials" / n).exists()]
        if creds:
            live = cfg.config_dir / "credentials"
            live.mkdir(mode=0o700, exist_ok=True)
            conf_moved += _swap(conf_staging / "credentials", live, creds, conf_aside / "credentials")
        if (conf_staging / "credentials").exists():
            os.rmdir(conf_staging / "credentials")
        conf_moved += _swap(conf_staging, cfg.config_dir, sorted(os.listdir(conf_staging)), conf_aside)
    m = plan.manifest
    created = m.get("created")
    made = time.strftime("%Y-%m-%d %H:%M", time.localtime(created)) if isinstance(created, (int, float)) else "?"
    line = (f"restored {archive} ({human(archive.stat().st_size)}, {human(plan.size)} unpacked; made {made} by "
            f"nanoclaw {m.get('nanoclaw', '?')} commit {m.get('commit', '?')} on {m.get('host', '?')}): "
            f"the database (schema {facts['schema']}, {facts['groups']} group(s), {facts['messages']} message(s))")
    areas = {m.name.split("/")[1] for m in plan.state}
    line += "".join(f", {a}" for a in ("groups", "sessions", "whatsapp") if a in areas)
    if plan.config:
        creds = any(m.name.startswith("config/credentials/") and m.isreg() for m in plan.config)
        line += f", the configuration ({'with' if creds else 'without'} the credential"
        line += ")" if creds else "; yours stays)"
    out(line)
    if moved or conf_moved:
        out(f"what it replaced is kept in {aside}" + (f" and {conf_aside}" if conf_moved else "")
            + " (remove it once all is well)")
    if facts["schema"] < migrations.LATEST:
        try:
            as_owner_of(cfg.state_dir, lambda: migrations.migrate(
                cfg.db_path, progress=lambda n, what: out(f"migrating: schema {n - 1} -> {n}: {what}")))
        except migrations.MigrationError as exc:
            out(f"nanoclaw: the restored database could not be migrated: {exc}; it stays at schema "
                f"{facts['schema']} (nanoclaw migrate tries again)")
            return 1
        out(f"migrated the restored database from schema {facts['schema']} to {migrations.LATEST}")
    out(f"start nanoclaw: {start_hint()}")
    return 0


def _own_config(cfg: Config, staged: Path) -> None:
    """Restored configuration belongs to root and the configuration directory's group; the
    credential to whoever owns the one it replaces (the service user where systemd cannot
    hand it over), mode 0600."""
    gid = os.stat(cfg.config_dir).st_gid
    with Dir.open(staged) as d:
        _chown_tree(d, 0, gid)
    for name in SECRETS:
        cred = staged / "credentials" / name
        if cred.exists():
            live = cfg.config_dir / "credentials" / name
            st = os.stat(live) if live.exists() else None
            os.chown(cred, st.st_uid if st else 0, st.st_gid if st else 0, follow_symlinks=False)
            os.chmod(cred, 0o600)


def _remove_tree(path: Path) -> None:
    """Remove a staging directory of ours (what is left of it), links as links."""
    if not os.path.lexists(path):
        return
    import shutil
    shutil.rmtree(path, ignore_errors=True)  # rmtree never follows a link to a directory


def command(cfg: Config, args) -> int:
    """``nanoclaw restore FILE``."""
    archive = Path(args.file).absolute()
    if not archive.is_file():
        print(f"nanoclaw: no such file: {archive}", file=sys.stderr)
        return 2
    def out(line: str) -> None:
        print(line, file=sys.stderr if line.startswith("nanoclaw:") else sys.stdout, flush=True)

    return restore(cfg, archive, out)
