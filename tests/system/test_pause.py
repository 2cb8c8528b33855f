"""An idle agent's container parked under real systemd, in the service user's rootless Podman.

With the default ``[container] paused_memory_mib`` the runner pauses a container that has
been idle for ``idle_timeout`` and hands it the group's next job; where rootless Podman
cannot pause (cgroups v1 or hybrid) it says why in its journal and asks the container to
close, as before pausing existed. Which of the two happens is found out on the machine,
from what its rootless Podman reports, never assumed.

It uses the Debian 12 machine of tests/system/conftest.py, shared with test_systemd.py (no
machine of its own), and runs before that module's last test uninstalls it.
"""

from __future__ import annotations

import json

import pytest

from .machine import AS_NANOCLAW, Machine

pytestmark = [pytest.mark.system, pytest.mark.podman]

CONF = "/etc/nanoclaw/config.toml"
IDLE = 5  # seconds: [container] idle_timeout for this test only


def _podman(m: Machine, args: str) -> str:
    """``podman ARGS`` as the service user: the storage the runner's Podman API serves."""
    return m.sh(f"cd / && {AS_NANOCLAW} podman {args}").stdout.strip()


def _runner_said(m: Machine, job: int) -> list[str]:
    """The runner's journal entries about the main group's ``job``, found by their fields (each
    MESSAGE is the whole line: ``nanoclaw.runner: group=main job=N what it said``)."""
    out = m.sh(f"journalctl --no-pager -o json -u nanoclaw-runner GROUP=main JOB={job}").stdout
    return [str(json.loads(line).get("MESSAGE", "")) for line in out.splitlines() if line.strip()]


def _job_answering(m: Machine, text: str) -> dict:
    """The main group's job whose turn carried the message ``text``."""
    return m.query(
        f"msg = Message.select().where((Message.text == {text!r}) & (Message.is_bot == False))"
        ".order_by(Message.id.desc()).get()\n"
        "turn = Turn.select().join(Job).join(Group).where((Group.folder == 'main') & "
        "(Turn.first_message_id <= msg.id) & (Turn.last_message_id >= msg.id)).order_by(Turn.id.desc()).get()\n"
        "print(json.dumps({'id': turn.job.id, 'container': turn.job.container}))")


def _status(m: Machine, job: int) -> str:
    return m.query(f"print(json.dumps(Job.get_by_id({job}).status))")


def _idle_decision(m: Machine, job: int) -> str:
    """The runner's one line on what it did with ``job``'s idle container, once it is there."""
    lines = m.wait_for(lambda: [s[s.index("idle: "):] for s in _runner_said(m, job) if "idle: " in s], IDLE + 60,
                       f"the runner's idle decision on job {job}")
    assert len(lines) == 1, lines
    return lines[0]


def _closed(m: Machine, job: int, name: str) -> None:
    """``job``'s container exited by itself, was removed (not paused, not left running), and
    the job ended done."""
    states: set[str] = set()

    def gone() -> bool:
        rows = [r.split() for r in _podman(m, "ps -a --format '{{.Names}} {{.State}}'").splitlines()]
        states.update(r[1] for r in rows if len(r) == 2 and r[0] == name)
        return all(r[0] != name for r in rows if r)
    m.wait_for(gone, 90, f"container {name} removed")
    assert "paused" not in states, states
    m.wait_for(lambda: any(s.endswith(f"container {name} exited code=0") for s in _runner_said(m, job)), 30,
               f"{name} exited 0")
    m.wait_for(lambda: _status(m, job) == "done", 30, f"job {job} done")


def test_an_idle_agent_is_paused_or_where_podman_cannot_pause_closed(debian12: Machine):
    m = debian12
    cgroups = _podman(m, "info --format '{{.Host.CgroupsVersion}} {{.Host.CgroupManager}}'")
    can_pause = cgroups.split()[0] == "v2"  # Podman pauses a rootless container on cgroups v2 only
    print(f"rootless Podman on the machine: cgroups {cgroups}; expecting the container "
          f"{'paused' if can_pause else 'closed'}")
    m.sh(f"cp -p {CONF} /root/config.toml.before-idle && "
         f"if grep -q '^\\[container\\]' {CONF}; then sed -i '/^\\[container\\]/a idle_timeout = {IDLE}' {CONF}; "
         f"else printf '\\n[container]\\nidle_timeout = {IDLE}\\n' >> {CONF}; fi && "
         "systemctl restart nanoclaw-queue nanoclaw-runner")
    try:
        m.wait_active()
        assert "echo: before the idle time" in m.send("before the idle time")
        first = _job_answering(m, "before the idle time")
        said = _idle_decision(m, first["id"])
        if can_pause:
            assert said.startswith(f"idle: paused {first['container']} ("), said
            ident, state = _podman(m, f"inspect --format '{{{{.Id}}}} {{{{.State.Status}}}}' {first['container']}").split()
            assert state == "paused"
            m.wait_for(lambda: _status(m, first["id"]) == "done", 30, "the paused job done")
            assert "echo: after the idle time" in m.send("after the idle time")
            second = _job_answering(m, "after the idle time")
            assert second["id"] != first["id"]
            m.wait_for(lambda: f"unpaused {first['container']} as {second['container']}" in
                       " ".join(_runner_said(m, second["id"])), 30, "the hand-over in the journal")
            assert _podman(m, f"inspect --format '{{{{.Id}}}}' {second['container']}") == ident  # the same one
        else:
            print("the runner said:", said)
            assert said.startswith("idle: not paused (podman cannot pause containers here: "), said
            assert said.endswith("); asked to close") and "cgroup" in said.lower(), said
            _closed(m, first["id"], first["container"])
            # the next message: answered, by a new container, and that one closed the same way
            assert "echo: after the idle time" in m.send("after the idle time")
            second = _job_answering(m, "after the idle time")
            assert second["id"] != first["id"] and second["container"] != first["container"]
            m.wait_for(lambda: f"started {second['container']} in " in " ".join(_runner_said(m, second["id"])),
                       30, "the new container's start in the journal")
            assert not any("unpaused" in s for s in _runner_said(m, second["id"]))
            assert _idle_decision(m, second["id"]) == said  # what it found out, said again
            _closed(m, second["id"], second["container"])
    finally:
        m.sh(f"cp -p /root/config.toml.before-idle {CONF} && systemctl restart nanoclaw-queue nanoclaw-runner")
    m.wait_active()
