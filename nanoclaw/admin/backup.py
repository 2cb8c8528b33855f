"""``nanoclaw backup``: one archive of what the assistant knows.

SUMMARY
    A gzip'd tar holding ``MANIFEST.json`` (first: this code's version and commit, the
    database's schema version, when, whether the credential is in it), the database
    (``state/nanoclaw.db``), the group folders with their memory (``state/groups``), the
    agents' sessions (``state/sessions``), the WhatsApp session (``state/whatsapp``) and
    the configuration directory (``config/``), the Anthropic credential (and the voice API's
    key, if set) only with ``--with-secrets``. Spools, IPC directories, images and caches are not in it: they are
    work in flight or made again. Every archive is mode 0600: it holds the chats.

    The database, and the WhatsApp session's SQLite store, are copied with SQLite's online
    backup API: a consistent snapshot while the daemons write. ``--nightly`` (the timer)
    writes ``<state>/backups/nanoclaw-<when>-schema<N>-nightly.tar.gz`` and keeps the newest
    ``[backup] keep`` of those (core/backups.py names them).

PRIVILEGE
    The service user (the timer, install.sh), or root (``sudo nanoclaw backup``): then the
    snapshots are taken as the state's owner (admin/owner.py), and root reads the rest.

HOSTILE INPUT
    The group folders and sessions are the agents'. archive_writer.py walks them from
    descriptors and follows no link; its header says how each kind of file is treated.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import sqlite3
import stat
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from nanoclaw import __version__
from nanoclaw.admin.archive_writer import Part, Writer
from nanoclaw.admin.owner import as_owner_of
from nanoclaw.core import backups
from nanoclaw.core.config import Config
from nanoclaw.core.credentials import CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME
from nanoclaw.core.credentials import file_path as credential_path
from nanoclaw.core.release import commit
from nanoclaw.core.safefs import Dir

FORMAT = 1  # MANIFEST.json's "format": what restore.py reads
SQLITE_SIDE = ("-wal", "-shm", "-journal")


class BackupError(Exception):
    """The archive could not be made; the text says why, for the owner."""


@dataclass
class Summary:
    path: Path
    size: int
    schema: int
    parts: list[Part]
    skipped: Counter = field(default_factory=Counter)
    with_secrets: bool = False
    removed: list[Path] = field(default_factory=list)
    secrets: list[str] = field(default_factory=list)  # the credential files in it, by name


def human(n: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def snapshot(src: Path, dest: Path) -> int:
    """A consistent copy of the SQLite database ``src`` at ``dest`` (SQLite's online backup
    API; the writers go on), as a plain rollback-journal file; returns its schema version."""
    # mode=rw: a database that vanished is an error here, not a new empty one
    source = sqlite3.connect(f"file:{quote(str(src))}?mode=rw", uri=True, timeout=30)
    target = sqlite3.connect(dest)
    try:
        source.backup(target)
        target.execute("PRAGMA journal_mode = DELETE")  # one file, nothing beside it
        version = target.execute("PRAGMA user_version").fetchone()[0]
    finally:
        target.close()
        source.close()
    os.chmod(dest, stat.S_IMODE(os.stat(src).st_mode))  # as private as the original (the WhatsApp keys)
    return version


def _snapshots(cfg: Config, work: Path) -> tuple[int, bool]:
    """The database's and the WhatsApp store's snapshots in ``work``, as the state's owner.
    Returns (the database's schema version, whether there was a WhatsApp store)."""
    work.mkdir(mode=0o700)
    schema = snapshot(cfg.db_path, work / "nanoclaw.db")
    wa = cfg.state_dir / "whatsapp" / "session.db"
    have_wa = os.path.lexists(wa) and stat.S_ISREG(os.lstat(wa).st_mode)
    if have_wa:
        snapshot(wa, work / "session.db")
    return schema, have_wa


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.partial")


def _open_output(dest: Path) -> int:
    """The archive's file while it is written: beside ``dest`` under a name no listing
    counts, new, 0600, no link followed. ``dest`` itself appears only once it is whole."""
    if os.path.lexists(dest):
        raise BackupError(f"{dest} exists: give another file name")
    tmp = _partial(dest)
    for _ in range(2):
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except FileExistsError:
            tmp.unlink()  # what a killed run left (the entry itself, whatever it is)
        except OSError as exc:
            raise BackupError(f"cannot write {dest}: {exc.strerror}") from None
    raise BackupError(f"cannot write {tmp}: it keeps coming back")


def _name_it(tmp: Path, dest: Path) -> None:
    """Give the whole archive its name, never over a file that appeared meanwhile."""
    try:
        os.link(tmp, dest)
    except FileExistsError:
        raise BackupError(f"{dest} exists: give another file name") from None
    except OSError as exc:  # a filesystem without hard links (a FAT stick): rename, having looked
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        if os.path.lexists(dest):
            raise BackupError(f"{dest} exists: give another file name") from None
        os.rename(tmp, dest)


def make(cfg: Config, dest: Path | None = None, *, with_secrets: bool = False, kind: str = "") -> Summary:
    """Write a backup to ``dest`` (default: a new name in the backups directory)."""
    if not cfg.db_path.exists():
        raise BackupError(f"no database at {cfg.db_path}: nothing to back up yet")
    secrets: dict[str, bytes] | None = None
    if with_secrets:  # the Anthropic credential must be set; the voice API's key goes in if it is
        secrets = {}
        for name in (CREDENTIAL_NAME, VOICE_CREDENTIAL_NAME):
            try:
                secrets[name] = credential_path(cfg, name).read_bytes()
            except PermissionError:
                raise BackupError("the credential is root's: sudo nanoclaw backup --with-secrets") from None
            except FileNotFoundError:
                if name == CREDENTIAL_NAME:
                    raise BackupError(f"--with-secrets, but no credential is set ({credential_path(cfg)})") from None
    work_parent = cfg.backup_dir
    if not work_parent.exists():
        work_parent.mkdir(mode=0o700, parents=True)
        if os.geteuid() == 0:
            st = os.stat(cfg.state_dir)
            os.chown(work_parent, st.st_uid, st.st_gid)
    work = work_parent / f".snapshot-{os.getpid()}-{int(time.time())}"
    try:
        schema, have_wa = as_owner_of(cfg.state_dir, lambda: _snapshots(cfg, work))
    except sqlite3.Error as exc:
        _remove(work)
        raise BackupError(f"cannot copy the database: {exc}") from None
    try:
        if not dest:
            at, n = time.time(), 0
            while os.path.lexists(dest := work_parent / backups.name_for(schema, kind, at, n)):
                n += 1
        dest = Path(dest)
        fd = _open_output(dest)
        try:
            with os.fdopen(fd, "wb") as raw:
                with tarfile.open(fileobj=raw, mode="w:gz", format=tarfile.PAX_FORMAT, compresslevel=6) as tar:
                    summary = _write(cfg, Writer(tar), work, schema, have_wa, secrets)
                raw.flush()
                os.fsync(raw.fileno())  # whole on disk before it has its name (and is counted)
            _name_it(_partial(dest), dest)
        finally:
            _partial(dest).unlink(missing_ok=True)
    finally:
        _remove(work)
    summary.path, summary.size = dest, dest.stat().st_size
    return summary


def _write(cfg: Config, w: Writer, work: Path, schema: int, have_wa: bool,
           secrets: dict[str, bytes] | None) -> Summary:
    manifest = {"format": FORMAT, "nanoclaw": __version__, "commit": commit(), "schema": schema,
                "created": time.time(), "host": socket.gethostname(), "with_secrets": secrets is not None}
    w.add_bytes("MANIFEST.json", json.dumps(manifest, indent=1).encode() + b"\n", 0o644)
    db = Part("database")
    with Dir.open(work) as d:
        w.add_file(d, "nanoclaw.db", "state/nanoclaw.db", db)
    groups, sessions, wa, conf = Part("groups"), Part("sessions"), Part("whatsapp session"), Part("configuration")
    w.add_tree(cfg.groups_dir, "state/groups", groups)
    w.add_tree(cfg.sessions_dir, "state/sessions", sessions)
    # The WhatsApp store's live files are left out: its snapshot stands in for them.
    w.add_tree(cfg.state_dir / "whatsapp", "state/whatsapp", wa,
               frozenset({"session.db", *(f"session.db{s}" for s in SQLITE_SIDE)}))
    if have_wa:
        with Dir.open(work) as d:
            w.add_file(d, "session.db", "state/whatsapp/session.db", wa)
    # Not the credential unless asked, and never what an earlier restore set aside.
    leave = frozenset({"credentials"} | {n for n in _names(cfg.config_dir) if n.startswith("restore-replaced-")})
    w.add_tree(cfg.config_dir, "config", conf, leave)
    for name, secret in (secrets or {}).items():
        w.add_bytes(f"config/credentials/{name}", secret, 0o600)
        conf.files += 1
    return Summary(Path(), 0, schema, [db, groups, sessions, wa, conf], w.skipped, secrets is not None,
                   secrets=sorted(secrets or ()))


def _names(path: Path) -> list[str]:
    try:
        return os.listdir(path)
    except OSError:
        return []


def _remove(work: Path) -> None:
    for name in _names(work):
        (work / name).unlink(missing_ok=True)
    try:
        work.rmdir()
    except OSError:
        pass


def prune(cfg: Config, kind: str) -> list[Path]:
    """Remove the oldest backups of ``kind`` beyond ``[backup] keep``; returns what went."""
    same = [f for f in backups.listing(cfg.backup_dir) if f.kind == kind]
    gone = []
    for old in same[:-cfg.backup.keep]:
        old.path.unlink(missing_ok=True)
        gone.append(old.path)
    return gone


def report(s: Summary) -> str:
    parts = []
    for p in s.parts:
        if p.label == "database":
            parts.append(f"database {human(p.bytes)} (schema {s.schema})")
        elif p.files:
            parts.append(f"{p.label} {p.files} file(s) {human(p.bytes)}")
    line = f"backed up to {s.path} ({human(s.size)}, mode 0600): " + ", ".join(parts)
    if s.with_secrets:
        line += ("; the credentials (Anthropic and voice API) are in it: keep the file safe"
                 if VOICE_CREDENTIAL_NAME in s.secrets else "; the credential is in it: keep the file safe")
    else:
        line += "; the credential left out (--with-secrets puts it in)"
    if s.skipped:
        line += "; left out: " + ", ".join(f"{n} {what}" for what, n in sorted(s.skipped.items()))
    for path in s.removed:
        line += f"\nremoved the older {path.name}"
    return line


def command(cfg: Config, args) -> int:
    """``nanoclaw backup [FILE] [--with-secrets] [--nightly]``."""
    import signal
    # a stop (the target stopped mid-backup) unwinds, so no partial file stays behind
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    kind = "nightly" if args.nightly else (args.kind or "")
    if args.nightly and not cfg.backup.nightly:
        print("nightly backups are off ([backup] nightly = false): nothing done")
        return 0
    if args.file and args.nightly:
        print("nanoclaw: --nightly writes into the backups directory; give no FILE", file=sys.stderr)
        return 2
    try:
        summary = make(cfg, Path(args.file).absolute() if args.file else None,
                       with_secrets=args.with_secrets, kind=kind)
    except (BackupError, OSError) as exc:
        print(f"nanoclaw: backup failed: {exc}", file=sys.stderr)
        return 1
    if kind in backups.KINDS:
        summary.removed = prune(cfg, kind)
    print(report(summary))
    return 0
