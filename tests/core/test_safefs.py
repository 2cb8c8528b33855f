"""Safe file writes (core/safefs.py)."""

from __future__ import annotations

import os


def test_write_atomic_syncs_the_file_before_it_replaces_the_old_one(tmp_path, monkeypatch):
    """Root installs the timer units it writes: a power cut must not leave an empty unit."""
    from nanoclaw.core.protocol import (
        write_atomic,  # where the timer code takes it from
    )
    events: list[str] = []
    real_fsync, real_rename = os.fsync, os.rename
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "rename", lambda *a, **kw: (events.append("rename"), real_rename(*a, **kw))[1])
    target = tmp_path / "unit.timer"
    target.write_text("old\n")
    write_atomic(target, "new\n", 0o644)
    assert events == ["fsync", "rename", "fsync"]  # the file, the swap, the directory
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o644"
