"""The owner stops a turn, revokes a sender, raises a budget for today, asks for the status (issue 28).

The stop of a real agent is tested with the real SDK in the real image against the fake API:
a scripted Bash tool call that would run for minutes is interrupted from the main chat, and
the same warm container answers the next message. The kill fallback is tested with the
scripted test agent, which knows nothing of stop files (as an agent that ignores them).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from fake_anthropic import all_text

STOPPED_MAIN = "Stopped main's turn; the session is kept."


def rows(s, sql: str, *args) -> list[tuple]:
    with s.db() as con:
        return [tuple(r) for r in con.execute(sql, args)]


def owner_answers(s) -> list[str]:
    return [r[0] for r in rows(s, "select text from outbox where key like 'owner:answer:%' order by id")]


def podman_out(*args: str) -> str:
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=True).stdout


def sleeping(name: str) -> bool:
    """Whether the container runs the scripted Bash command (a five-minute wait)."""
    r = subprocess.run(["podman", "top", name, "args"], capture_output=True, text=True)
    return r.returncode == 0 and "time.sleep(300)" in r.stdout


# Not `sleep 300`: the CLI refuses a long plain sleep (it would have the model run it in the background).
LONG_BASH = {"tool_use": {"name": "Bash", "input": {"command": "python3 -c 'import time; time.sleep(300)'",
                                                    "description": "a long build"}}}


def tool_said(fake_api) -> str:
    """What the scripted tool call came back as, if it did (for a failure's message)."""
    from fake_anthropic import content_text, last_user_content, tool_results
    return " | ".join(content_text(t["content"]) for r in fake_api.message_requests()
                      for t in tool_results(last_user_content(r["body"])))


@pytest.mark.podman
def test_the_owner_stops_a_real_agents_turn_and_the_warm_container_answers_next(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=60.0)
    (s.confdir / "allowlists").mkdir(exist_ok=True)
    (s.confdir / "allowlists" / "main.json").write_text(json.dumps({"senders": ["owner@term"]}))
    s.cli("groups", "set", "main", "--policy", "allowlist")
    s.cli("groups", "add", "family", "--name", "Family", "--no-trigger")
    fake_api.then(LONG_BASH)
    w = s.watch("main")
    s.send("main", "build it")
    s.wait_for(lambda: sleeping("nanoclaw-main-1") or tool_said(fake_api), 120, what="the scripted Bash running")
    assert sleeping("nanoclaw-main-1"), tool_said(fake_api)
    container = podman_out("inspect", "-f", "{{.Id}}", "nanoclaw-main-1").strip()

    # Not the owner: a sender the main chat does not admit says stop; nothing happens.
    s.send("main", "stop", sender="intruder@term")
    s.barrier("family")  # through the pipeline (another group's agent answers meanwhile)
    assert rows(s, "select stopped_at, status from turn where job_id = 1") == [(None, "sent")]
    assert owner_answers(s) == [] and sleeping("nanoclaw-main-1")

    t0 = time.monotonic()
    s.send("main", "stop")
    s.wait_for(lambda: rows(s, "select status from turn where job_id = 1 and seq = 0") == [("done",)], 10,
               interval=0.05, what="the stopped turn to end")
    took = time.monotonic() - t0
    assert took < 5.0, f"the turn ended {took:.2f}s after the stop"
    print(f"stop to turn ended: {took:.2f}s")
    # The one line the chat hears, and the stopped turn's last state: "silent", the state that
    # takes a WhatsApp status reaction away and ends "typing…" (test_reactions covers that step).
    heard, last, deadline = [], None, time.time() + 10
    while not (heard and last):
        event = w.next(max(0.1, deadline - time.time()))
        if event.get("op") == "progress" and (event.get("job"), event.get("turn")) == (1, 0) \
                and event.get("state") in ("replied", "silent", "failed", "waiting"):
            last = event["state"]
        if event.get("op") == "message" and event.get("from") == "assistant":
            heard.append(event["text"])
    assert heard == [STOPPED_MAIN] and last == "silent", (heard, last)
    assert not sleeping("nanoclaw-main-1")  # the tool's process was ended with the turn
    assert rows(s, "select status from job where id = 1") == [("running",)]  # the container stays warm
    assert "killing its container" not in s.log("queue")

    fake_api.then({"text": "back to work"})
    s.send("main", "what now?")
    assert w.reply(60) == "back to work"
    assert podman_out("inspect", "-f", "{{.Id}}", "nanoclaw-main-1").strip() == container
    assert rows(s, "select count(*) from job where group_id = (select id from \"group\" where folder='main')") \
        == [(1,)]
    main_requests = [r for r in fake_api.message_requests() if "what now?" in all_text(r["body"])
                     or "build it" in all_text(r["body"])]
    first, last = main_requests[0], main_requests[-1]
    assert "what now?" in all_text(last["body"]) and "build it" in all_text(last["body"])  # the session went on
    assert first["headers"]["x-claude-code-session-id"] == last["headers"]["x-claude-code-session-id"]
    # the chat heard: the stop's line and the next answer, nothing of the stopped turn
    assert s.replies("main@term") == [STOPPED_MAIN, "back to work"]

    # From the CLI: the same for the next long turn.
    fake_api.then(LONG_BASH, {"text": "done at last"})
    s.send("main", "build it again")
    s.wait_for(lambda: sleeping("nanoclaw-main-1"), 60, what="the second Bash running")
    t0 = time.monotonic()
    out = s.cli("stop", "main").stdout
    assert out.strip() == STOPPED_MAIN
    s.wait_for(lambda: rows(s, "select status from turn where job_id = 1 and seq = 2") == [("done",)], 10,
               interval=0.05, what="the second stopped turn to end")
    assert time.monotonic() - t0 < 5.0
    assert s.cli("stop", "family").stdout.strip() == "Nothing is running in family."
    bad = s.cli("stop", "nobody", check=False)
    assert bad.returncode == 2 and bad.stderr.strip() == "nanoclaw: no group 'nobody' (see: nanoclaw groups list)"
    s.send("main", "and now?")
    assert w.reply(60) == "done at last"
    assert podman_out("inspect", "-f", "{{.Id}}", "nanoclaw-main-1").strip() == container


@pytest.mark.podman
def test_a_stop_the_agent_ignores_kills_its_container_and_only_the_owner_stops(system):
    """The scripted agent never reads stop files: the queue kills the container after the grace."""
    s = system
    (s.confdir / "allowlists").mkdir(exist_ok=True)
    (s.confdir / "allowlists" / "main.json").write_text(json.dumps({"senders": ["owner@term"]}))
    s.cli("groups", "set", "main", "--policy", "allowlist")
    s.cli("groups", "add", "family", "--name", "Family")
    fam = s.watch("family")
    s.send("family", "@Andy sleep 120")
    s.wait_for(lambda: rows(s, "select status from job where id = 1") == [("running",)], 60,
               what="family's job running")
    w = s.watch("main")
    s.send("main", "send stop family")  # main's agent says "stop family" in the main chat: a bot echo
    s.wait_for(lambda: "sent" in s.replies("main@term"), 60, what="the main agent's reply")
    assert "stop family" in s.replies("main@term")  # the echo is there, as a bot message
    s.send("main", "stop family", sender="intruder@term")  # a sender the main chat does not admit
    s.barrier("main")
    assert rows(s, "select stopped_at from turn where job_id = 1") == [(None,)]
    assert owner_answers(s) == [] and rows(s, "select status from job where id = 1") == [("running",)]

    t0 = time.monotonic()
    s.send("main", "stop family")
    said = w.reply(30)
    while said != "Stopped family's turn; the session is kept.":
        said = w.reply(30)
    s.wait_for(lambda: rows(s, "select status from job where id = 1")[0][0] in ("done", "stopped"), 30,
               what="family's job ended by the kill")
    assert time.monotonic() - t0 < 15
    assert "its stopped turn did not end within 4s; killing its container" in s.log("queue")
    assert "the owner stopped its turn and it did not end" in s.log("runner")
    # Its message counts as answered (no retry of the stopped work), with no failure counted.
    [(cursor, failures)] = rows(s, "select c.last_message_id, c.failures from cursor c join \"group\" g "
                                   "on g.id = c.group_id where g.folder = 'family' and c.agent = ''")
    assert failures == 0 and cursor == rows(s, "select last_message_id from turn where job_id = 1")[0][0]
    s.send("family", "@Andy hello again")
    assert fam.reply(90) == "echo: hello again"  # a new container, the stopped "sleep" not run again
    told = [line for p in (s.state / "groups" / "main" / "prompts").iterdir() for line in p.read_text().splitlines()
            if line.startswith('<message sender="owner@term"') and line.endswith(">stop family</message>")]
    assert told == []  # the owner's stop never reached the main agent

    # status in the main chat: the summary, never the agent's
    s.send("main", "status")
    said = w.reply(30)
    while not said.startswith("groups:"):
        said = w.reply(30)
    assert "agents:" in said and "usage:    today" in said and "requests:" in said
    assert not any(">status</message>" in p.read_text() for p in (s.state / "groups" / "main" / "prompts").iterdir())


def fresh(make_system):
    s = make_system()
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family", "--name", "Family")
    s.cli("groups", "set", "family", "--policy", "ask")
    s.start("channel", "queue", "router")
    return s


def test_revoke_an_approved_sender_from_the_cli_and_the_main_chat(make_system):
    s = fresh(make_system)
    for n, who in ((1, "carol@term"), (2, "dave@term")):
        s.send("family", "@Andy may I?", sender=who)
        s.wait_for(lambda n=n: rows(s, "select count(*) from request") == [(n,)], 20, what="the request")
        s.cli("approve", str(n))
    assert rows(s, "select sender from allowedsender order by id") == [("carol@term",), ("dave@term",)]
    listing = s.cli("pending", "revoke").stdout
    assert "[carol@term] in family (request 1)" in listing and "[dave@term] in family (request 2)" in listing

    out = s.cli("pending", "revoke", "carol@term").stdout
    assert out.strip().startswith("revoked: ") and "carol@term" in out
    assert rows(s, "select sender from allowedsender") == [("dave@term",)]
    missing = s.cli("pending", "revoke", "carol@term", check=False)
    assert missing.returncode == 2 and "no approved sender 'carol@term'" in missing.stderr

    s.send("main", "revoke #2")
    s.wait_for(lambda: len(owner_answers(s)) == 1, 20, what="the owner's answer")
    assert owner_answers(s)[0].startswith("revoked: ") and rows(s, "select count(*) from allowedsender") == [(0,)]
    s.send("main", "revoke nobody")
    s.wait_for(lambda: len(owner_answers(s)) == 2, 20, what="the second answer")
    assert owner_answers(s)[1] == "revoke: no approved sender 'nobody' (see: nanoclaw pending revoke)"
    # carol asks again: a new card
    s.send("family", "@Andy again?", sender="carol@term")
    s.wait_for(lambda: rows(s, "select count(*) from request where status='pending'") == [(1,)], 20,
               what="carol's new request")
    # none of it reached an agent: main never had a job
    assert rows(s, "select count(*) from job j join \"group\" g on g.id = j.group_id where g.folder='main'") \
        == [(0,)]


def test_status_in_the_main_chat_is_the_summary_and_never_the_agents(make_system):
    s = fresh(make_system)
    s.cli("budget", "set", "main", "day", "2")
    s.send("main", "@Andy status")
    s.wait_for(lambda: owner_answers(s), 20, what="the status answer")
    [text] = owner_answers(s)
    lines = text.splitlines()
    assert lines[0] == "groups:   2: family, main (main)"
    assert "agents:   0 running, 0 queued" in lines
    assert "budgets:  main $2.00 per day, 0% used" in lines
    assert any(line.startswith("usage:    today $0.00 in 0 API call(s)") for line in lines)
    s.send("main", "status please")  # not the command: for the agent
    s.wait_for(lambda: rows(s, "select count(*) from job") == [(1,)], 20, what="the agent's job")
    assert len(owner_answers(s)) == 1


def test_a_raise_for_today_lapses_at_the_owners_midnight(make_system):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    from nanoclaw.core import config as config_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import open_db
    s = make_system(timezone="Europe/Berlin")
    s.cli("groups", "add", "main", "--main")
    s.cli("budget", "set", "main", "day", "1")
    refused = s.cli("budget", "raise", "main", "month", "2", "--today", check=False)
    assert refused.returncode == 2 and "main has no month usd budget to raise" in refused.stderr
    out = s.cli("budget", "raise", "main", "day", "2", "--today").stdout.strip()
    midnight = usage.resets_at(config_mod.Config(timezone="Europe/Berlin"), "day")
    assert out == f"main: $3.00 per day until {midnight:%Y-%m-%d} 00:00 Europe/Berlin (today only; then as before)"
    assert "$3.00" in s.cli("budget", "list").stdout and "(cli, today only)" in s.cli("budget", "list").stdout
    assert "budgets:  main $3.00 per day, 0% used (today only)" in s.cli("status", check=False).stdout
    # the clock moved: just before the owner's midnight the raise holds, from midnight on it is gone
    open_db(s.state / "nanoclaw.db")
    cfg = config_mod.Config(timezone="Europe/Berlin")
    at = midnight.timestamp()
    assert [lim.limit for lim in usage.limits(cfg, "main", at=at - 1)] == [3.0]
    assert [lim.limit for lim in usage.limits(cfg, "main", at=at)] == [1.0]
    assert [lim.source for lim in usage.limits(cfg, "main", at=at + 3600)] == ["cli"]
    # a spend of $2 today is within the raise, and over the budget once it lapsed
    usage.record(cfg, "main", "", None, usage.Counts("claude-sonnet-4-5", 0, 0, 0, 0, seen=True), False, at - 60)
    assert usage.exceeded(cfg, "main", at=at - 1, spent_of=lambda *a: usage.Spent(2.0, 0, 0)) is None
    over = usage.exceeded(cfg, "main", at=at + 60, spent_of=lambda *a: usage.Spent(2.0, 0, 0))
    assert over is not None and over.limit.limit == 1.0
    assert datetime.fromtimestamp(at, ZoneInfo("Europe/Berlin")).strftime("%H:%M") == "00:00"
    # clear drops the day's raise with the override
    s.cli("budget", "clear", "main", "day")
    assert "no budgets" in s.cli("budget", "list").stdout
