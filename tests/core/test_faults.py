"""The one way a refused write is handled (core/faults.py, Spool.put_until_written, the
skeleton's put/spawn), on a real full filesystem: what counts as the disk refusing, that what
it refused is kept in order and written once it can be, and that a background task's failure
is never left unretrieved. The whole pipeline under the same faults: tests/e2e/test_faults.py."""

from __future__ import annotations

import asyncio
import errno
import gc
import logging
import os
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from peewee import OperationalError

from nanoclaw.core import config as config_mod
from nanoclaw.core.faults import low_space, storage_error
from nanoclaw.core.protocol import Spool
from nanoclaw.core.skeleton import Daemon, supervise

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small filesystem")


@pytest.fixture
def tiny(tmp_path):
    """A 1 MiB filesystem, and a way to fill it (returns the filler's path)."""
    d = tmp_path / "tiny"
    d.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(d)], check=True)

    def fill() -> Path:
        filler = d / "filler"
        with open(filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC
        return filler

    yield d, fill
    subprocess.run(["umount", "-l", str(d)], check=False)


def test_what_counts_as_the_disk_refusing_a_write(tmp_path):
    assert storage_error(OSError(errno.ENOSPC, "No space left on device")).startswith("the disk is full")
    assert storage_error(OSError(errno.EROFS, "Read-only file system")).startswith("the disk is read-only")
    assert storage_error(OSError(errno.EIO, "Input/output error")).startswith("the disk failed a write")
    assert storage_error(OperationalError("database or disk is full")).startswith("the disk is full")
    assert storage_error(OperationalError("disk I/O error")).startswith("the disk failed a write")
    # a real read-only database: SQLite's SQLITE_READONLY
    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("create table t (x)").connection.commit()
    con = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as info:
        con.execute("insert into t values (1)")
    assert storage_error(info.value).startswith("the disk is read-only")
    # the Podman API's words for ENOSPC (its errors carry no errno)
    assert storage_error(RuntimeError("creating container storage: no space left on device")) is not None
    # not the disk: a planted link, a missing file, a busy database, a bug
    assert storage_error(OSError(errno.ELOOP, "Too many levels of symbolic links")) is None
    assert storage_error(FileNotFoundError(errno.ENOENT, "No such file")) is None
    assert storage_error(OperationalError("database is locked")) is None
    assert storage_error(KeyError("job")) is None


@root_only
def test_a_nearly_full_disk_is_named_before_it_is_quite_full(tiny):
    d, fill = tiny
    assert low_space(d) is None
    filler = fill()
    assert low_space(d).startswith("the disk is full: 0 B free of 1.0 MiB")
    os.truncate(filler, os.path.getsize(filler) - 32 * 1024)  # under 5%: still too full to start an agent
    assert low_space(d) is not None
    filler.unlink()
    assert low_space(d) is None


@root_only
def test_put_until_written_waits_for_the_disk_and_writes_once(tiny):
    d, fill = tiny
    spool = Spool(d / "spool").ensure()
    filler = fill()
    refusals: list[OSError] = []
    threading.Timer(1.5, filler.unlink).start()  # the space comes back while it waits
    path = spool.put_until_written("outbound", {"key": "k", "chat": "c", "text": "t", "kind": "reply"},
                                   on_refused=refusals.append)
    assert refusals and all(e.errno == errno.ENOSPC for e in refusals)
    assert os.listdir(spool.new) == [path.name] and os.listdir(spool.tmp) == []  # once, nothing half-written
    assert spool.read(path).body["text"] == "t"


@root_only
def test_a_refused_write_is_kept_and_written_later_in_order(tiny, monkeypatch):
    d, fill = tiny
    monkeypatch.setenv("NANOCLAW_STATE_DIR", str(d / "state"))
    daemon = Daemon(config_mod.Config())
    first, second = Spool(d / "one").ensure(), Spool(d / "two").ensure()
    filler = fill()
    done: list[str] = []
    body = {"key": "k", "chat": "c", "text": "t", "kind": "notice"}
    assert daemon.put(first, "outbound", {**body, "key": "a"}, then=lambda: done.append("a")) is False
    assert daemon.fault.startswith("the disk is full")
    assert "WAITING FOR THE DISK: the disk is full" in daemon.status_line()
    filler.unlink()
    # written behind the one kept, although the disk has room now: the order holds
    assert daemon.put(second, "outbound", {**body, "key": "b"}, then=lambda: done.append("b")) is False
    assert len(daemon.held) == 2 and done == []
    assert daemon._after_pass(None) == 0.5  # the pass that met the refusal: the next one soon
    daemon._begin_pass()  # the next pass writes what was kept, first
    assert done == ["a", "b"] and len(daemon.held) == 0
    assert [first.read(first.new / n).body["key"] for n in os.listdir(first.new)] == ["a"]
    assert [second.read(second.new / n).body["key"] for n in os.listdir(second.new)] == ["b"]
    assert daemon._after_pass(None) is None and daemon.fault == ""  # the episode is over
    assert "WAITING FOR THE DISK" not in daemon.status_line()


def test_a_background_tasks_failure_is_logged_and_acted_on(caplog):
    """A failed task is logged with its traceback and handed to its handler, and asyncio never
    has an unretrieved exception to complain of (what the runner's give-up died of)."""
    unretrieved: list[dict] = []
    acted: list[BaseException] = []
    log = logging.getLogger("nanoclaw.test")

    async def boom() -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    async def main() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, ctx: unretrieved.append(ctx))
        task = supervise(asyncio.create_task(boom()), log, "the give-up of job 7", acted.append, job=7)
        await asyncio.sleep(0.05)
        assert task.done()
        del task
        gc.collect()
        await asyncio.sleep(0)

    with caplog.at_level(logging.ERROR):
        asyncio.run(main())
    assert [type(e) for e in acted] == [OSError]
    [record] = [r for r in caplog.records if "the give-up of job 7 failed" in r.getMessage()]
    assert record.exc_info and record.exc_info[0] is OSError
    assert unretrieved == []
