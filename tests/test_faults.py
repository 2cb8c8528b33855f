"""A disk that fills, or a database that turns read-only, at each durable write of a message's
way through nanoclaw: the write is kept and retried, and the message is answered exactly once."""

from __future__ import annotations

import errno
import os
import subprocess
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.podman,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small filesystem for the state directory")]


FULL_FOR = 12.0  # seconds a disk stays full in the tests where its length matters


class Disk:
    """The state directory on a small filesystem of its own (tmpfs), filled and freed on demand."""

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = path
        self.filler = path / "filler"
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def fill(self) -> None:
        """Write until the filesystem refuses (ENOSPC): every block is taken."""
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc

    def free(self) -> None:
        os.unlink(self.filler)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(make_system, agent_image, podman_service):
    """A nanoclaw with the scripted agent whose state directory is an 8 MiB filesystem."""
    s = make_system(container={"image": agent_image, "podman_url": podman_service, "idle_timeout": 2.0})
    disk = Disk(s.state)
    try:
        s.cli("groups", "add", "main", "--main")
        s.start()
        yield s, disk
    finally:
        s.stop()
        subprocess.run(["podman", "rm", "-f", "--filter", "label=nanoclaw.job"], capture_output=True)
        disk.umount()


def job_status(s) -> list[str]:
    with s.db() as con:
        return [r[0] for r in con.execute("select status from job order by id")]


def test_a_disk_that_fills_mid_turn_does_not_silence_the_group(small_disk):
    """Issue 25, as a user's server met it: the disk fills while the agent works on a turn. Its
    write fails and its container exits; nothing may be lost for good, and once space is freed
    the message is answered (once) and the group answers new messages without a restart."""
    s, disk = small_disk
    w = s.watch("main")
    s.send("main", "sleep 3")
    s.wait_for(lambda: job_status(s) == ["running"], 30, what="the agent working on the turn")
    disk.fill()
    s.wait_for(lambda: "disk" in s.log("runner"), 30, what="the runner meeting the full disk")
    time.sleep(FULL_FOR)  # the fault's own length: longer than the runner's tries to start
    disk.free()
    assert w.reply(90) == "slept 3"
    last = s.barrier(timeout=60)
    replies = s.replies("main@term")
    assert replies.count("slept 3") == 1 and replies[-1] == last, replies
