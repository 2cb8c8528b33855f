"""Idle agent containers paused, not stopped, and handed their agent's next job (issue 29).

Real Podman, the real agent image (claude-agent-sdk and its CLI) and the fake Messages API.
Each test waits on what proves the moment passed: a job's end in the database, a container's
state in Podman, a reply in the chat.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from fake_anthropic import all_text

pytestmark = pytest.mark.podman


def containers() -> dict[str, tuple[str, str]]:
    """Our containers: name -> (id, state)."""
    out = subprocess.run(["podman", "ps", "-a", "--filter", "label=nanoclaw.job", "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    return {c["Names"][0]: (c["Id"], c["State"]) for c in json.loads(out or "[]")}


def jobs(s) -> list[tuple[int, str]]:
    with s.db() as con:
        return [tuple(r) for r in con.execute("select id, status from job order by id")]


def job_ended(s, job: int) -> None:
    s.wait_for(lambda: dict(jobs(s)).get(job) in ("done", "failed", "stopped"), 60, what=f"job {job} to end")


def paused(s, name: str) -> str:
    """Wait for the container ``name`` to be paused (the job's end is reported after): its id."""
    s.wait_for(lambda: containers().get(name, ("", ""))[1] == "paused", 60, what=f"{name} paused")
    return containers()[name][0]


def sessions(fake_api) -> list[str]:
    return [r["headers"].get("x-claude-code-session-id") for r in fake_api.message_requests()]


def paused_mib(s, name: str) -> int:
    [mib] = [int(m) for m in re.findall(rf"idle: paused {name} \((\d+) MiB\)", s.log("runner"))]
    return mib


def test_an_idle_container_is_paused_and_answers_the_next_message(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=1.0, paused_memory_mib=4096)
    w = s.watch("main")
    s.send("main", "remember the word pelican")
    assert w.reply(120) == "echo: remember the word pelican"
    first = paused(s, "nanoclaw-main-1")
    job_ended(s, 1)
    assert jobs(s) == [(1, "done")]  # a paused container's job ended well: nothing to retry
    status = s.cli("status").stdout
    assert re.search(r"^paused: +1 \(main \d+ MiB; \d+ of 4096 MiB", status, re.M), status
    # the next message: a new job, handed to the same container, unpaused and renamed for it
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__send_message", "input": {"text": "on it"}}})
    s.send("main", "what was the word?")
    assert {w.reply(120), w.reply(60)} == {"on it", "tool done"}
    now = containers()
    assert list(now) == ["nanoclaw-main-2"] and now["nanoclaw-main-2"][0] == first
    assert [e for e in s.journal.of("runner", GROUP="main", JOB="2") if "unpaused nanoclaw-main-1" in e["MESSAGE"]]
    # the same conversation went on (its history replayed, one session), without a new start
    requests = fake_api.message_requests()
    assert "pelican" in all_text(requests[-1]["body"])
    assert len(set(sessions(fake_api))) == 1
    assert s.log("queue").count("new container's first turn") == 1
    # the container's tools speak for the job it was handed, which the host took as the live one
    [sent] = [e for e in s.journal.of("ipc", GROUP="main") if "send_message" in e["MESSAGE"]]
    assert sent["JOB"] == "2"
    # and again: the container keeps watching its inbox across hand-overs
    paused(s, "nanoclaw-main-2")
    job_ended(s, 2)
    fake_api.then({"text": "third answer"})  # (the fake would see the last turn's tool result and say "tool done")
    s.send("main", "and once more")
    assert w.reply(60) == "third answer"
    assert "and once more" in all_text(fake_api.message_requests()[-1]["body"])
    assert containers()["nanoclaw-main-3"][0] == first
    assert "failed" not in s.log("runner")  # paused and handed over on the way meant, not by a retry


def test_over_the_budget_the_longest_paused_is_stopped(make_agent_system, fake_api):
    """Two groups' containers paused where the budget holds one and a half: the first paused is
    stopped. The budget is set from the first one's own memory, read back after a runner
    restart that also shows a paused container kept across it."""
    s = make_agent_system(idle_timeout=1.0, paused_memory_mib=8192)
    s.cli("groups", "add", "family", "--no-trigger")
    w, wf = s.watch("main"), s.watch("family")
    s.send("main", "hello")
    assert w.reply(120) == "echo: hello"
    main_id = paused(s, "nanoclaw-main-1")
    job_ended(s, 1)
    mib = paused_mib(s, "nanoclaw-main-1")
    assert 50 < mib < 2048, mib  # the PSS of Python, the SDK and the CLI, read from /proc
    s.stop("runner")
    s.config_path.write_text(s.config_path.read_text().replace("paused_memory_mib = 8192",
                                                                f"paused_memory_mib = {mib * 3 // 2}"))
    s.start("runner")
    s.wait_for(lambda: "kept paused nanoclaw-main-1" in s.log("runner"), 30, what="the runner's first pass")
    assert containers() == {"nanoclaw-main-1": (main_id, "paused")}  # kept, not removed as an orphan
    s.send("family", "hi family")
    assert wf.reply(120) == "echo: hi family"
    paused(s, "nanoclaw-family-2")
    s.wait_for(lambda: "nanoclaw-main-1" not in containers(), 60, what="the older paused container stopped")
    assert set(containers()) == {"nanoclaw-family-2"}
    assert "stopping paused nanoclaw-main-1: over paused_memory_mib" in s.log("runner")
    # main's next message starts a new container, resuming its session
    s.send("main", "again")
    assert w.reply(120) == "echo: again"
    assert containers()["nanoclaw-main-3"][0] != main_id
    assert s.log("queue").count("new container's first turn") == 3


def test_a_paused_container_made_otherwise_is_not_handed_the_job(make_agent_system, fake_api):
    """The configuration changed while it was paused (here the agents' environment): the next
    message gets a new container, made as the configuration now says; the paused one goes."""
    s = make_agent_system(idle_timeout=1.0, paused_memory_mib=4096)
    w = s.watch("main")
    s.send("main", "hello")
    assert w.reply(120) == "echo: hello"
    first = paused(s, "nanoclaw-main-1")
    job_ended(s, 1)
    s.stop("runner")
    s.config_path.write_text(s.config_path.read_text().replace('"CLAUDE_CODE_MAX_RETRIES=0"',
                                                                '"CLAUDE_CODE_MAX_RETRIES=0", "NEW_SETTING=1"'))
    s.start("runner")
    s.send("main", "again")
    assert w.reply(120) == "echo: again"
    assert list(containers()) == ["nanoclaw-main-2"] and containers()["nanoclaw-main-2"][0] != first
    assert "paused nanoclaw-main-1 was made otherwise than this job's would be; stopped" in s.log("runner")
    [made] = json.loads(subprocess.run(["podman", "inspect", "nanoclaw-main-2"], capture_output=True, text=True,
                                       check=True).stdout)
    assert "NEW_SETTING=1" in made["Config"]["Env"]


def test_with_no_budget_idle_containers_exit_as_before(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=1.0, paused_memory_mib=0)
    w = s.watch("main")
    s.send("main", "hello")
    assert w.reply(120) == "echo: hello"
    job_ended(s, 1)
    s.wait_for(lambda: not containers(), 30, what="the container removed")
    assert "paused" not in s.log("runner") and "park" not in s.log("queue")
    s.send("main", "again")
    assert w.reply(120) == "echo: again"
    assert s.log("queue").count("new container's first turn") == 2  # each a new container
    assert len(set(sessions(fake_api))) == 1  # the session resumed, as always


def test_a_paused_container_found_at_a_restart(make_agent_system, fake_api):
    """The runner stopped (as systemd stops it: the containers stay) after the queue asked
    for a pause and the container was paused, before its end was reported: the restarted
    runner reports it and keeps the container, which answers the next message. With the
    budget then set to 0, the next restart removes it."""
    s = make_agent_system(idle_timeout=600.0, paused_memory_mib=4096)
    w = s.watch("main")
    s.send("main", "hello")
    assert w.reply(120) == "echo: hello"
    s.stop("runner")
    first = containers()["nanoclaw-main-1"][0]
    subprocess.run(["podman", "pause", "nanoclaw-main-1"], check=True, capture_output=True)
    with s.db() as con:  # what the queue's park left: the job closing
        con.execute("update job set closing = 1 where id = 1")
    s.start("runner")
    job_ended(s, 1)
    assert jobs(s) == [(1, "done")]
    assert containers() == {"nanoclaw-main-1": (first, "paused")}
    s.send("main", "again")
    assert w.reply(120) == "echo: again"
    assert containers()["nanoclaw-main-2"][0] == first
    # pause it again by hand, as idle (the queue would after 600 s), and take the budget away
    s.stop("runner", "queue")
    with s.db() as con:
        con.execute("update job set closing = 1 where id = 2")
    subprocess.run(["podman", "pause", "nanoclaw-main-2"], check=True, capture_output=True)
    s.config_path.write_text(s.config_path.read_text().replace("paused_memory_mib = 4096",
                                                                "paused_memory_mib = 0"))
    s.start("runner", "queue")
    job_ended(s, 2)
    s.wait_for(lambda: not containers(), 30, what="the paused container removed")
