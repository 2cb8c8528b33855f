"""Links, hard links and FIFOs planted where the host writes next: the target outside is untouched.

A container may write into its group folder, its ``ipc/<group>/out`` and its
session directory. Each test plants what an agent could plant there (from a
real container where the agent can reach it, on disk as a finished container
would have left it otherwise) and checks that the file the plant points at,
outside the container's tree, keeps its content, mode and owner.
"""

from __future__ import annotations

import json
import os
import stat
import time
from pathlib import Path

import pytest

from nanoclaw.core.protocol import Spool, unique_name

MARK = "beta's memory: do not touch\n"


def snapshot(path: Path) -> tuple:
    st = os.lstat(path)
    return (path.read_bytes() if stat.S_ISREG(st.st_mode) else None, stat.S_IMODE(st.st_mode), st.st_uid,
            st.st_nlink)


def beta_with_bait(s) -> tuple[Path, dict[str, tuple]]:
    """Group beta's folder with its memory and a file named like a spool file (bait for the
    ipc daemon's claim and sweep), made a day and a half old."""
    s.cli("groups", "add", "beta", "--no-trigger")
    folder = s.state / "groups" / "beta"
    (folder / "CLAUDE.md").write_text(MARK)
    (folder / "CLAUDE.md").chmod(0o600)
    bait = folder / unique_name("result")
    bait.write_text(json.dumps({"v": 1, "type": "result", "body": {"job": 1, "turn": 0, "text": "bait"}}))
    old = time.time() - 1.5 * 86400
    for f in (folder / "CLAUDE.md", bait):
        os.utime(f, (old, old))
    return folder, {p.name: snapshot(p) for p in folder.iterdir()}


@pytest.mark.podman
def test_links_an_agent_plants_in_its_ipc_dirs_are_never_followed(make_system, agent_image, podman_service):
    s = make_system(container={"image": agent_image, "podman_url": podman_service, "idle_timeout": 30.0})
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "alpha", "--no-trigger")
    beta, before = beta_with_bait(s)
    s.start()
    w = s.watch("alpha")
    # 1. The reported attack: a link where the task snapshot used to be written. The snapshot now
    #    lives in in/, which the agent sees read-only; a link in out/ is never a host write target.
    s.send("alpha", f"sh ln -s {beta}/CLAUDE.md /workspace/ipc/in/.tasks.json.tmp; echo in=$?; "
                    f"ln -s {beta}/CLAUDE.md /workspace/ipc/out/.tasks.json.tmp; echo out=$?")
    reply = w.reply(60)
    assert "Read-only file system" in reply and "in=1" in reply and "out=0" in reply, reply
    s.cli("tasks", "add", "alpha", "--every", "1h", "changes the snapshot")
    s.nudge("scheduler")
    tasks_json = s.state / "ipc" / "alpha" / "in" / "tasks.json"
    s.wait_for(lambda: tasks_json.exists() and "changes the snapshot" in tasks_json.read_text(), 20,
               what="the task snapshot in in/")
    # 2. out/new and out/tmp replaced by links into beta's folder, after the agent has answered
    #    (it needs them to answer): the ipc daemon must neither claim beta's files as alpha's
    #    requests nor sweep them as stale temporaries.
    s.send("alpha", "sh (sleep 0.3; cd /workspace/ipc/out && rm -rf new tmp && "
                    f"ln -s {beta} new && ln -s {beta} tmp) >/dev/null 2>&1 &")
    assert w.reply(60).startswith("sh: 0")
    out = s.state / "ipc" / "alpha" / "out"
    s.wait_for(lambda: (out / "new").is_symlink() and (out / "tmp").is_symlink(), 20, what="the planted links")
    s.nudge("ipc")
    s.wait_for(lambda: "new/ refused" in s.log("ipc"), 20, what="the ipc daemon refusing the link")
    s.restart("ipc")  # a fresh ipc daemon makes alpha's directories real again before it claims
    s.wait_for(lambda: "a directory belongs there" in s.log("ipc"), 20, what="the links replaced")
    s.barrier("main")  # the ipc daemon has made passes since (main's answer went through it)
    assert {p.name: snapshot(p) for p in beta.iterdir()} == before
    # 3. The next container of alpha gets real directories again and works.
    s.cli("tasks", "cancel", "1")
    alpha_jobs = ("select j.id from job j join 'group' g on g.id = j.group_id where g.folder = 'alpha' "
                  "and j.status in ('queued', 'running')")
    [(job,)] = s.db().execute(alpha_jobs).fetchall()
    Spool(s.state / "ipc" / "alpha" / "in").put("close", {"job": job})
    s.wait_for(lambda: not s.db().execute(alpha_jobs).fetchone(), 60, what="alpha's container gone")
    s.send("alpha", "after the attack")
    assert w.reply(60) == "echo: after the attack"
    assert not (out / "new").is_symlink() and (out / "new").is_dir()
    assert {p.name: snapshot(p) for p in beta.iterdir()} == before


@pytest.mark.podman
@pytest.mark.skipif(os.geteuid() != 0, reason="agents run under another uid only with rootful Podman")
def test_rootful_hand_over_changes_no_owner_outside_the_group(system, tmp_path):
    """Rootful runs give the agent's uid its directories. Not recursively and never by name:
    a link, a hard link, a FIFO or a directory swapped for a link must change nothing outside."""
    s = system
    s.cli("groups", "add", "alpha", "--no-trigger")
    outside = s.state / "outside"  # same filesystem as the group folder, so a hard link is possible
    outside.mkdir()
    secret, linked, inner = outside / "secret", outside / "linked", outside / "dir"
    for f in (secret, linked):
        f.write_text("root's\n")
        f.chmod(0o600)
    inner.mkdir()
    (inner / "file").write_text("root's too\n")
    folder, session = s.state / "groups" / "alpha", s.state / "sessions" / "alpha"
    session.mkdir(parents=True, exist_ok=True)
    os.symlink(secret, folder / "escape")
    os.link(linked, folder / "hardlink")
    os.mkfifo(folder / "fifo")
    os.symlink(inner, folder / "sub")
    os.symlink(secret, session / "escape")
    before = {p: snapshot(p) for p in (secret, linked, inner, inner / "file")}
    w = s.watch("alpha")
    s.send("alpha", "hello")
    assert w.reply(60) == "echo: hello"
    assert {p: snapshot(p) for p in (secret, linked, inner, inner / "file")} == before
    assert os.stat(folder).st_uid == 1000 and os.stat(folder / "CLAUDE.md").st_uid == 1000  # the hand-over ran


def test_registering_a_group_again_never_writes_through_its_folder(offline_system, tmp_path):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "beta")
    s.cli("groups", "remove", "beta")
    # what beta's last agent (and main's, in global/) could have left behind
    folder, glob = s.state / "groups" / "beta", s.state / "groups" / "global"
    target, victim = tmp_path / "created-by-host", tmp_path / "victim"
    victim.write_text("keep me\n")
    (folder / "CLAUDE.md").unlink()
    os.symlink(target, folder / "CLAUDE.md")  # dangling: a write through it would create it
    (glob / "CLAUDE.md").unlink()
    os.symlink(victim, glob / "CLAUDE.md")
    s.cli("groups", "add", "beta")
    assert not target.exists() and (folder / "CLAUDE.md").is_symlink()
    assert victim.read_text() == "keep me\n" and (glob / "CLAUDE.md").is_symlink()


def test_exposed_spool_moves_and_removes_entries_never_their_targets(tmp_path):
    """The ipc daemon's half of a group's outbox, against every kind of plant."""
    host, out, elsewhere = tmp_path / "host", tmp_path / "out", tmp_path / "elsewhere"
    elsewhere.mkdir()
    victim = elsewhere / "00000000000000000001.1.1.result"
    victim.write_text("someone else's\n")
    old = time.time() - 2 * 86400
    os.utime(victim, (old, old))
    spool = Spool(host, exposed=out).ensure()
    # a hard link and a FIFO in new/, a link to elsewhere's file: read and refused as what they are
    mine = out / "mine"
    mine.write_text("{}")
    os.link(mine, out / "new" / "00000000000000000002.1.1.result")
    os.mkfifo(out / "new" / "00000000000000000003.1.1.result")
    os.symlink(victim, out / "new" / "00000000000000000004.1.1.result")
    envs = spool.take(spool.claim_new())
    assert envs == []
    reasons = sorted(p.read_text() for p in (host / "bad").glob("*.reason"))
    assert reasons == ["has 2 links (a hard link was put there)\n", "is a symbolic link\n",
                       "not a regular file\n"]
    assert victim.read_text() == "someone else's\n"
    # new/ and tmp/ themselves replaced by links: nothing claimed or swept from elsewhere
    for d in ("new", "tmp"):
        (out / d).rmdir()
        os.symlink(elsewhere, out / d)
    assert spool.claim_new() == [] and spool.sweep_tmp() == 0
    assert sorted(os.listdir(elsewhere)) == [victim.name] and victim.read_text() == "someone else's\n"
    # ensure() (the runner, before the next container) makes real directories again
    spool.ensure()
    assert (out / "new").is_dir() and not (out / "new").is_symlink()
    assert victim.exists()
    # a link planted as a stale temporary is removed as a link
    os.symlink(victim, out / "tmp" / "00000000000000000005.1.1.result")
    os.utime(out / "tmp" / "00000000000000000005.1.1.result", (old, old), follow_symlinks=False)
    assert spool.sweep_tmp() == 1 and victim.exists()
