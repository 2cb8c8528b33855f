"""Spools (core/spool.py): a message's way through new/, cur/ and bad/, and what dead writers left."""

from __future__ import annotations

import os
import time

from nanoclaw.core.protocol import Spool


def test_spool_roundtrip_leftovers_and_reject(tmp_path):
    s = Spool(tmp_path / "q").ensure()
    a = s.put("close", {"job": 1})
    b = s.put("close", {"job": 2})
    assert a.parent == s.new and not list(s.tmp.iterdir())
    claimed = s.claim_new()
    assert [p.name for p in claimed] == [a.name, b.name]  # oldest first
    assert s.leftovers() == claimed  # a restarted consumer would see these
    envs = s.take(claimed)
    assert [e.body["job"] for e in envs] == [1, 2]
    s.done(envs[0].path)
    assert s.leftovers() == [envs[1].path]
    s.reject(envs[1].path, "because")
    assert (s.bad / (b.name + ".reason")).read_text() == "because\n"
    (s.new / "weird name!").write_text("x")
    assert s.claim_new() == []
    assert (s.bad / "weird_name_.reason").exists()


def test_spool_sweeps_what_dead_writers_left_in_tmp(tmp_path):
    """A writer killed between write and rename leaves a file in tmp/: not a message, and
    not to be left there for ever; a live writer's file is never touched."""
    import subprocess
    import sys

    spool = Spool(tmp_path / "q").ensure()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    orphan = spool.tmp / f"01795653236139717333.{dead}.56.job_event"
    orphan.write_text("half")
    mine = spool.tmp / f"01795653236139717334.{os.getpid()}.1.job_event"
    mine.write_text("being written")
    old = time.time() - 5
    os.utime(orphan, (old, old))
    os.utime(mine, (old, old))
    assert spool.sweep_tmp() == 1
    assert not orphan.exists() and mine.exists()
    ancient = time.time() - 2 * 86400
    os.utime(mine, (ancient, ancient))
    assert spool.sweep_tmp() == 1 and not mine.exists()  # a day old: gone whoever wrote it
