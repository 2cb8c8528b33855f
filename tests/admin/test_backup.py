"""nanoclaw backup and restore: a running system's state round-trips; restore refuses a
running service, an archive of a newer schema and every entry that would escape or plant."""

from __future__ import annotations

import io
import json
import os
import sqlite3
import stat
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from nanoclaw.core import migrations


def rows(db: Path) -> dict:
    """Every row of every table, and the schema version."""
    con = sqlite3.connect(db)
    try:
        tables = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        return {"version": migrations.version(con),
                **{t: sorted(map(repr, con.execute(f'SELECT * FROM "{t}"'))) for t in tables}}
    finally:
        con.close()


def tree(root: Path) -> dict[str, tuple]:
    """What is below ``root``, as an owner would compare it: kind, mode, content or link target
    (an SQLite file by its rows: a snapshot is the same data in other bytes)."""
    out: dict[str, tuple] = {}
    if not root.exists():
        return out
    for path in sorted(root.rglob("*")):
        rel, st = str(path.relative_to(root)), path.lstat()
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("dir", mode)
        elif stat.S_ISFIFO(st.st_mode):
            out[rel] = ("fifo",)
        elif path.name.endswith(".db"):
            out[rel] = ("sqlite", mode, json.dumps(rows(path)))
        else:
            out[rel] = ("file", mode, path.read_bytes())
    return out


def archive_of(out: str) -> Path:
    return Path(out.split("backed up to ", 1)[1].split(" (", 1)[0])


def whatsapp_session(state: Path) -> None:
    """A WhatsApp store as the channel keeps one: an SQLite file, and the sent ids."""
    wa = state / "whatsapp"
    wa.mkdir(mode=0o700, exist_ok=True)
    con = sqlite3.connect(wa / "session.db")
    con.execute("PRAGMA journal_mode = WAL")
    con.execute("CREATE TABLE device (jid TEXT, keys BLOB)")
    con.execute("INSERT INTO device VALUES ('4917012345@s.whatsapp.net', x'00ff10')")
    con.commit()
    con.close()
    (wa / "sent-ids").write_text("3EB0A1\n3EB0A2\n")


def idle(s) -> None:
    """No job queued or running, nothing waiting to be sent: the database holds still."""
    def quiet() -> bool:
        with s.db() as con:
            return (con.execute("SELECT count(*) FROM job WHERE status IN ('queued', 'running')").fetchone()[0] == 0
                    and con.execute("SELECT count(*) FROM outbox WHERE status = 'pending'").fetchone()[0] == 0)
    s.wait_for(quiet, 60, what="the system idle")


@pytest.mark.podman
def test_backup_and_restore_round_trip_a_running_systems_state(system):
    s = system
    s.cli("groups", "add", "family", "--no-trigger", "--name", "Family")
    s.cli("agents", "add", "family", "researcher", "--description", "finds things", "--instructions", "Find.")
    s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "brief me")
    s.cli("budget", "set", "family", "day", "2")
    (s.confdir / "allowlists").mkdir()
    (s.confdir / "allowlists" / "family.json").write_text('{"senders": ["carol@s.whatsapp.net"]}\n')
    whatsapp_session(s.state)
    with s.db() as con:
        con.execute("INSERT INTO usage (at, day, \"group\", agent, model, input_tokens, output_tokens, "
                    "cache_write_tokens, cache_read_tokens, cost_usd, streamed) VALUES "
                    "(1, '2026-12-01', 'main', '', 'claude-sonnet-4-5', 10, 5, 0, 0, 0.0001, 1)")
        con.execute("INSERT INTO allowedsender (group_id, sender, added_at) SELECT id, 'dave@s.whatsapp.net', 1 "
                    "FROM \"group\" WHERE folder = 'family'")
    # The agent writes its memory, and plants what a hostile one would, from inside its container.
    w = s.watch("main")
    s.send("main", "sh echo remembered >> CLAUDE.md && ln -s /etc/hostname planted && mkfifo pipe && "
                   "ln CLAUDE.md hardlinked && mkdir -p notes && echo kept > notes/n.txt && "
                   "echo session-state > /workspace/session/state.json")
    assert w.reply(60).startswith("sh: 0:")
    w.close()
    s.barrier("main")
    idle(s)
    state_areas = ("groups", "sessions", "whatsapp")
    before = rows(s.state / "nanoclaw.db")
    files = {a: tree(s.state / a) for a in state_areas}
    config = tree(s.confdir)
    assert files["groups"]["main/planted"] == ("link", "/etc/hostname")
    assert files["groups"]["main/pipe"] == ("fifo",)

    made = s.cli("backup")  # every daemon running
    archive = archive_of(made.stdout)
    assert "database" in made.stdout and "left out: 1 FIFO" in made.stdout and "credential left out" in made.stdout
    assert stat.S_IMODE(archive.stat().st_mode) == 0o600

    # What happens after the backup, which the restore must take back.
    assert s.barrier("main").startswith("echo: barrier")
    (s.state / "groups" / "main" / "CLAUDE.md").write_text("overwritten\n")
    s.cli("groups", "add", "later")
    refused = s.cli("restore", str(archive), check=False)
    assert refused.returncode == 2 and "stop it first" in refused.stderr
    assert tree(s.state / "groups")["main/CLAUDE.md"][2] == b"overwritten\n"  # nothing restored

    s.stop()
    done = s.cli("restore", str(archive))
    assert f"restored {archive}" in done.stdout and "unpacked" in done.stdout
    assert f"schema {migrations.LATEST}, 2 group(s)" in done.stdout and "what it replaced is kept in" in done.stdout
    assert rows(s.state / "nanoclaw.db") == before
    expected = dict(files)
    expected["groups"] = {k: v for k, v in files["groups"].items() if k != "main/pipe"}  # FIFOs are not kept
    assert {a: tree(s.state / a) for a in state_areas} == expected
    assert {k: v for k, v in tree(s.confdir).items() if not k.startswith("restore-replaced-")} == config
    assert os.readlink(s.state / "groups" / "main" / "planted") == "/etc/hostname"  # a link, never its target
    replaced = next(s.state.glob("restore-replaced-*"))
    assert (replaced / "groups" / "main" / "CLAUDE.md").read_text() == "overwritten\n"  # kept aside

    s.start()  # the restored state answers, once
    answered = len(s.replies("main@term"))
    s.barrier("main")
    assert len(s.replies("main@term")) == answered + 1


def _member(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, link, 0o644
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


def rewrite(src: Path, dest: Path, *, manifest: dict | None = None, extra: list[tuple] = ()) -> Path:
    """A copy of the backup ``src``, its manifest changed and ``extra`` entries added."""
    with tarfile.open(src, "r:gz") as tin, tarfile.open(dest, "w:gz", format=tarfile.PAX_FORMAT) as tout:
        for m in tin.getmembers():
            data = tin.extractfile(m).read() if m.isreg() else None
            if m.name == "MANIFEST.json" and manifest is not None:
                data = json.dumps({**json.loads(data), **manifest}).encode()
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
        for info, data in extra:
            tout.addfile(info, io.BytesIO(data) if data is not None else None)
    return dest


@pytest.fixture
def stopped(offline_system):
    """An installed nanoclaw, stopped, with a backup of it."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    (s.state / "groups" / "main" / "notes.md").write_text("mine\n")
    s.archive = archive_of(s.cli("backup").stdout)
    return s


def test_restore_refuses_an_archive_from_a_newer_schema(stopped, tmp_path):
    s = stopped
    newer = rewrite(s.archive, tmp_path / "newer.tar.gz",
                    manifest={"schema": migrations.LATEST + 1, "nanoclaw": "9.9.9", "commit": "feedc0ffee12"})
    before = (rows(s.state / "nanoclaw.db"), tree(s.state))
    r = s.cli("restore", str(newer), check=False)
    assert r.returncode == 2
    assert f"at schema {migrations.LATEST + 1}, newer than this nanoclaw" in r.stderr
    assert f"(schema {migrations.LATEST})" in r.stderr and "9.9.9, commit feedc0ffee12" in r.stderr
    assert (rows(s.state / "nanoclaw.db"), tree(s.state)) == before


# Each: the entries added to a good backup (``outside``: a directory beside the state).
HOSTILE = {
    "absolute": lambda outside: [_member("/tmp/nanoclaw-escape-abs")],
    "dotdot": lambda outside: [_member("state/groups/main/../../../nanoclaw-escape-dotdot")],
    "dotdot at the top": lambda outside: [_member("../nanoclaw-escape-top")],
    "hard link": lambda outside: [_member("state/groups/main/h", tarfile.LNKTYPE, link="/etc/passwd")],
    "below a link": lambda outside: [_member("state/groups/main/out", tarfile.SYMTYPE, link=str(outside)),
                                     _member("state/groups/main/out/planted")],
    "link outside the agents' trees": lambda outside: [
        _member("config/mount-allowlist.toml", tarfile.SYMTYPE, link="/etc/shadow")],
    "a whatsapp link": lambda outside: [_member("state/whatsapp/session.db", tarfile.SYMTYPE, link=str(outside))],
    "a FIFO": lambda outside: [_member("state/groups/main/fifo", tarfile.FIFOTYPE)],
    "a device": lambda outside: [_member("state/groups/main/dev", tarfile.CHRTYPE)],
    "a spool file": lambda outside: [_member("state/spool/queue/new/x")],
    "a second database": lambda outside: [_member("state/nanoclaw.db", data=b"not sqlite")],
    "another credential": lambda outside: [_member("config/credentials/other")],
    "below a credential's name": lambda outside: [_member("config/credentials/voice-api-credential/x")],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_restore_refuses_hostile_entries_and_writes_nothing(stopped, tmp_path, case):
    s = stopped
    outside = tmp_path / "outside"
    outside.mkdir()
    hostile = rewrite(s.archive, tmp_path / "hostile.tar.gz", extra=HOSTILE[case](outside))
    before = (rows(s.state / "nanoclaw.db"), tree(s.state), tree(s.confdir))
    r = s.cli("restore", str(hostile), check=False)
    assert r.returncode == 2 and "refusing to restore" in r.stderr and "nothing was restored" in r.stderr, r.stderr
    assert (rows(s.state / "nanoclaw.db"), tree(s.state), tree(s.confdir)) == before  # no staging left either
    assert list(outside.iterdir()) == []
    for escaped in ("/tmp/nanoclaw-escape-abs", s.state.parent / "nanoclaw-escape-dotdot",
                    s.state.parent / "nanoclaw-escape-top"):
        assert not os.path.lexists(escaped)


def test_a_damaged_archive_or_a_database_that_is_not_one_restores_nothing(stopped, tmp_path):
    s = stopped
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(s.archive.read_bytes()[:3000])
    with tarfile.open(s.archive) as tin:
        members = [(m, tin.extractfile(m).read() if m.isreg() else None) for m in tin.getmembers()]
    with tarfile.open(tmp_path / "notadb.tar.gz", "w:gz") as tout:
        for m, data in members:
            if m.name == "state/nanoclaw.db":
                data = b"not a database " * 100
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    before = (rows(s.state / "nanoclaw.db"), tree(s.state), tree(s.confdir))
    for archive, why in ((cut, "cannot be read"), (tmp_path / "notadb.tar.gz", "not a database")):
        r = s.cli("restore", str(archive), check=False)
        assert r.returncode in (1, 2) and why in r.stderr and "nothing was restored" in r.stderr, r.stderr
        assert (rows(s.state / "nanoclaw.db"), tree(s.state), tree(s.confdir)) == before


def test_extraction_itself_never_writes_through_a_link_the_archive_made(tmp_path):
    """Below the entry checks, the writing: a link made from the archive and a file below it
    (as a check that missed it would let through) fails on the link, writing nothing outside."""
    from nanoclaw.admin.restore import _extract
    from nanoclaw.core.safefs import UnsafeEntry
    outside = tmp_path / "outside"
    outside.mkdir()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for info, data in (_member("state/groups/x", tarfile.SYMTYPE, link=str(outside)),
                           _member("state/groups/x/planted")):
            tar.addfile(info, io.BytesIO(data) if data else None)
    buf.seek(0)
    staging = tmp_path / "staging"
    staging.mkdir()
    with tarfile.open(fileobj=buf) as tar, pytest.raises(UnsafeEntry):
        _extract(tar, tar.getmembers(), staging, "state")
    assert list(outside.iterdir()) == []


def test_the_credential_only_with_secrets_and_back_with_its_mode(stopped, tmp_path):
    s = stopped
    secret = "sk-ant-api03-BACKUPTEST-" + os.urandom(6).hex()
    cred = s.set_credential(secret)
    plain = s.cli("backup", str(tmp_path / "plain.tar.gz"))
    secrets = s.cli("backup", "--with-secrets", str(tmp_path / "secrets.tar.gz"))
    assert secret not in plain.stdout + secrets.stdout and "the credential is in it" in secrets.stdout
    for name, has in (("plain", False), ("secrets", True)):
        path = tmp_path / f"{name}.tar.gz"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with tarfile.open(path) as tar:
            names = tar.getnames()
            assert ("config/credentials/anthropic-credential" in names) == has
            assert not any("credentials" in n for n in names) or has
            if has:
                assert tar.extractfile("config/credentials/anthropic-credential").read().decode().strip() == secret
    cred.unlink()
    r = s.cli("restore", str(tmp_path / "secrets.tar.gz"))
    assert "with the credential" in r.stdout
    assert cred.read_text().strip() == secret and stat.S_IMODE(cred.stat().st_mode) == 0o600
    s.cli("restore", str(tmp_path / "plain.tar.gz"))  # (often within the same second as the one before)
    assert cred.read_text().strip() == secret  # an archive without it leaves the one in place
    assert len(list(s.state.glob("restore-replaced-*"))) == 2


def test_the_voice_api_key_goes_with_the_secrets_and_back(stopped, tmp_path):
    """`--with-secrets` carries the voice API's key too when one is set, and restore puts it back
    (0600); without `--with-secrets` neither key is in the archive."""
    s = stopped
    secret = "sk-ant-api03-BACKUPTEST-" + os.urandom(6).hex()
    voice_secret = "sk-voice-BACKUPTEST-" + os.urandom(6).hex()
    s.set_credential(secret)
    voice = s.confdir / "credentials" / "voice-api-credential"
    voice.write_text(voice_secret + "\n")
    voice.chmod(0o600)
    plain = s.cli("backup", str(tmp_path / "plain.tar.gz"))
    secrets = s.cli("backup", "--with-secrets", str(tmp_path / "secrets.tar.gz"))
    assert voice_secret not in plain.stdout + secrets.stdout
    assert "the credentials (Anthropic and voice API) are in it" in secrets.stdout
    with tarfile.open(tmp_path / "plain.tar.gz") as tar:
        assert not any("credentials" in n for n in tar.getnames())
    with tarfile.open(tmp_path / "secrets.tar.gz") as tar:
        assert tar.extractfile("config/credentials/voice-api-credential").read().decode().strip() == voice_secret
    voice.unlink()
    s.cli("restore", str(tmp_path / "secrets.tar.gz"))
    assert voice.read_text().strip() == voice_secret and stat.S_IMODE(voice.stat().st_mode) == 0o600


def test_restore_of_an_older_schema_migrates_it(stopped, tmp_path, previous_release):
    """A backup of the previous release's database (schema 0) is restored and migrated."""
    from old_release import old_code
    s = stopped
    old_db = tmp_path / "old.db"
    old_code(previous_release, old_db, "fill")
    with tarfile.open(s.archive) as tin:
        members = [(m, tin.extractfile(m).read() if m.isreg() else None) for m in tin.getmembers()]
    with tarfile.open(tmp_path / "old.tar.gz", "w:gz") as tout:
        for m, data in members:
            if m.name == "MANIFEST.json":
                data = json.dumps({**json.loads(data), "schema": 0}).encode()
            elif m.name == "state/nanoclaw.db":
                data = old_db.read_bytes()
            if data is not None:
                m.size = len(data)
            tout.addfile(m, io.BytesIO(data) if data is not None else None)
    r = s.cli("restore", str(tmp_path / "old.tar.gz"))
    assert "schema 0 -> 1" in r.stdout and f"from schema 0 to {migrations.LATEST}" in r.stdout
    assert migrations.version_of(s.state / "nanoclaw.db") == migrations.LATEST
    assert "family" in s.cli("groups", "list").stdout


def test_the_nightly_backup_is_a_crontab_line_without_systemd_and_keeps_the_newest(make_system):
    s = make_system(backup={"keep": 2})
    s.cli("groups", "add", "main", "--main")
    mine = archive_of(s.cli("backup").stdout)  # the owner's own: never pruned
    s.start("scheduler")
    tab = s.base / "crontab"
    s.wait_for(lambda: tab.exists() and "# nanoclaw-backup" in tab.read_text(), 15, what="the backup's line")
    line = next(li for li in tab.read_text().splitlines() if li.endswith("# nanoclaw-backup"))
    assert line.startswith("30 3 * * * ") and "backup --nightly" in line
    command = line.split(" ", 5)[5].rsplit(" #", 1)[0]
    for _ in range(3):
        subprocess.run(command, shell=True, env=s.env, check=True, capture_output=True)
    nightly = sorted((s.state / "backups").glob("*-nightly.tar.gz"))
    assert len(nightly) == 2 and mine.exists()
    s.stop("scheduler")
    s.config_path.write_text(s.config_path.read_text().replace("[backup]", "[backup]\nnightly = false"))
    s.start("scheduler")
    s.wait_for(lambda: "nanoclaw-backup" not in tab.read_text(), 15, what="the line removed")
    off = subprocess.run(command, shell=True, env=s.env, capture_output=True, text=True)
    assert "nightly backups are off" in off.stdout and len(list((s.state / "backups").glob("*-nightly*"))) == 2


def test_a_backup_killed_midway_leaves_nothing_that_looks_like_one(stopped):
    """SIGTERM (the target stopped during a nightly run): no file with a backup's name stays."""
    s = stopped
    big = s.state / "groups" / "main" / "big.bin"
    big.write_bytes(os.urandom(40 << 20))  # incompressible: the archive takes a while
    proc = subprocess.Popen([sys.executable, "-m", "nanoclaw", "backup", "--nightly"], env=s.env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    s.wait_for(lambda: list((s.state / "backups").glob(".*.partial")), 30, interval=0.01, what="the partial file")
    proc.terminate()
    proc.wait(30)
    assert list((s.state / "backups").glob("*-nightly.tar.gz")) == []
    assert list((s.state / "backups").glob(".*")) == []


def test_as_root_the_database_is_opened_only_as_the_states_owner(make_system, previous_release):
    """`sudo nanoclaw backup|restore` on a state another user owns: the snapshots, the check and
    the migration run as that user, and what restore writes is that user's, so no database
    journal or restored file is root's."""
    import shutil
    import tempfile
    if os.geteuid() != 0:
        pytest.skip("needs root, as `sudo nanoclaw restore` is")
    from old_release import old_code
    uid = gid = 65534  # nobody: any user not root
    base = Path(tempfile.mkdtemp(prefix="nc-owner-", dir="/var/tmp"))  # traversable by that user
    try:
        base.chmod(0o755)
        s = make_system()
        s.state = base / "state"
        s.env["NANOCLAW_STATE_DIR"] = str(s.state)
        s.cli("groups", "add", "main", "--main")
        old_code(previous_release, base / "old.db", "fill")  # a previous release's database, restored below
        for path in [s.state, *s.state.rglob("*")]:
            os.chown(path, uid, gid, follow_symlinks=False)
        from nanoclaw.admin.owner import as_owner_of

        def refuse() -> None:
            raise migrations.SchemaError("newer", 2, 1)

        assert as_owner_of(s.state, os.geteuid) == uid and os.geteuid() == 0  # a child that became the owner
        with pytest.raises(migrations.SchemaError, match="newer"):  # and its failures come back as they were
            as_owner_of(s.state, refuse)
        made = s.cli("backup")
        archive = archive_of(made.stdout)
        with tarfile.open(archive) as tin:
            members = [(m, tin.extractfile(m).read() if m.isreg() else None) for m in tin.getmembers()]
        older = base / "older.tar.gz"
        with tarfile.open(older, "w:gz") as tout:
            for m, data in members:
                if m.name == "MANIFEST.json":
                    data = json.dumps({**json.loads(data), "schema": 0}).encode()
                elif m.name == "state/nanoclaw.db":
                    data = (base / "old.db").read_bytes()
                if data is not None:
                    m.size = len(data)
                tout.addfile(m, io.BytesIO(data) if data is not None else None)
        done = s.cli("restore", str(older))
        assert "migrated the restored database from schema 0" in done.stdout
        replaced = next(s.state.glob("restore-replaced-*"))
        kept = [replaced, *replaced.rglob("*"), s.state / "backups", *(s.state / "backups").iterdir()]
        owned = {str(p.relative_to(s.state)): p.lstat().st_uid for p in [s.state, *s.state.rglob("*")] if p not in kept}
        assert set(owned.values()) == {uid}, {p: u for p, u in owned.items() if u != uid}
        assert migrations.version_of(s.state / "nanoclaw.db") == migrations.LATEST
    finally:
        shutil.rmtree(base, ignore_errors=True)
