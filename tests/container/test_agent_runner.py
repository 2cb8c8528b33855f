"""The agent runner's modules (container/*.py) start nothing when imported: main() does.

The old runner started its event loop, both relays to the host's sockets and
the early claude CLI, and imported the SDK, all at import. A probe runs in the
real agent image, read-only as the runner starts it, with a prompt waiting in
``ipc/in`` (what the early CLI starts for). It imports each module of the
image's ``/opt/nanoclaw`` in turn and records what the import changed: threads
(``/proc/self/task``, native ones too), child processes, open descriptors
(sockets, pipes, an event loop's epoll), files written anywhere writable (every
tmpfs, ``/workspace``), audited calls that act on the world (sockets, process
starts, opening for write, renames, ...) and SDK modules loaded. A second run
imports modules planted with one such side effect each, so every kind of
finding is shown to be seen.
"""

from __future__ import annotations

import json
import subprocess

import pytest

pytestmark = pytest.mark.podman

PROBE = r"""
import json, os, sys, threading

MODULES, PLANTED, PROMPT = json.loads(sys.argv[1])
CODE = "/opt/nanoclaw"
WRITABLE = ("/tmp", "/var/tmp", "/run", "/dev/shm", "/workspace")
# Audited events that act on the world (https://docs.python.org/3/library/audit_events.html).
ACTS = ("socket.", "subprocess.", "os.fork", "os.posix_spawn", "os.exec", "os.spawn", "os.system", "os.kill",
        "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link", "os.truncate", "os.chmod",
        "os.chown", "os.utime", "shutil.", "http.client.", "urllib.", "_thread.start_new_thread")
WRITING = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

recording, events = False, []


def audit(event, args):
    if not recording:
        return
    if event == "open" and isinstance(args[2], int) and args[2] & WRITING:
        events.append(f"open for write {args[0]!r}")
    elif event.startswith(ACTS):
        events.append(f"{event} {args!r}"[:200])


def threads():
    return len(os.listdir("/proc/self/task"))


def children():
    found = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/children") as fh:
            found += fh.read().split()
    return sorted(found)


def fds():
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # the descriptor listdir itself used, closed by now
            pass
    return found


def files():
    found = {}
    for top in WRITABLE:
        for root, dirs, names in os.walk(top):
            for name in dirs + names:
                path = os.path.join(root, name)
                try:
                    st = os.lstat(path)
                except OSError:
                    continue
                found[path] = (st.st_mtime_ns, st.st_size)
    return found


def sdk():
    return sorted(m for m in sys.modules if m.split(".")[0] == "claude_agent_sdk")


def state():
    return {"threads": threads(), "children": children(), "fds": fds(), "files": files(), "sdk": sdk()}


# The workspace as the runner mounts it, with a prompt waiting: the early CLI's cue.
for d in ("ipc/in/tmp", "ipc/in/new", "ipc/in/cur", "ipc/out/tmp", "ipc/out/new", "group/agents", "session", "global"):
    os.makedirs(f"/workspace/{d}", exist_ok=True)
os.makedirs(os.environ["HOME"], exist_ok=True)
import subprocess  # before the hook: the prompt is written by another process, with the host's writer
subprocess.run([sys.executable, "-c", f"import sys; sys.path.insert(0, {CODE!r}); from protocol import Spool; "
                f"Spool('/workspace/ipc/in').put('prompt', {PROMPT!r})"], check=True)
sys.path.insert(0, CODE)
if PLANTED:
    os.makedirs("/tmp/planted")
    for name, source in PLANTED.items():
        with open(f"/tmp/planted/{name}.py", "w") as fh:
            fh.write(source)
    sys.path.insert(0, "/tmp/planted")
modules = MODULES or sorted(n[:-3] for n in os.listdir(CODE) if n.endswith(".py"))
sys.addaudithook(audit)
report = {}
for name in modules:
    before = state()
    events.clear()
    recording = True
    __import__(name)
    recording = False
    after = state()
    report[name] = {
        "threads": after["threads"] - before["threads"],
        "children": [c for c in after["children"] if c not in before["children"]],
        "fds": sorted(link for fd, link in after["fds"].items() if before["fds"].get(fd) != link),
        "files": sorted(p for p, s in after["files"].items() if before["files"].get(p) != s),
        "events": list(events),
        "sdk": [m for m in after["sdk"] if m not in before["sdk"]],
    }
print(json.dumps(report))
"""

QUIET = {"threads": 0, "children": [], "fds": [], "files": [], "events": [], "sdk": []}
PROMPT = {"job": 7, "turn": 1, "prompt": "<messages>hi</messages>", "session_id": None}


def probe(image: str, container_options: dict, modules: list[str] | None = None,
          planted: dict[str, str] | None = None) -> dict:
    """What importing each module changed, in the image as the runner starts it (read-only root,
    no network, the runner's environment); ``modules`` None: every module in /opt/nanoclaw."""
    from nanoclaw.admin.hostcheck import runtime_args
    opts = runtime_args(container_options["runtime"], tuple(container_options["ulimits"]), ())
    env = {"NANOCLAW_JOB": "7", "NANOCLAW_GROUP": "main", "NANOCLAW_IS_MAIN": "1", "NANOCLAW_AGENT": "",
           "NANOCLAW_IDLE_TIMEOUT": "600", "NANOCLAW_MODEL": "", "HOME": "/tmp/home"}
    out = subprocess.run(
        ["podman", "run", "--rm", "--network", "none", "--read-only", "--cap-drop", "ALL",
         "--security-opt", "no-new-privileges", "--tmpfs", "/workspace:rw,mode=1777", "-w", "/tmp",
         *(a for k, v in env.items() for a in ("-e", f"{k}={v}")), *opts,
         "--entrypoint", "/opt/venv/bin/python", image, "-c", PROBE,
         json.dumps([modules, planted or {}, PROMPT])],
        capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_importing_the_runners_modules_starts_nothing(real_agent_image, container_options):
    """Every module in the image, imported one by one (those they import come with them), leaves
    no thread, process, descriptor or written file behind, acts on nothing and loads no SDK;
    ``session`` alone brings the SDK (main() imports it once the CLI is started), and nothing
    else."""
    found = probe(real_agent_image, container_options)
    assert {"agent_runner", "context", "early_cli", "forwarders", "session", "settings", "team", "tools",
            "protocol", "safefs", "member_file"} <= set(found)
    session = found.pop("session")
    assert {name: what for name, what in found.items() if what != QUIET} == {}
    assert session.pop("sdk"), "importing session must bring the SDK"
    assert session == {k: v for k, v in QUIET.items() if k != "sdk"}


PLANTS = {
    "plant_thread": "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n",
    "plant_process": "import subprocess\nsubprocess.Popen(['sleep', '60'])\n",
    "plant_socket": "import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\n",
    "plant_loop": "import asyncio\nasyncio.set_event_loop(asyncio.new_event_loop())\n",
    "plant_file": "open('/workspace/ipc/out/planted', 'w').close()\n",
    "plant_sdk": "import claude_agent_sdk\n",
}


def test_the_probe_sees_each_kind_of_side_effect(real_agent_image, container_options):
    """The probe is not blind: a module that starts a thread, a process, a socket or an event
    loop, writes a file or loads the SDK at import is caught, each by what it left."""
    found = probe(real_agent_image, container_options, list(PLANTS), PLANTS)
    assert found["plant_thread"]["threads"] == 1
    assert len(found["plant_process"]["children"]) == 1
    assert any(link.startswith("socket:") for link in found["plant_socket"]["fds"])
    assert any(e.startswith("socket.bind") for e in found["plant_socket"]["events"])
    assert any("eventpoll" in link for link in found["plant_loop"]["fds"])
    assert "/workspace/ipc/out/planted" in found["plant_file"]["files"]
    assert any(e.startswith("open for write") for e in found["plant_file"]["events"])
    assert "claude_agent_sdk" in found["plant_sdk"]["sdk"]
