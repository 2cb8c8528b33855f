"""A disk that fills, or a database that turns read-only, at each durable write of a message's
way through nanoclaw: the write is kept and retried, the message is answered exactly once, and
the group answers the next message without a restart.

The faults are real ones: the state directory is a small filesystem of its own (tmpfs) that the
test fills until the kernel says ENOSPC, and a read-only database is the kernel's EROFS on each
write of a daemon's database files (injected into that daemon's system calls by strace, since a
filesystem with files open for writing cannot be remounted read-only)."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pytest
from fake_anthropic import prompt_message

from nanoclaw.core.faults import MARK

pytestmark = [pytest.mark.podman,
              pytest.mark.skipif(os.geteuid() != 0, reason="mounts a small filesystem for the state directory")]
FULL_FOR = 12.0  # seconds a disk stays full where the fault's length matters (the runner tries 3 times in 6 s)


class Disk:
    """The state directory on a small filesystem of its own (tmpfs), filled and freed on demand."""

    def __init__(self, path: Path, size: str = "8m") -> None:
        self.path = path
        self.filler = path / "filler"
        path.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)

    def fill(self, leave: int = 0) -> None:
        """Write until the filesystem refuses (ENOSPC), then give ``leave`` bytes back."""
        with open(self.filler, "ab", buffering=0) as f:
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
            if leave:
                f.truncate(max(0, f.tell() - leave))

    def free(self) -> None:
        os.unlink(self.filler)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


class ReadOnlyDatabase:
    """One daemon's database read-only for a moment: every write of the database and its WAL
    (write, pwrite64, fsync, fdatasync, ftruncate) gets EROFS from the kernel, as on a read-only
    filesystem; strace injects it into that process alone, and detaching ends it."""

    SYSCALLS = "write,pwrite64,fsync,fdatasync,ftruncate"

    def __init__(self, s, daemon: str) -> None:
        if shutil.which("strace") is None:
            pytest.skip("strace is not installed")
        self.pid = s.procs[daemon].pid
        db = s.state / "nanoclaw.db"
        self.proc = subprocess.Popen(["strace", "-qq", "-f", "-p", str(self.pid), "-P", str(db), "-P", f"{db}-wal",
                                      "-e", f"trace={self.SYSCALLS}", "-e", f"inject={self.SYSCALLS}:error=EROFS",
                                      "-o", "/dev/null"])
        s.wait_for(lambda: self._tracer() != 0, 10, what="strace attached")

    def _tracer(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("TracerPid:"):
                return int(line.split()[1])
        return 0

    def end(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)
        deadline = time.time() + 10
        while self._tracer() != 0 and time.time() < deadline:
            time.sleep(0.05)


@pytest.fixture
def faulty(make_system, agent_image, podman_service):
    """make(**container): a nanoclaw with the scripted agent whose state directory is an 8 MiB
    filesystem; returns (system, disk)."""
    made = []

    def make(**container):
        s = make_system(container={"image": agent_image, "podman_url": podman_service, "idle_timeout": 2.0,
                                   **container})
        disk = Disk(s.state)
        made.append((s, disk))
        s.cli("groups", "add", "main", "--main")
        s.start()
        return s, disk

    yield make
    for s, disk in made:
        s.stop()
        subprocess.run(["podman", "rm", "-f", "--filter", "label=nanoclaw.job"], capture_output=True)
        disk.umount()


def met_fault(s, daemon: str, worst: int = 3) -> bool:
    """The daemon met the fault: it logged an error (or, with ``worst=4``, a warning), whatever
    it then did about it."""
    return any(int(e.get("PRIORITY", "6")) <= worst for e in s.journal.of(daemon))


def status(s, daemon: str) -> str:
    return s.request(daemon, {"op": "status"})["status"]


def files(d: Path) -> list[str]:
    return sorted(os.listdir(d)) if d.exists() else []


def answered_once(s, text: str, *, agent_failed: bool = False) -> None:
    """``text`` was answered exactly once, by the chat and by the database, and the group still
    answers: a new message is answered (everything before it went through the pipeline).
    Nothing was dropped: no spool file went to bad/, and unless the agent itself failed, its
    first answer was the one sent (no job failed, none was run again)."""
    last = s.barrier(timeout=90)
    replies = s.replies("main@term")
    assert replies.count(text) == 1 and replies[-1] == last, replies
    with s.db() as con:
        assert con.execute("select count(*) from outbox where text = ?", (text,)).fetchone()[0] == 1
        assert con.execute("select count(*) from message where is_bot and text = ?", (text,)).fetchone()[0] == 1
        if not agent_failed:
            assert con.execute("select count(*) from job where status != 'done'").fetchone()[0] <= 1  # the barrier's
            assert con.execute("select count(*) from job where status = 'failed'").fetchone()[0] == 0
    s.wait_for(lambda: s.db().execute("select count(*) from outbox where status != 'sent'").fetchone()[0] == 0,
               10, what="every outbox row marked sent")
    bad = [p for p in (s.state / "spool").rglob("bad/*")]
    assert bad == [], f"dropped to bad/: {bad}"


def test_a_disk_that_fills_mid_turn_does_not_silence_the_group(faulty):
    """Issue 25, as a user's server met it: the disk fills while the agent works on a turn. Its
    write fails and its container exits; the runner's report of that cannot be written either.
    Before: the runner gave the job up after 3 tries, that report was lost too ("Task exception
    was never retrieved"), the job stayed `running` and the group never answered again."""
    s, disk = faulty()
    w = s.watch("main")
    s.send("main", "sleep 3")
    s.wait_for(lambda: s.job_statuses() == ["running"], 30, what="the agent working on the turn")
    disk.fill()
    s.wait_for(lambda: met_fault(s, "runner"), 30, what="the runner meeting the full disk")
    said = status(s, "runner")
    time.sleep(FULL_FOR)  # the fault's own length: longer than the runner's tries to start
    disk.free()
    assert w.reply(90) == "slept 3"
    answered_once(s, "slept 3", agent_failed=True)
    assert "Task exception was never retrieved" not in s.log("runner")
    assert MARK in said


def test_a_full_disk_holds_agents_and_tells_the_chat_once(faulty):
    """Nearly full (below the threshold, room left for small writes): no agent starts, the chat
    is told once while its messages wait, `nanoclaw status` and `doctor` name it; once space is
    freed each message is answered once, and nothing is told twice."""
    s, disk = faulty()
    w = s.watch("main")
    disk.fill(leave=128 * 1024)  # under 5% of 8 MiB
    s.send("main", "first")
    notice = w.reply(30)
    assert "disk is full" in notice and "wait" in notice
    s.send("main", "second")
    s.wait_for(lambda: MARK in s.request("queue", {"op": "status"})["status"], 10, what="the queue saying why")
    status = s.cli("status", check=False).stdout
    assert "disk:     the disk is full" in status and "no agent starts" in status
    doctor = s.cli("doctor", check=False).stdout
    assert "FAIL  disk space: the disk is full" in doctor and "FAIL  queue answers" in doctor
    assert s.job_statuses() == []  # nothing started, nothing failed: the messages wait
    disk.free()
    text = w.reply(60)
    assert text in ("echo: first", "echo: second")
    answered_once(s, "echo: second")
    replies = s.replies("main@term")
    assert replies[0] == notice and sum("disk is full" in r for r in replies) == 1, replies
    with s.db() as con:
        assert con.execute("select count(*) from job where status = 'failed'").fetchone()[0] == 0
    assert "no agent starts" not in s.cli("status", check=False).stdout


def _fill_at_channel(s, disk):
    disk.fill()
    reply = s.request("channel", {"op": "inbound", "group": "main", "text": "hello", "id": "wa-1"})
    assert not reply["ok"] and "the disk is full" in reply["error"], reply
    disk.free()
    s.send("main", "hello", msg_id="wa-1")  # the sender was not acknowledged: it sends again


def _fill_at_queue(s, disk):
    """The queue's own writes: the reply for the router (before its cursor moves), the job's file."""
    s.send("main", "sleep 2")
    s.wait_for(lambda: s.job_statuses() == ["running"], 30, what="the job running")
    s.stop("queue")
    s.wait_for(lambda: files(s.state / "spool" / "queue" / "new"), 30, what="the result waiting for the queue")
    disk.fill()
    s.start("queue")
    s.wait_for(lambda: met_fault(s, "queue"), 30, what="the queue meeting the full disk")
    disk.free()


def _fill_at_runner(s, disk):
    """The runner's report that the container exited (it idles 2 s after its answer)."""
    w = s.watch("main")
    s.send("main", "hello")
    assert w.reply(60) == "echo: hello"
    disk.fill()
    s.wait_for(lambda: met_fault(s, "runner"), 30, what="the runner meeting the full disk")
    said = status(s, "runner")
    time.sleep(FULL_FOR)  # the fault's own length: longer than the runner's tries to start
    assert s.job_statuses() == ["running"]  # the end is not reported yet, nor lost
    disk.free()
    s.wait_for(lambda: s.job_statuses() == ["done"], 30, what="the job's end reported")
    assert MARK in said


def _fill_at_runner_start(s, disk):
    """The runner about to start a job's container: it waits for space (not a try), and the
    chat is told once; before, three tries on the full disk, then the job failed."""
    s.stop("runner")
    s.send("main", "hello")
    s.wait_for(lambda: files(s.state / "spool" / "runner" / "new"), 30, what="the job handed to the runner")
    disk.fill()
    s.start("runner")
    s.wait_for(lambda: met_fault(s, "runner", worst=4), 30, what="the runner meeting the full disk")
    said = status(s, "runner")
    time.sleep(FULL_FOR)  # the fault's own length: longer than the runner's tries to start
    disk.free()
    return said


def _fill_before_it_starts(s, disk, daemon: str, spool: Path, waiting: str):
    """``daemon`` stopped until its work (``waiting``) is in ``spool``, then started on a full
    disk; what its status said there."""
    s.stop(daemon)
    s.send("main", "hello")
    s.wait_for(lambda: files(spool), 60, what=waiting)
    disk.fill()
    s.start(daemon)
    s.wait_for(lambda: met_fault(s, daemon), 30, what=f"the {daemon} meeting the full disk")
    said = status(s, daemon)
    disk.free()
    return said


def _fill_at_ipc(s, disk):
    return _fill_before_it_starts(s, disk, "ipc", s.state / "ipc" / "main" / "out" / "new", "the agent's result")


def _fill_at_router(s, disk):
    return _fill_before_it_starts(s, disk, "router", s.state / "spool" / "router" / "new", "the reply for the router")


@pytest.mark.parametrize("where, answer, container", [
    ("channel", "echo: hello", {}),
    ("queue", "slept 2", {}),
    ("runner_start", "echo: hello", {}),
    ("runner", "echo: hello", {}),
    ("ipc", "echo: hello", {"idle_timeout": 30.0}),
    ("router", "echo: hello", {}),
])
def test_a_disk_full_at_each_write_is_answered_once(faulty, where, answer, container):
    s, disk = faulty(**container)
    w = s.watch("main")
    said = globals()[f"_fill_at_{where}"](s, disk)
    if where != "runner":
        while w.reply(90) != answer:  # a notice may come first
            pass
    answered_once(s, answer)
    notices = [r for r in s.replies("main@term") if "disk is full" in r]
    assert len(notices) == (1 if where == "runner_start" else 0), notices  # told once, where it waited
    if said is not None:  # what the daemon's status said while the disk was full
        assert MARK in said, said


def _read_only_channel(s):
    ro = ReadOnlyDatabase(s, "channel")
    try:
        reply = s.request("channel", {"op": "inbound", "group": "main", "text": "hello", "id": "wa-1"})
        assert not reply["ok"] and "disk" in reply["error"], reply
    finally:
        ro.end()
    s.send("main", "hello", msg_id="wa-1")


def _read_only_while_a_job_runs(s, daemon: str) -> None:
    """A job running, and ``daemon``'s database read-only until the daemon has met it."""
    s.send("main", "sleep 2")
    s.wait_for(lambda: s.job_statuses() == ["running"], 30, what="the job running")
    ro = ReadOnlyDatabase(s, daemon)
    try:
        s.wait_for(lambda: met_fault(s, daemon), 30, what=f"the {daemon} meeting the read-only database")
    finally:
        ro.end()


def _read_only_queue(s):
    """The queue's transaction that moves the cursor past the answered message."""
    _read_only_while_a_job_runs(s, "queue")


def _read_only_router(s):
    ro = ReadOnlyDatabase(s, "router")
    try:
        s.send("main", "hello")
        s.wait_for(lambda: met_fault(s, "router"), 60, what="the router meeting the read-only database")
    finally:
        ro.end()


def _read_only_delivery(s):
    """The channel's record of what it sent (the router sends it again)."""
    _read_only_while_a_job_runs(s, "channel")


@pytest.mark.parametrize("where, answer", [
    ("channel", "echo: hello"), ("queue", "slept 2"), ("router", "echo: hello"), ("delivery", "slept 2")])
def test_a_read_only_database_at_each_write_is_answered_once(faulty, where, answer):
    s, _ = faulty()
    w = s.watch("main")
    globals()[f"_read_only_{where}"](s)
    assert w.reply(90) == answer
    answered_once(s, answer)


def test_the_real_agent_keeps_its_answer_until_the_disk_takes_it(make_system, real_agent_image, podman_service,
                                                                 fake_api):
    """The agent's own write: its turn's result is kept until it can be written, so an answer
    already paid for is neither lost nor asked for again."""
    s = make_system(proxy_upstream=fake_api.url, container={
        "image": real_agent_image, "podman_url": podman_service, "idle_timeout": 2.0, "timeout": 120.0,
        "extra_env": ["CLAUDE_CODE_MAX_RETRIES=0"]})
    disk = Disk(s.state)
    try:
        s.set_credential("sk-ant-api03-TESTSECRET-faults")
        s.cli("groups", "add", "main", "--main")
        s.start()
        fake_api.hold = threading.Event()  # the answer's stream waits mid-way
        w = s.watch("main")
        s.send("main", "hello agent")
        s.wait_for(lambda: fake_api.message_requests(), 120, what="the turn reaching the API")
        disk.fill()
        fake_api.hold.set()

        def agent_met_it() -> bool:  # it says it keeps its result, or it died of the full disk
            logs = subprocess.run(["podman", "logs", "nanoclaw-main-1"], capture_output=True, text=True)
            state = subprocess.run(["podman", "inspect", "--format", "{{.State.Status}}", "nanoclaw-main-1"],
                                   capture_output=True, text=True).stdout.strip()
            return "cannot be written" in logs.stderr or state in ("exited", "")
        s.wait_for(agent_met_it, 60, what="the agent meeting the full disk")
        time.sleep(3)  # the fault's own length
        disk.free()
        assert w.reply(120) == "echo: hello agent"
        answered_once(s, "echo: hello agent")
        asked = [r for r in fake_api.message_requests() if prompt_message(r["body"]) == "hello agent"]
        assert len(asked) == 1, f"the API was asked {len(asked)} times"
    finally:
        s.stop()
        subprocess.run(["podman", "rm", "-f", "--filter", "label=nanoclaw.job"], capture_output=True)
        disk.umount()
