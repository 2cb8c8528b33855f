"""Teams: a lead hands work to members, each its own job; answers come back through the queue.

The queue and ipc daemons run in-process against real SQLite and real spools;
the runner's part (starting a container, the agent's turns) is played by the
test writing what a container would write into its own ``out/`` spool, so
every rule here is the daemons' own: who may ask for what, when an asker runs
on its answers, the caps. The real image runs a whole team in
``tests/container/test_agent_team.py``.
"""

from __future__ import annotations

import json
import logging
import os
import time

import pytest

from nanoclaw.core import config_file
from nanoclaw.core import groups as groups_mod
from nanoclaw.core import team
from nanoclaw.core.models import Cursor, Group, Job, Message, Session
from nanoclaw.core.protocol import Spool


@pytest.fixture
def cfg(make_cfg):
    return make_cfg('backoff_base = 0.0\nmax_attempts = 2\n[team]\nmax_depth = 3\nmax_delegations = 10\n')


class Team:
    """The queue and ipc daemons of one nanoclaw, and the runner played by hand."""

    def __init__(self, cfg):
        from nanoclaw.daemons.ipc import IpcDaemon
        from nanoclaw.daemons.queue import QueueDaemon
        self.cfg = cfg
        self.queue, self.ipc = QueueDaemon(cfg), IpcDaemon(cfg)
        self.queue.setup()
        self.ipc.setup()
        self.seen: set[str] = set()

    def member(self, folder, name, description="does things"):
        team.write(self.cfg, folder, team.Member(name, description, f"You are the {name}."))

    def say(self, text, folder="main", sender="owner@term"):
        group = Group.get(Group.folder == folder)
        return Message.create(chat=group.jid, sender=sender, text=text, timestamp=time.time(),
                              channel_id=os.urandom(6).hex())

    def pump(self):
        """Let the daemons act until nothing changes."""
        for _ in range(6):
            self.ipc.work()
            self.queue.work()

    def new_jobs(self) -> list[dict]:
        """Job files the queue handed the runner since last asked; each marked started."""
        out = []
        for p in sorted((self.cfg.spool_dir / "runner" / "new").iterdir()):
            if p.name in self.seen:
                continue
            self.seen.add(p.name)
            body = json.loads(p.read_text())["body"]
            self.queue.inbox.put("job_event", {"job": body["job"], "event": "started"})
            out.append(body)
        self.queue.work()
        return out

    def out(self, job: dict) -> Spool:
        return Spool(self.cfg.agent_ipc(job["group"], job.get("agent", "")) / "out").ensure()

    def ask(self, job: dict, kind: str, **body):
        """What the job's container would ask the host (through its own out/ spool)."""
        self.out(job).put(kind, {"job": job["job"], **body})

    def answer(self, job: dict, text: str, turn: int = 0, exit_after: bool = True):
        self.out(job).put("result", {"job": job["job"], "turn": turn, "text": text, "session_id": f"s-{job['job']}",
                                     "error": None})
        self.pump()
        if exit_after:
            self.queue.inbox.put("job_event", {"job": job["job"], "event": "exited", "exit_code": 0})
            self.pump()

    def fail(self, job: dict):
        self.queue.inbox.put("job_event", {"job": job["job"], "event": "exited", "exit_code": 1,
                                           "error": "scripted crash"})
        self.pump()

    def outbound(self) -> list[dict]:
        """What the chat gets: the router's spool, once per key (as the router's outbox keeps it)."""
        out = {}
        for p in sorted((self.cfg.spool_dir / "router" / "new").iterdir()):
            body = json.loads(p.read_text())["body"]
            out.setdefault(body["key"], body)
        return list(out.values())


@pytest.fixture
def t(cfg):
    groups_mod.add_group(cfg, "main", is_main=True)
    return Team(cfg)


def test_lead_delegates_to_two_members_and_reads_both_answers_in_one_turn(t, cfg):
    t.member("main", "researcher", "finds flights")
    t.member("main", "planner", "plans weekends")
    asked = t.say("get the researcher to find flights to Lisbon and the planner to draft a weekend")
    t.pump()
    [lead] = t.new_jobs()
    assert lead["agent"] == "" and "Lisbon" in lead["prompt"]
    t.ask(lead, "delegate", agent="researcher", task="three flights to Lisbon under 200 EUR")
    t.ask(lead, "delegate", agent="planner", task="a weekend plan around the best flight")
    t.answer(lead, "I've asked Researcher and Planner.")
    members = t.new_jobs()
    assert sorted(j["agent"] for j in members) == ["planner", "researcher"]
    assert all(not j["is_main"] for j in members)  # a member of main is not the main agent
    by = {j["agent"]: j for j in members}
    assert "three flights to Lisbon" in by["researcher"]["prompt"] and 'from="agent:lead"' in by["researcher"]["prompt"]
    assert "Lisbon" not in by["planner"]["prompt"].split("weekend plan")[0]  # each sees only its own task

    t.answer(by["researcher"], "TAP 89 EUR, easyJet 120 EUR, Ryanair 45 EUR")
    assert t.new_jobs() == []  # the lead waits: the planner is still out
    t.answer(by["planner"], "Saturday Alfama, Sunday Belem")
    [summing] = t.new_jobs()
    assert summing["agent"] == ""
    assert 'from="agent:researcher"' in summing["prompt"] and 'from="agent:planner"' in summing["prompt"]
    t.answer(summing, "Best: Ryanair at 45 EUR, then Alfama and Belem.")
    t.pump()
    assert t.new_jobs() == []

    sent = t.outbound()
    assert [(o.get("sender", ""), o["text"]) for o in sent] == [
        ("", "I've asked Researcher and Planner."),
        ("Researcher", "TAP 89 EUR, easyJet 120 EUR, Ryanair 45 EUR"),
        ("Planner", "Saturday Alfama, Sunday Belem"),
        ("", "Best: Ryanair at 45 EUR, then Alfama and Belem.")]
    assert sent[-1]["reply_to"] == asked.id  # the summary answers the human message
    group = Group.get(Group.folder == "main")
    assert {c.agent for c in Cursor.select()} == {"", "researcher", "planner"}
    assert {(s.agent, s.session_id) for s in Session.select()} == {
        ("", f"s-{summing['job']}"), ("researcher", f"s-{by['researcher']['job']}"),
        ("planner", f"s-{by['planner']['job']}")}
    # nothing team-internal shows as the chat's: only the human message is not ours or the team's
    assert [m.text for m in Message.select().where(Message.chat == group.jid, Message.agent.is_null())] == [asked.text]


def test_a_member_addressed_directly_answers_and_the_lead_does_not_run(cfg):
    groups_mod.add_group(cfg, "family", trigger="@Andy")
    t = Team(cfg)
    t.member("family", "researcher")
    t.say("@Researcher what about Porto?", folder="family")
    t.say("nice weather today", folder="family")  # not for anyone: context
    t.pump()
    [job] = t.new_jobs()
    assert job["agent"] == "researcher" and "Porto" in job["prompt"]
    t.answer(job, "Porto: 60 EUR by train")
    assert t.new_jobs() == []  # not the lead, and no answer goes to anyone but the chat
    [out] = t.outbound()
    assert out["sender"] == "Researcher" and out["text"] == "Porto: 60 EUR by train"
    assert Message.select().where(Message.agent.is_null(False)).count() == 0


def test_the_trigger_reaches_the_lead_not_the_members(cfg):
    groups_mod.add_group(cfg, "family", trigger="@Andy")
    t = Team(cfg)
    t.member("family", "researcher")
    t.say("@Andy hello", folder="family")
    t.pump()
    [job] = t.new_jobs()
    assert job["agent"] == ""


def test_nested_delegation_answers_the_lead_only_when_the_sub_answer_is_in(t):
    t.member("main", "researcher")
    t.member("main", "checker")
    t.say("find and check a flight")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="researcher", task="find a flight")
    t.answer(lead, "")
    [r] = t.new_jobs()
    t.ask(r, "delegate", agent="checker", task="check TAP 89")
    t.answer(r, "asked the checker")
    assert t.new_jobs()[0]["agent"] == "checker"  # and no lead: the researcher's work is not done
    c = Job.get(Job.agent == "checker")
    t.answer({"job": c.id, "group": "main", "agent": "checker"}, "TAP 89 is real")
    [r2] = t.new_jobs()
    assert r2["agent"] == "researcher" and 'from="agent:checker"' in r2["prompt"]
    t.answer(r2, "TAP 89, checked")
    [lead2] = t.new_jobs()
    assert lead2["agent"] == "" and "TAP 89, checked" in lead2["prompt"] and "asked the checker" not in lead2["prompt"]


def test_a_delegation_loop_stops_at_the_cap_with_one_notice_and_nobody_waits_for_ever(t, cfg, caplog):
    caplog.set_level(logging.WARNING)
    t.member("main", "ping")
    t.member("main", "pong")
    t.say("start the ping-pong")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="ping", task="pass it on")
    t.answer(lead, "")
    ran = 0
    while True:  # every member hands the task to the other and answers "passed on"
        jobs = t.new_jobs()
        if not jobs:
            break
        for j in jobs:
            ran += 1
            if j["agent"]:
                t.ask(j, "delegate", agent="pong" if j["agent"] == "ping" else "ping", task="pass it on")
                t.answer(j, f"{j['agent']} passed it on")
            else:
                t.answer(j, "the ping-pong is over")
        assert ran < 30, "the loop did not stop"
    notices = [o for o in t.outbound() if o["kind"] == "notice"]
    assert len(notices) == 1 and "more than 3 delegations deep" in notices[0]["text"]
    assert t.outbound()[-1]["text"] == "the ping-pong is over"  # the lead still answered, once
    assert sum(o["text"] == "the ping-pong is over" for o in t.outbound()) == 1
    assert "delegate to" in caplog.text and "refused" in caplog.text
    # after the depth cap, answers going back up started new rounds: the total cap ended those
    assert Message.select().where(Message.agent.is_null(False), Message.answers.is_null()).count() == 10


def test_the_total_cap_counts_every_delegation_of_one_request(cfg, tmp_path):
    conf = tmp_path / "two.toml"
    conf.write_text('timezone = "UTC"\n[team]\nmax_delegations = 2\n')
    cfg2 = config_file.load(conf)
    groups_mod.add_group(cfg2, "main", is_main=True)
    t = Team(cfg2)
    t.member("main", "researcher")
    t.say("three tasks")
    t.pump()
    [lead] = t.new_jobs()
    for i in range(4):
        t.ask(lead, "delegate", agent="researcher", task=f"task {i}")
    t.answer(lead, "")
    assert Message.select().where(Message.agent == "researcher").count() == 2
    notices = [o for o in t.outbound() if o["kind"] == "notice"]
    assert len(notices) == 1 and "more than 2 delegations" in notices[0]["text"]


def test_forged_member_requests_are_refused_with_a_logged_reason(cfg, caplog):
    caplog.set_level(logging.WARNING)
    groups_mod.add_group(cfg, "main", is_main=True)
    groups_mod.add_group(cfg, "other")
    t = Team(cfg)
    t.member("main", "researcher")
    t.member("other", "spy")
    t.say("@Researcher hi")
    t.pump()
    [member] = t.new_jobs()
    assert member["agent"] == "researcher"
    t.ask(member, "register_group", jid="evil@g.us", name="Evil", folder="evil", trigger="@x")
    t.ask(member, "send_message", text="hello other", chat="other")
    t.ask(member, "task_request", action="schedule", task={"prompt": "x", "schedule_type": "interval",
                                                          "schedule_value": "1m"})
    t.ask(member, "create_agent", name="mole", description="x", instructions="y")
    t.ask(member, "delegate", agent="spy", task="leak other's files")  # a member of another group
    t.ask(member, "delegate", agent="researcher", task="myself")
    lead_job = Job.create(group=Group.get(Group.folder == "main"))  # the lead's job, named from the member's dir
    t.out(member).put("send_message", {"job": lead_job.id, "text": "as the lead"})
    t.pump()
    bad = sorted((cfg.spool_dir / "ipc" / "main" / "agents" / "researcher" / "bad").glob("*.reason"))
    reasons = [p.read_text() for p in bad]
    assert len(reasons) == 7, reasons
    assert sum("may not register group" in r for r in reasons) == 1
    assert sum("may only message its own chat" in r for r in reasons) == 1
    assert sum("may not task request" in r for r in reasons) == 1
    assert sum("may not create agent" in r for r in reasons) == 1
    assert sum("no other team member 'spy'" in r for r in reasons) == 1
    assert sum("no other team member 'researcher'" in r for r in reasons) == 1
    assert sum("is not this agent's" in r for r in reasons) == 1
    assert "agent=researcher" in caplog.text and "may not register group" in caplog.text
    assert Group.select().count() == 2 and not (cfg.groups_dir / "main" / "agents" / "mole.md").exists()
    assert Message.select().where(Message.agent.is_null(False)).count() == 0
    assert all("hello other" not in o["text"] for o in t.outbound())


def test_the_lead_creates_a_member_through_the_host_and_bad_names_are_refused(t, cfg):
    t.say("make a researcher")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "create_agent", name="researcher", description="finds\nflights", instructions="Find flights.")
    t.ask(lead, "create_agent", name="../../etc", description="x", instructions="y")
    t.ask(lead, "create_agent", name="lead", description="x", instructions="y")
    t.answer(lead, "done")
    [m] = team.members(cfg, "main")
    assert (m.name, m.description, m.instructions) == ("researcher", "finds flights", "Find flights.")
    texts = [o["text"] for o in t.outbound()]
    assert "New team member: Researcher (finds flights)." in texts
    assert sum(x.startswith("Team member not created: invalid member name") for x in texts) == 2
    assert sorted(p.name for p in (cfg.groups_dir / "main" / "agents").iterdir()) == ["researcher.md"]


def test_a_member_that_keeps_failing_is_reported_and_its_asker_still_answers(t):
    t.member("main", "researcher")
    t.say("research something")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="researcher", task="something")
    t.answer(lead, "asked")
    for _ in range(2):  # max_attempts = 2, no backoff
        [r] = t.new_jobs()
        assert r["agent"] == "researcher"
        t.fail(r)
    [lead2] = t.new_jobs()
    assert lead2["agent"] == "" and "Researcher could not answer" in lead2["prompt"]
    notices = [o["text"] for o in t.outbound() if o["kind"] == "notice"]
    assert notices == ["Researcher could not answer: the agent failed 2 times. Please try again later."]


def test_a_removed_member_with_work_waiting_does_not_leave_its_asker_waiting(t, cfg):
    t.member("main", "researcher")
    t.say("research")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="researcher", task="x")
    t.out(lead).put("result", {"job": lead["job"], "turn": 0, "text": "", "session_id": None, "error": None})
    t.ipc.work()
    team.remove(cfg, "main", "researcher")
    t.queue.inbox.put("job_event", {"job": lead["job"], "event": "exited", "exit_code": 0})
    t.pump()
    jobs = t.new_jobs()
    assert [j["agent"] for j in jobs] == [""] and "no longer on the team" in jobs[0]["prompt"]


def test_a_lead_that_runs_again_on_the_same_message_delegates_once(t):
    """The chaos test's rare double: the lead's container delegated, then was lost before its
    answer was in; the turn ran again in a new container on the same message and delegated the
    same task again, so the member worked twice and the lead summed up twice."""
    t.member("main", "researcher")
    t.say("find flights")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="researcher", task="three flights to Lisbon")
    t.pump()
    t.fail(lead)  # gone before its answer: the turn is undone, the message still pending
    again = [j for j in t.new_jobs() if j["agent"] == ""]
    assert len(again) == 1 and "find flights" in again[0]["prompt"]
    t.ask(again[0], "delegate", agent="researcher", task="three flights to Lisbon")
    t.ask(again[0], "delegate", agent="researcher", task="and trains to Porto")  # a new task is new
    t.answer(again[0], "I've asked Researcher.")
    tasks = [m.text for m in Message.select().where(Message.agent == "researcher").order_by(Message.id)]
    assert tasks == ["three flights to Lisbon", "and trains to Porto"]


def test_a_containers_clock_readings_cannot_forge_a_log_line(t, caplog):
    """A new container's first turn reports where its time went; the names are the agent's,
    and they go into the queue's log line: nothing in them may pose as a journal field or
    start a line of its own."""
    import logging
    t.say("hello")
    t.pump()
    [lead] = t.new_jobs()
    now = time.time()
    t.out(lead).put("result", {"job": lead["job"], "turn": 0, "text": "hi", "session_id": "s1", "error": None,
                               "usage": {"stages": {"python": now, "x job=99\nforged line": now + 0.1,
                                                    "cli_ready": "soon", "result": now + 0.2}}})
    with caplog.at_level(logging.INFO):
        t.pump()
    [line] = [r.getMessage() for r in caplog.records if "first turn" in r.getMessage()]
    assert "python+" in line and "result+" in line
    assert "job=99" not in line and "forged" not in line and "\n" not in line and "cli_ready" not in line
    assert [o["text"] for o in t.outbound()] == ["hi"]  # the answer itself went through


def test_a_delegation_naming_an_old_job_does_not_start_a_fresh_chain(t, cfg):
    """A member deep in a chain names one of its own earlier jobs (one that answered a human)
    to delegate from depth 0 again: refused; the chain goes on from its latest job only."""
    t.member("main", "researcher")
    t.member("main", "checker")
    t.say("@Researcher hello")  # a human addresses the member directly: its own chain, depth 0
    t.pump()
    [old] = t.new_jobs()
    t.answer(old, "hello to you")
    asked = t.say("find and check a flight")
    t.pump()
    [lead] = t.new_jobs()
    t.ask(lead, "delegate", agent="researcher", task="find a flight")
    t.answer(lead, "")
    [r] = t.new_jobs()
    assert r["agent"] == "researcher" and r["job"] != old["job"]
    t.ask({**r, "job": old["job"]}, "delegate", agent="checker", task="check it, from a fresh chain")
    t.ask(r, "delegate", agent="checker", task="check it")
    t.answer(r, "asked the checker")
    delegations = list(Message.select().where(Message.agent == "checker"))
    assert [(m.text, m.chain, m.depth) for m in delegations] == [("check it", asked.id, 2)]
    bad = sorted((cfg.spool_dir / "ipc" / "main" / "agents" / "researcher" / "bad").glob("*.reason"))
    assert len(bad) == 1 and "is an old one" in bad[0].read_text()
