"""The owner's folders checked from a container's mount table (daemons/runner/mount_table.py),
the runner's way when it may not walk the container's root (rootless fuse-overlayfs: FUSE lets
no process outside its user namespace in). Real containers, set up by `podman init` and never
started, as the runner does it."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from nanoclaw.daemons.runner import binds, mount_table


def init_container(image: str, options: dict, source: Path, target: str, read_only: bool) -> tuple[str, int]:
    """A container of ``image`` with ``source`` bound at ``target``, set up and not started; (id, pid)."""
    args = ["podman", "create", "--network", "none", "--read-only"]
    if options.get("runtime"):
        args += ["--runtime", options["runtime"]]
    for u in options.get("ulimits", []):
        args += ["--ulimit", u]
    for v in options.get("volumes", []):
        args += ["-v", v]
    mode = "ro" if read_only else "rw"
    args += ["--mount", f"type=bind,source={source},target={target},{mode}", image, "true"]
    cid = subprocess.run(args, check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["podman", "init", cid], check=True, capture_output=True)
    pid = int(subprocess.run(["podman", "inspect", "-f", "{{.State.Pid}}", cid], check=True,
                             capture_output=True, text=True).stdout.strip())
    return cid, pid


@pytest.fixture
def containers():
    made: list[str] = []
    yield made
    if made:
        subprocess.run(["podman", "rm", "-f", *made], capture_output=True)


def test_the_mount_table_is_read_as_the_kernel_escapes_it():
    line = r"36 35 98:0 /a\040b\134c /mnt/x\011y rw,noatime master:1 - ext3 /dev/root rw,errors=continue"
    (entry,) = mount_table.parse(line + "\n")
    assert entry == mount_table.Entry((98, 0), "/a b\\c", "/mnt/x\ty", False)
    assert mount_table.parse("1 2 0:5 / /ro ro,nosuid - tmpfs t rw\n")[0].read_only


@pytest.mark.podman
def test_a_checked_folder_passes_and_a_swapped_one_is_caught(agent_image, container_options, containers, tmp_path):
    """The folder that was checked passes; a folder swapped for a link to ~/.ssh after its check
    (Podman then mounts the link's target) is refused, as is one that must be read-only and is not."""
    projects, ssh = tmp_path / "projects", tmp_path / "home" / ".ssh"
    (projects / "site").mkdir(parents=True)
    ssh.mkdir(parents=True)
    (ssh / "id_ed25519").write_text("SECRET\n")

    ok = binds.open_checked(projects / "site", "/workspace/extra/site", False, "site")
    cid, pid = init_container(agent_image, container_options, projects / "site", "/workspace/extra/site", False)
    containers.append(cid)
    mount_table.verify(pid, [ok])
    with pytest.raises(OSError) as refused:  # the same mount, said to be read-only: it is not
        mount_table.verify(pid, [binds.Bind(ok.source, ok.target, True, ok.fd, ok.ident, "site")])
    assert refused.value.errno == errno.EROFS
    binds.close([ok])

    checked = binds.open_checked(projects / "site", "/workspace/extra/site", True, "site")
    os.rename(projects / "site", projects / "site.real")  # the swap, between the check and the mount
    (projects / "site").symlink_to(ssh)
    cid, pid = init_container(agent_image, container_options, projects / "site", "/workspace/extra/site", True)
    containers.append(cid)
    with pytest.raises(OSError) as refused:
        mount_table.verify(pid, [checked])
    assert refused.value.errno == errno.EXDEV and "not the" in str(refused.value)
    # and swapped back before the check: the folder the container got is where it went
    (projects / "site").unlink()
    os.rename(projects / "site.real", projects / "site")
    mount_table.verify(pid, [binds.open_checked(ssh, "/workspace/extra/site", True, "site")])  # what it did get
    with pytest.raises(OSError):
        mount_table.verify(pid, [checked])
    binds.close([checked])


@pytest.mark.podman
def test_the_walk_and_the_table_agree_on_a_real_container(agent_image, container_options, containers, tmp_path):
    """Where the root can be walked (here, as root), both ways pass the same checked folder."""
    (tmp_path / "site").mkdir()
    b = binds.open_checked(tmp_path / "site", "/workspace/extra/site", True, "site")
    cid, pid = init_container(agent_image, container_options, tmp_path / "site", "/workspace/extra/site", True)
    containers.append(cid)
    binds.verify(pid, [b])
    mount_table.verify(pid, [b])
    binds.close([b])
