"""The owner's folders cannot be turned against the owner (issue 24, section 4): git's files that
run programs stay read-only in a read-write mount, and a folder swapped for a link while a
container is made never reaches the container."""

from __future__ import annotations

import ctypes
import os
import subprocess
import threading
from pathlib import Path

import pytest
from fake_anthropic import content_text, last_user_content, tool_results

from nanoclaw.core import mounts
from nanoclaw.daemons.runner import binds


def allowlist(confdir: Path, text: str) -> None:
    confdir.mkdir(parents=True, exist_ok=True)
    (confdir / "mount-allowlist.toml").write_text(text)
    (confdir / "mount-allowlist.toml").chmod(0o644)


def owner_git(repo: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """git as the owner runs it in their repository (root owns these test repositories; the agent,
    another uid, may write them, as the README's setfacl advice lets it)."""
    env = {"PATH": os.environ["PATH"], "HOME": str(repo.parent), "GIT_AUTHOR_NAME": "Owner",
           "GIT_AUTHOR_EMAIL": "o@x", "GIT_COMMITTER_NAME": "Owner", "GIT_COMMITTER_EMAIL": "o@x",
           "GIT_CONFIG_NOSYSTEM": "1"}
    return subprocess.run(["git", "-C", str(repo), *args], env=env, check=check, capture_output=True, text=True)


def open_to_agents(path: Path) -> None:
    subprocess.run(["chmod", "-R", "a+rwX", str(path)], check=True)


def make_repo(path: Path) -> Path:
    path.mkdir(parents=True)
    owner_git(path, "init", "-q")
    (path / "README.md").write_text("# demo\n")
    owner_git(path, "add", "README.md")
    owner_git(path, "commit", "-q", "-m", "first")
    open_to_agents(path)
    return path


def snapshot(repo: Path) -> dict[str, bytes]:
    """What git runs from: the config and every hook."""
    git = repo / ".git"
    out = {"config": (git / "config").read_bytes()}
    for hook in sorted((git / "hooks").iterdir()):
        out[f"hooks/{hook.name}"] = hook.read_bytes()
    return out


def test_the_guards_of_a_read_write_folder(tmp_path):
    """Which binds a read-write mount gets: every repository at its top or one level down, each
    .git pinned, its configuration, hooks and commondir read-only; made where missing."""
    top = make_repo(tmp_path / "projects")
    inner = make_repo(tmp_path / "projects" / "site")
    (tmp_path / "projects" / "notes").mkdir()  # not a repository: nothing to guard
    (inner / ".git" / "hooks").rename(inner / ".git" / "hooks-gone")  # git init made one; this one has none
    folder = binds.open_checked(top, "/workspace/extra/p", False, "p")
    guards = binds.git_guards(folder)
    try:
        got = {(b.target, b.read_only) for b in guards}
        for repo in ("/workspace/extra/p", "/workspace/extra/p/site"):
            assert (f"{repo}/.git", False) in got  # pinned: a mount point cannot be renamed away
            for name in ("config", "hooks", "commondir"):
                assert (f"{repo}/.git/{name}", True) in got
        assert ("/workspace/extra/p/site", False) in got  # the inner repository itself is pinned too
        assert not any("notes" in t for t, _ in got)
        assert (inner / ".git" / "hooks").is_dir() and not any((inner / ".git" / "hooks").iterdir())
        assert (top / ".git" / "commondir").read_text() == ".\n"
        assert owner_git(top, "status", "--short").returncode == 0  # "." is this directory to git
    finally:
        binds.close([folder, *guards])
    notes = binds.open_checked(top / "README.md", "/workspace/extra/readme", False, "readme")
    assert binds.git_guards(notes) == []  # a single file has no repository to guard
    binds.close([notes])
    # A link where git's files are cannot be pinned: the mount is refused with the reason.
    (inner / ".git" / "hooks").rmdir()
    (inner / ".git" / "hooks").symlink_to("../../hooks-elsewhere")
    folder = binds.open_checked(top, "/workspace/extra/p", False, "p")
    try:
        with pytest.raises(binds.BindError, match=r"site/\.git/hooks is a symbolic link"):
            binds.git_guards(folder)
    finally:
        binds.close([folder])


def test_a_folder_swapped_for_a_link_after_its_check_is_refused(tmp_path):
    real = tmp_path / "projects" / "box"
    real.mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    checked = binds.open_checked(real.resolve(), "/workspace/extra/box", True, "box")
    binds.close([checked])
    real.rename(tmp_path / "projects" / "box.real")
    real.symlink_to(tmp_path / "secret")
    with pytest.raises(binds.BindError, match="changed after it was checked"):
        binds.open_checked(real, "/workspace/extra/box", True, "box")


def test_allow_git_config_is_for_read_write_mounts_and_names_must_be_whole(offline_system, tmp_path):
    s = offline_system
    (tmp_path / "projects" / "site").mkdir(parents=True)
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\nwrite = true\n')
    s.cli("groups", "add", "family")
    bad = s.cli("groups", "mount", "add", "family", str(tmp_path / "projects" / "site"), "--allow-git-config",
                check=False)
    assert bad.returncode == 2 and "--allow-git-config is for a read-write mount" in bad.stderr
    out = s.cli("groups", "mount", "add", "family", str(tmp_path / "projects" / "site"), "--rw").stdout
    assert "git's configuration and hooks read-only to the agent" in out
    out = s.cli("groups", "mount", "add", "family", str(tmp_path / "projects" / "site"), "--as", "open", "--rw",
                "--allow-git-config").stdout
    assert "git's configuration and hooks too" in out
    assert "rw, git config writable" in s.cli("groups", "mount", "list", "family").stdout
    with pytest.raises(mounts.MountError, match="invalid mount name"):
        mounts.validate_name("site\n")  # `$` would have let the newline through


@pytest.mark.podman
def test_an_agent_cannot_make_the_owners_git_run_its_program(make_agent_system, fake_api, tmp_path):
    """The attack of issue 24 with the real agent image: core.fsmonitor in .git/config, a
    pre-commit hook, a .git/commondir leading to a config of its own, .git moved away and
    replaced. Each fails in the container; the owner's git runs nothing of the agent's; the
    agent can still commit."""
    repo = make_repo(tmp_path / "projects" / "demo")
    before = snapshot(repo)
    s = make_agent_system()
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\nwrite = true\n')
    s.cli("groups", "mount", "add", "main", str(repo), "--rw")
    pwned = tmp_path / "projects" / "demo"
    attack = (
        "cd /workspace/extra/demo; "
        "printf '[core]\\n\\tfsmonitor = touch PWNED-fsmonitor; false\\n' >> .git/config; echo config=$?; "
        "git -c safe.directory='*' config core.fsmonitor 'touch PWNED-fsmonitor; false'; echo gitconfig=$?; "
        "printf '#!/bin/sh\\ntouch PWNED-hook\\n' > .git/hooks/pre-commit; echo hook=$?; "
        "mkdir -p evil/objects evil/refs && printf '[core]\\n\\tfsmonitor = touch PWNED-commondir; false\\n' "
        "> evil/config; echo ../../evil > .git/commondir; echo commondir=$?; "
        "mv .git .git-moved; echo move=$?; "
        "echo more >> README.md && git -c safe.directory='*' -c user.name=Agent -c user.email=a@x "
        "commit -qam 'by the agent'; echo commit=$?")
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "attack", "command": attack}}})
    w = s.watch("main")
    s.send("main", "tidy my repository")
    assert w.reply(120) == "tool done"
    result = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[0]["content"])
    for refused in ("config", "gitconfig", "hook", "commondir", "move"):
        assert f"{refused}=0" not in result, result
    assert "commit=0" in result, result  # the rest of .git is the agent's to use
    # The owner's side: nothing the agent wrote runs when the owner uses git there.
    assert snapshot(repo) == before
    assert (repo / ".git" / "commondir").read_text() == ".\n"
    assert owner_git(repo, "log", "-1", "--format=%s").stdout.strip() == "by the agent"
    (repo / "owner.txt").write_text("x\n")
    owner_git(repo, "status")
    owner_git(repo, "add", "owner.txt")
    owner_git(repo, "commit", "-q", "-m", "by the owner")
    assert not list(pwned.glob("PWNED-*")), list(pwned.glob("PWNED-*"))


@pytest.mark.podman
def test_the_owner_may_let_the_agent_change_git_config(make_agent_system, fake_api, tmp_path):
    repo = make_repo(tmp_path / "projects" / "demo")
    s = make_agent_system()
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\nwrite = true\n')
    s.cli("groups", "mount", "add", "main", str(repo), "--rw", "--allow-git-config")
    fake_api.then({"tool_use": {"name": "Bash", "input": {
        "description": "configure",
        "command": "cd /workspace/extra/demo && git -c safe.directory='*' config user.name Agent; echo config=$?"}}})
    w = s.watch("main")
    s.send("main", "set your name in my repository")
    assert w.reply(120) == "tool done"
    assert owner_git(repo, "config", "user.name").stdout.strip() == "Agent"


# -- check, then mount: the race --------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
RENAME_EXCHANGE = 2
AT_FDCWD = -100


def exchange(a: Path, b: Path) -> None:
    """Swap two names in one step (renameat2 RENAME_EXCHANGE), as an agent with a read-write
    mount of their folder can."""
    if _libc.renameat2(AT_FDCWD, bytes(a), AT_FDCWD, bytes(b), RENAME_EXCHANGE) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@pytest.mark.podman
def test_a_folder_swapped_for_a_link_while_containers_start_never_brings_the_secret_in(make_system, agent_image,
                                                                                         podman_service, tmp_path):
    """A thread swaps the mounted folder and a link to a fake ~/.ssh as fast as it can while
    three groups' containers start one after another: the key never reaches a container, and
    some containers did get the real folder (the race was there to be lost)."""
    secret = "SECRET-KEY-" + os.urandom(6).hex()
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text(secret + "\n")
    box = tmp_path / "projects" / "box"
    box.mkdir(parents=True)
    (box / "project.txt").write_text("the real project\n")
    swap = tmp_path / "projects" / "box.swap"
    swap.symlink_to(home / ".ssh")
    for d in (tmp_path, home, home / ".ssh", box.parent, box):
        d.chmod(0o755)  # the agent's uid could read the key if it were mounted: the test can fail
    s = make_system(container={"image": agent_image, "podman_url": podman_service, "idle_timeout": 0.5},
                    max_concurrent=3, max_attempts=2)
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\nwrite = true\n')
    groups = ["g1", "g2", "g3"]
    for g in groups:
        s.cli("groups", "add", g, "--no-trigger")
        s.cli("groups", "mount", "add", g, str(box), "--as", "box")
    s.start()
    watchers = {g: s.watch(g) for g in groups}

    def round_of_starts() -> list[str]:
        for g in groups:
            s.send(g, "sh cat /workspace/extra/box/* 2>&1")
        said = [watchers[g].reply(120) for g in groups]
        s.wait_idle()
        return said

    calm = round_of_starts()  # no race yet: each group's agent reads the real folder
    assert all("the real project" in a for a in calm), calm
    stop = threading.Event()
    swaps = [0]

    def racer() -> None:
        while not stop.is_set():
            exchange(box, swap)
            swaps[0] += 1

    thread = threading.Thread(target=racer, daemon=True)
    thread.start()
    answers: list[str] = []
    try:
        for _ in range(8):
            answers += round_of_starts()
    finally:
        stop.set()
        thread.join()
        for w in watchers.values():
            w.close()
    caught = [e for e in s.journal.of("runner") if "removed before it ran" in e["MESSAGE"]]
    real = sum("the real project" in a for a in answers)
    print(f"{swaps[0]} swaps; {len(answers)} starts: {real} got the real folder, {sum(secret in a for a in answers)} "
          f"the key, {len(answers) - real} neither (the swap seen at the check, or a container removed before it "
          f"ran: {len(caught)} times)")
    assert swaps[0] > 1000
    leaked = [a for a in answers if secret in a]
    assert not leaked, leaked
    for g in groups:  # nor did it land anywhere an agent could have put it
        for path in (s.state / "groups" / g).rglob("*"):
            assert not path.is_file() or secret not in path.read_text(errors="replace")
