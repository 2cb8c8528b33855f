"""A team of real agents: the real image (SDK and CLI) for the lead and each member.

The fake Messages API answers by who is asking (the member's system prompt
names it): the lead calls ``delegate`` twice and ends its turn; each member
answers; the lead, given both answers in one prompt, sums up. Members are held
inside their turn until the test has looked at their containers through the
Podman API.
"""

from __future__ import annotations

import json
import threading

import pytest
from fake_anthropic import content_text, last_user_content, prompt_message, tool_results
from podman import PodmanClient

pytestmark = pytest.mark.podman


def who(body: dict) -> str:
    system = json.dumps(body.get("system"))
    for name in ("researcher", "planner"):
        if f"({name}), a member of the team" in system:
            return name
    return "lead"


def test_the_lead_delegates_to_two_members_in_their_own_containers(make_agent_system, fake_api, podman_service):
    release = threading.Event()
    lead_steps = [
        {"tool_use": {"name": "mcp__nanoclaw__delegate",
                      "input": {"agent": "researcher", "task": "three flights to Lisbon under 200 EUR"}}},
        {"tool_use": {"name": "mcp__nanoclaw__delegate",
                      "input": {"agent": "planner", "task": "a weekend plan around the best flight"}}},
        {"text": "I've asked Researcher and Planner."},
    ]
    seen_by_lead: list[str] = []

    def responder(body: dict) -> dict:
        agent = who(body)
        if agent != "lead":
            if tool_results(last_user_content(body)):
                return {"text": "tool done"}
            release.wait(90)  # hold the member's turn (and its container) until the test has looked
            return {"text": {"researcher": "TAP 89 EUR, easyJet 120 EUR, Ryanair 45 EUR",
                             "planner": "Saturday Alfama, Sunday Belem"}[agent]}
        text = content_text(last_user_content(body))
        if 'from="agent:' in text:
            seen_by_lead.append(text)
            return {"text": "Best: Ryanair at 45 EUR; Saturday Alfama, Sunday Belem."}
        return lead_steps.pop(0) if lead_steps else {"text": "?"}

    fake_api.responder = responder
    s = make_agent_system()
    for name, what in (("researcher", "finds flights and prices"), ("planner", "plans weekends")):
        s.cli("agents", "add", "main", name, "--description", what, "--instructions", f"You are the {name}.")
    listed = s.cli("agents", "list").stdout
    assert "researcher" in listed and "plans weekends" in listed
    w = s.watch("main")
    s.send("main", "get the researcher to find three flights to Lisbon under 200 EUR and the planner "
                   "to draft a weekend plan around the best one")
    assert w.said(120) == ("Andy", "I've asked Researcher and Planner.")

    # Two further containers, found through the Podman API while both members are in their turn.
    with PodmanClient(base_url=podman_service) as client:
        def members():
            return [c for c in client.containers.list(filters={"label": "nanoclaw.group=main"})
                    if c.labels.get("nanoclaw.agent")]
        s.wait_for(lambda: len(members()) == 2, 90, interval=0.5, what="two member containers")
        found = {c.labels["nanoclaw.agent"]: c for c in members()}
        assert set(found) == {"researcher", "planner"}
        mounts = {}
        for name, ctr in found.items():
            ctr.reload()
            assert ctr.name.startswith(f"nanoclaw-main--{name}-")
            mounts[name] = {m["Destination"]: m for m in ctr.attrs["Mounts"]}
            env = dict(e.split("=", 1) for e in ctr.attrs["Config"]["Env"])
            assert env["NANOCLAW_AGENT"] == name and env["NANOCLAW_IS_MAIN"] == "0"
        r, p = mounts["researcher"], mounts["planner"]
        assert r["/workspace/group"]["Source"] == p["/workspace/group"]["Source"] == str(s.state / "groups" / "main")
        assert r["/workspace/session"]["Source"] != p["/workspace/session"]["Source"]
        assert r["/workspace/ipc/out"]["Source"] != p["/workspace/ipc/out"]["Source"]
        assert "researcher" in r["/workspace/session"]["Source"] and "planner" in p["/workspace/session"]["Source"]
        assert r["/workspace/group/agents"]["RW"] is False
        status = s.cli("status").stdout
        assert "main/researcher (running)" in status and "main/planner (running)" in status
    release.set()

    said = [w.said(120) for _ in range(3)]
    assert sorted(said[:2]) == [("Planner", "Saturday Alfama, Sunday Belem"),
                                ("Researcher", "TAP 89 EUR, easyJet 120 EUR, Ryanair 45 EUR")]
    assert said[2] == ("Andy", "Best: Ryanair at 45 EUR; Saturday Alfama, Sunday Belem.")
    s.wait_idle(90)
    assert len(seen_by_lead) == 1  # both answers in one prompt, answered once
    assert 'from="agent:researcher"' in seen_by_lead[0] and 'from="agent:planner"' in seen_by_lead[0]
    assert s.replies("main@term").count("Best: Ryanair at 45 EUR; Saturday Alfama, Sunday Belem.") == 1
    with s.db() as con:
        sessions = dict(con.execute("select agent, session_id from session").fetchall())
        jobs = con.execute("select agent, count(*) from job group by agent").fetchall()
    assert set(sessions) == {"", "researcher", "planner"} and len(set(sessions.values())) == 3
    jobs = dict(jobs)  # the lead read the answers in its warm container, or in a new one
    assert jobs["researcher"] == jobs["planner"] == 1 and jobs[""] in (1, 2)
    journal = s.log("queue")
    assert "agent=researcher" in journal and "answered delegation" in journal
    # the members' tools: delegate and list_agents, but nothing the lead alone may do
    member_tools = {t["name"] for r in fake_api.message_requests() if who(r["body"]) == "researcher"
                    for t in r["body"]["tools"]}
    assert "mcp__nanoclaw__delegate" in member_tools and "mcp__nanoclaw__create_agent" not in member_tools
    assert "mcp__nanoclaw__register_group" not in member_tools


def test_a_member_addressed_by_name_answers_and_the_lead_does_not_run(make_agent_system, fake_api):
    s = make_agent_system()
    s.cli("agents", "add", "main", "researcher", "--description", "finds flights", "--instructions", "Find.",
          "--tools", "Read")
    w = s.watch("main")
    s.send("main", "@Researcher what about Porto?")
    name, text = w.said(120)
    assert (name, text) == ("Researcher", "echo: @Researcher what about Porto?")
    s.wait_idle(90)
    reqs = fake_api.message_requests()
    assert reqs and all(who(r["body"]) == "researcher" for r in reqs)
    assert prompt_message(reqs[0]["body"]) == "@Researcher what about Porto?"
    builtins = {t["name"] for t in reqs[0]["body"]["tools"] if not t["name"].startswith("mcp__")}
    assert builtins == {"Read"}  # its file's tool limit
