"""The owner's folders in agents' containers: the allowlist's rules, the CLI, and a real agent
(real SDK and CLI against the fake Messages API) working on a mounted git repository."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from fake_anthropic import content_text, last_user_content, tool_results

from nanoclaw.core import config as config_mod
from nanoclaw.core import mounts


def allowlist(confdir: Path, text: str) -> Path:
    confdir.mkdir(parents=True, exist_ok=True)
    path = confdir / "mount-allowlist.toml"
    path.write_text(text)
    path.chmod(0o644)
    return path


@pytest.fixture
def home(tmp_path) -> tuple[config_mod.Config, Path]:
    """A home folder with projects and secrets, and a configuration whose allowlist names projects/."""
    cfg = config_mod.Config(state_dir=tmp_path / "state", runtime_dir=tmp_path / "run", config_dir=tmp_path / "etc")
    home = tmp_path / "home"
    for d in ("projects/site/src", "projects/app/.git", ".ssh", "projects/keys", "photos"):
        (home / d).mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret\n")
    (home / "projects" / "keys" / "server.pem").write_text("secret\n")
    (home / "projects" / "site" / "index.html").write_text("<h1>hi</h1>\n")
    os.symlink(home / ".ssh", home / "projects" / "shortcut")
    allowlist(cfg.config_dir, 'blocked = ["*.key"]\n\n'  # before the tables: TOML keys after [[root]] are its own
                              f'[[root]]\npath = "{home}/projects"\nwrite = true\n\n[[root]]\npath = "{home}/photos"\n')
    return cfg, home


def test_an_allowed_folder_resolves_and_the_rest_is_refused_with_the_reason(home):
    cfg, h = home
    assert mounts.check(cfg, f"{h}/projects/site", rw=True) == (h / "projects" / "site").resolve()
    assert mounts.check(cfg, f"{h}/photos", rw=False) == (h / "photos").resolve()
    cases = [
        (f"{h}/projects/shortcut", False, "'.ssh' never reaches an agent"),  # a link into ~/.ssh
        (f"{h}/projects/site/../../.ssh", False, ".ssh"),  # .. resolved first
        (f"{h}/.ssh", False, "blocked"),
        (f"{h}/projects/keys/server.pem", False, "'*.pem'"),
        (f"{h}/projects/keys", False, "contains server.pem"),  # a folder holding a secret
        (f"{h}", False, "under no allowed root"),
        (f"{h}/photos", True, "read only"),  # the root allows reading only
        (f"{h}/projects/nothing-here", False, "No such file"),
        ("projects/site", False, "not an absolute path"),
        (str(cfg.state_dir), False, "overlaps nanoclaw's own"),
    ]
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    for path, rw, reason in cases:
        with pytest.raises(mounts.MountError, match=reason.replace("*", r"\*").replace(".", r"\.")):
            mounts.check(cfg, path, rw)


def test_nanoclaws_own_directories_are_refused_even_under_an_allowed_root(tmp_path):
    state = tmp_path / "srv" / "nanoclaw-state"
    state.mkdir(parents=True)
    cfg = config_mod.Config(state_dir=state, runtime_dir=tmp_path / "run", config_dir=tmp_path / "etc")
    allowlist(cfg.config_dir, f'[[root]]\npath = "{tmp_path}/srv"\n')
    with pytest.raises(mounts.MountError, match="overlaps nanoclaw's own"):
        mounts.check(cfg, str(state), rw=False)
    with pytest.raises(mounts.MountError, match="overlaps nanoclaw's own"):
        mounts.check(cfg, str(tmp_path / "srv"), rw=False)  # it would show the state inside


def test_an_allowlist_others_can_write_allows_nothing(home):
    cfg, h = home
    path = mounts.allowlist_path(cfg)
    path.chmod(0o666)
    with pytest.raises(mounts.MountError, match="writable by root alone"):
        mounts.check(cfg, f"{h}/projects/site", rw=False)
    path.unlink()
    with pytest.raises(mounts.MountError, match="no mounts are allowed"):
        mounts.check(cfg, f"{h}/projects/site", rw=False)


def test_the_cli_adds_lists_and_removes_mounts_only_as_allowed(offline_system, tmp_path):
    s = offline_system
    projects = tmp_path / "projects" / "site"
    projects.mkdir(parents=True)
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\n')
    s.cli("groups", "add", "family")
    out = s.cli("groups", "mount", "add", "family", str(projects)).stdout
    assert f"family: {projects} at /workspace/extra/site (read-only)" in out
    refused = s.cli("groups", "mount", "add", "family", str(projects), "--as", "again", "--rw", check=False)
    assert refused.returncode == 2 and "read only" in refused.stderr
    dup = s.cli("groups", "mount", "add", "family", str(projects), check=False)
    assert dup.returncode == 2 and "already has a mount named 'site'" in dup.stderr
    assert "no group" in s.cli("groups", "mount", "add", "nobody", str(projects), check=False).stderr
    listing = s.cli("groups", "mount", "list").stdout
    assert "family           /workspace/extra/site" in listing and listing.rstrip().endswith("ok")
    # the allowlist is read again each time: what it no longer allows is shown as refused
    allowlist(s.confdir, "[[root]]\npath = \"/nowhere\"\n")
    assert "REFUSED now" in s.cli("groups", "mount", "list", "family").stdout
    assert "removed" in s.cli("groups", "mount", "remove", "family", "site").stdout
    assert "no mounts" in s.cli("groups", "mount", "list").stdout


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True,
                          env={**os.environ, "GIT_AUTHOR_NAME": "Owner", "GIT_AUTHOR_EMAIL": "o@x",
                               "GIT_COMMITTER_NAME": "Owner", "GIT_COMMITTER_EMAIL": "o@x"}).stdout


@pytest.mark.podman
def test_the_agent_works_on_a_mounted_git_repo_and_cannot_write_a_read_only_one(make_agent_system, fake_api,
                                                                                 tmp_path):
    """'@Andy review the git history of my project and update the README', for real."""
    repo, photos = tmp_path / "projects" / "demo", tmp_path / "photos"
    repo.mkdir(parents=True)
    photos.mkdir()
    (photos / "cat.txt").write_text("a cat\n")
    (repo / "README.md").write_text("# demo\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-q", "-m", "first commit of the demo")
    for root, _, files in os.walk(tmp_path / "projects"):  # the agent's uid must be able to write it
        for name in [root, *(os.path.join(root, f) for f in files)]:
            os.chown(name, 1000, 1000)
    s = make_agent_system()
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\nwrite = true\n\n[[root]]\npath = "{photos}"\n')
    s.cli("groups", "mount", "add", "main", str(repo), "--rw")
    s.cli("groups", "mount", "add", "main", str(photos))
    fake_api.then({"tool_use": {"name": "Bash", "input": {
        "description": "review and update",
        "command": "cd /workspace/extra/demo && git log --oneline && echo 'Reviewed by the agent.' >> README.md "
                   "&& cat README.md && (echo x > /workspace/extra/photos/new.txt; echo photos=$?)"}}})
    w = s.watch("main")
    s.send("main", "review the git history of my project and update the README")
    assert w.reply(120) == "tool done"
    result = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[0]["content"])
    assert "first commit of the demo" in result  # git log ran in the container, on the owner's repo
    assert (repo / "README.md").read_text() == "# demo\nReviewed by the agent.\n"  # the change is on the host
    assert "Read-only file system" in result and "photos=1" in result and not (photos / "new.txt").exists()
    # the agent was told what it has
    system = str(fake_api.message_requests()[0]["body"]["system"])
    assert "/workspace/extra/demo (read-write)" in system and "/workspace/extra/photos (read-only)" in system


@pytest.mark.podman
def test_the_runner_checks_the_allowlist_again_at_every_start(make_agent_system, fake_api, tmp_path):
    folder = tmp_path / "projects" / "notes"
    folder.mkdir(parents=True)
    s = make_agent_system()
    allowlist(s.confdir, f'[[root]]\npath = "{tmp_path}/projects"\n')
    s.cli("groups", "mount", "add", "main", str(folder))
    allowlist(s.confdir, '[[root]]\npath = "/srv/elsewhere"\n')  # the owner takes it back
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "look",
                                                          "command": "ls /workspace/extra/notes; echo rc=$?"}}})
    w = s.watch("main")
    s.send("main", "what is in notes?")
    assert w.reply(120) == "tool done"
    result = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[0]["content"])
    assert "No such file or directory" in result  # not mounted
    assert "mount=notes refused" in s.log("runner") and "under no allowed root" in s.log("runner")
