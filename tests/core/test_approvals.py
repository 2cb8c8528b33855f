"""Unknown chats and senders ask the owner first (issue 16 §1), through the real daemons.

The channel takes a message from a chat no group is registered for on its socket, as the
WhatsApp backend hands one over (``chat`` instead of ``group``, with the chat's name and
size), so these tests drive exactly the path a WhatsApp message takes after the network.
"""

from __future__ import annotations

import json
import os

import pytest

LISBON = "120363000000000777@g.us"
CARD_END = "— reply `approve {n}` or `deny {n}`"


def ask(s, chat: str, text: str, *, name: str = "", members: int | None = None,
        sender: str = "491700000009@s.whatsapp.net", sender_name: str = "Alice") -> dict:
    """A message from a chat network's chat that no group is registered for."""
    req = {"op": "inbound", "chat": chat, "text": text, "id": os.urandom(8).hex(), "sender": sender,
           "sender_name": sender_name, "chat_name": name}
    if members is not None:
        req["members"] = members
    reply = s.request("channel", req)
    assert reply.get("ok"), reply
    return reply


def cards(s) -> list[str]:
    """What nanoclaw queued for the main chat (the outbox is written with the request)."""
    with s.db() as con:
        return [r["text"] for r in con.execute(
            "select text from outbox where chat='main@term' and key like 'approval:%:card' order by id")]


def answers(s) -> list[str]:
    with s.db() as con:
        return [r["text"] for r in con.execute(
            "select text from outbox where chat='main@term' and key like 'approval:answer:%' order by id")]


def rows(s, sql: str, *args) -> list[tuple]:
    with s.db() as con:
        return [tuple(r) for r in con.execute(sql, args)]


def fresh(make_system, **settings):
    s = make_system(**settings)
    s.cli("groups", "add", "main", "--main")
    s.start("channel", "queue", "router")
    return s


def test_an_unknown_chat_asks_once_with_one_card(make_system):
    s = fresh(make_system)
    ask(s, LISBON, "just chatting", name="Lisbon trip", members=5)  # no trigger: nothing, nothing kept
    assert cards(s) == [] and rows(s, "select count(*) from message where chat=?", LISBON) == [(0,)]
    ask(s, LISBON, "@Andy where do we eat tonight?", name="Lisbon trip", members=5)
    assert cards(s) == ["Lisbon trip (5 members) asks for @Andy " + CARD_END.format(n=1)]
    ask(s, LISBON, "@Andy hello??", name="Lisbon trip", members=5)  # kept for the replay, no second card
    assert len(cards(s)) == 1
    s.wait_for(lambda: "Lisbon trip (5 members) asks for @Andy" in " ".join(s.replies("main@term")), 20,
               what="the card delivered to the main chat")
    assert rows(s, "select count(*) from message where chat=?", LISBON) == [(2,)]
    assert rows(s, 'select folder from "group" order by folder') == [("main",)]
    assert rows(s, "select count(*) from job") == [(0,)]
    listing = s.cli("pending").stdout
    assert "   1  chat   Lisbon trip (5 members)" in listing and "@Andy where do we eat tonight?" in listing
    assert "requests: 1 waiting for your answer (nanoclaw pending)" in s.cli("status", check=False).stdout


def test_hostile_names_are_cleaned_in_the_card(make_system):
    s = fresh(make_system)
    ask(s, "666@g.us", "@Andy hi", name="Evil\n`approve 9`\u202e\u200b" + "x" * 200, members=3)
    ask(s, "491701112222@s.whatsapp.net", "@andy hi", sender="491701112222@s.whatsapp.net",
        sender_name="Bob\r\nreply approve 1")
    first, second = cards(s)
    assert "\n" not in first and "`approve 9`" not in first and "\u202e" not in first and "\u200b" not in first
    assert first.startswith("Evil 'approve 9' xxx") and "…" in first and len(first) < 160
    assert second == "Bob reply approve 1 (+491701112222, direct chat) asks for @Andy " + CARD_END.format(n=2)


def test_denial_leaves_nothing_and_is_remembered_for_a_week(make_system):
    s = fresh(make_system)
    ask(s, LISBON, "@Andy hi", name="Lisbon trip", members=5)
    s.send("main", "deny 1")
    s.wait_for(lambda: answers(s), 20, what="the answer to deny 1")
    [answer] = answers(s)
    assert answer.startswith("denied 1: Lisbon trip (5 members) gets no answer") and "\n" not in answer
    ask(s, LISBON, "@Andy please?", name="Lisbon trip", members=5)  # within the week: no card
    assert len(cards(s)) == 1
    assert rows(s, 'select folder from "group"') == [("main",)]
    assert rows(s, "select count(*) from message where chat=?", LISBON) == [(0,)]  # nothing kept
    assert rows(s, "select count(*) from job") == [(0,)]  # "deny 1" never went to the main agent
    # the owner may lift it; then the chat can ask again
    assert "may ask again" in s.cli("pending", "forget", "1").stdout
    ask(s, LISBON, "@Andy third time", name="Lisbon trip", members=5)
    assert cards(s)[-1].endswith(CARD_END.format(n=2))


def test_an_unanswered_request_expires_and_leaves_nothing(make_system):
    s = fresh(make_system, approval_timeout=1.5)
    ask(s, LISBON, "@Andy hi", name="Lisbon trip", members=5)
    # the queue marks it at its deadline (its work() returns it): no polling loop
    s.wait_for(lambda: rows(s, "select status, decided_by from request") == [("expired", "expiry")], 20,
               what="the request to expire")
    assert rows(s, "select count(*) from message where chat=?", LISBON) == [(0,)]
    late = s.cli("approve", "1", check=False)
    assert late.returncode == 2 and "request 1 expired at" in late.stderr and "\n" not in late.stderr.strip()
    assert rows(s, 'select folder from "group"') == [("main",)] and rows(s, "select count(*) from job") == [(0,)]
    assert len(cards(s)) == 1
    assert "requests: 0 waiting" in s.cli("status", check=False).stdout


def test_bad_answers_get_one_clear_line(make_system):
    s = fresh(make_system)
    ask(s, LISBON, "@Andy hi", name="Lisbon trip", members=5)
    unknown = s.cli("approve", "99", check=False)
    assert unknown.returncode == 2 and unknown.stderr.strip() == "nanoclaw: there is no request 99 (see: nanoclaw pending)"
    bad_folder = s.cli("approve", "1", "--folder", "../x", check=False)
    assert bad_folder.returncode == 2 and "invalid folder name" in bad_folder.stderr
    taken = s.cli("approve", "1", "--folder", "main", check=False)
    assert taken.returncode == 2 and "already exists" in taken.stderr
    assert s.cli("deny", check=False).returncode == 2
    s.cli("deny", "1")
    twice = s.cli("pending", "deny", "1", check=False)
    assert twice.returncode == 2 and "request 1 was denied at" in twice.stderr
    # the same in the main chat, answered by nanoclaw in one line each
    for text in ("approve 99", "approve 1", "approve 1 as ../x"):
        s.send("main", text)
    s.wait_for(lambda: len(answers(s)) == 3, 20, what="three answers")
    assert answers(s) == ["approve 99: there is no request 99 (see: nanoclaw pending)",
                          answers(s)[1], answers(s)[2]]
    assert answers(s)[1].startswith("approve 1: request 1 was denied at")
    assert answers(s)[2].startswith("approve 1: request 1 was denied at")  # decided before the folder is looked at
    assert rows(s, "select count(*) from job") == [(0,)]
    assert all("\n" not in a for a in answers(s))


def test_caps_three_per_chat_and_twenty_in_all(make_system):
    s = fresh(make_system)
    s.cli("groups", "add", "family")
    s.cli("groups", "set", "family", "--policy", "ask")
    for who in ("a", "b", "c", "d"):
        s.send("family", "@Andy hi", sender=f"{who}@term")
    s.send("family", "@Andy again", sender="a@term")  # the same sender: still one request
    assert [c.split(" asks")[0] for c in cards(s)] == ["a in family", "b in family", "c in family"]
    for i in range(30):
        ask(s, f"{1000 + i}@g.us", "@Andy hi", name=f"Chat {i}", members=2)
    assert len(cards(s)) == 20
    assert rows(s, "select count(*) from request where status='pending'") == [(20,)]
    assert "20 waiting" in s.cli("status", check=False).stdout
    assert "requests already wait; no card" in s.log("channel")


def test_an_agent_request_to_approve_is_refused(make_system):
    from nanoclaw.core.protocol import Spool
    s = fresh(make_system)
    s.start("ipc")
    ask(s, LISBON, "@Andy hi", name="Lisbon trip", members=5)
    out = Spool(s.state / "ipc" / "main" / "out").ensure()
    # as a container would write them (the protocol module itself refuses to make such files)
    for i, kind in enumerate(("approve", "approval", "deny"), 1):
        tmp = out.tmp / f"0000000000000000000{i}.1.{i}.{kind}"
        tmp.write_text(json.dumps({"v": 1, "type": kind, "body": {"job": 1, "request": 1, "folder": "lisbon"}}))
        os.rename(tmp, out.new / tmp.name)
    s.nudge("ipc")
    bad = s.state / "spool" / "ipc" / "main" / "bad"
    s.wait_for(lambda: len(list(bad.glob("*.reason"))) == 3, 20, what="the forged requests refused")
    reasons = sorted(p.read_text() for p in bad.glob("*.reason"))
    assert all("unknown type" in r for r in reasons), reasons
    assert "refused" in s.log("ipc") or "unknown type" in s.log("ipc")
    assert rows(s, "select status from request") == [("pending",)]
    assert rows(s, 'select folder from "group"') == [("main",)]


@pytest.mark.podman
def test_approve_from_the_cli_registers_the_chat_and_its_agent_answers(system):
    ask(system, LISBON, "@Andy where do we eat tonight?", name="Lisbon trip", members=5)
    out = system.cli("approve", "1").stdout
    assert out.strip() == "approved 1: Lisbon trip (5 members) is now group lisbon-trip; its message is replayed"
    assert (system.state / "groups" / "lisbon-trip" / "CLAUDE.md").exists()  # as `groups add` makes it
    assert "lisbon-trip" in system.cli("groups", "list").stdout

    def reply():
        found = rows(system, "select text from outbox where chat=? and kind='reply'", LISBON)
        return found
    # the chat's own network is not enabled in the tests' channel: the reply waits in the outbox
    assert system.wait_for(reply, 90, what="the agent's answer") == [("echo: where do we eat tonight?",)]
    again = system.cli("approve", "1", check=False)
    assert again.returncode == 2 and "request 1 was already approved at" in again.stderr
    assert "(group lisbon-trip)" in again.stderr


@pytest.mark.podman
def test_approve_in_the_main_chat_and_no_agent_can_approve(system):
    stranger = "friend@term"  # a chat the tests' channel can deliver to
    ask(system, stranger, "@Andy hello there", sender="friend@term", sender_name="Friend")
    # the main agent sends "approve 1" into the main chat: ours, never the owner's answer
    w = system.watch("main")
    system.send("main", "send approve 1")
    assert system.wait_for(lambda: "sent" in system.replies("main@term"), 60, what="the agent's reply")
    assert rows(system, "select status from request") == [("pending",)]
    system.send("main", "approve 1 as pals")
    said = [w.reply(30)]
    while not said[-1].startswith("approved"):  # the card and the agent's own lines came first
        said.append(w.reply(30))
    assert said[-1] == "approved 1: Friend (direct chat) is now group pals; its message is replayed"
    assert rows(system, "select folder, decided_by from request") == [("pals", "main")]
    system.wait_for(lambda: "echo: hello there" in system.replies(stranger), 90, what="the replayed answer")
    prompts = system.state / "groups" / "main" / "prompts"
    assert not any("approve 1 as pals" in p.read_text() for p in prompts.iterdir())  # never the agent's


@pytest.mark.podman
def test_an_ask_group_asks_for_an_unknown_sender(system):
    system.cli("groups", "add", "family")
    system.cli("groups", "set", "family", "--policy", "ask")
    w = system.watch("family")
    system.send("family", "@Andy may I?", sender="carol@term")
    assert cards(system) == ["carol in family asks for @Andy " + CARD_END.format(n=1)]
    system.send("family", "@Andy it's me")  # the owner's own message: never asks, always heard
    assert w.reply(90) == "echo: it's me"  # carol's came first and was held, not answered
    system.send("family", "@Andy please", sender="carol@term")  # still waiting: no second card
    assert len(cards(system)) == 1
    system.send("main", "approve 1")
    # the agent had passed carol's message (as context of the owner's turn): it is replayed,
    # in one turn with what she said while she waited (the scripted agent answers the last)
    assert w.reply(90) == "echo: may I?"
    prompts = system.state / "groups" / "family" / "prompts"
    last = max(prompts.iterdir(), key=lambda p: p.stat().st_mtime).read_text()
    assert ">@Andy please</message>" in last
    assert last.rstrip().endswith(">@Andy may I?</message>\n</messages>")
    assert rows(system, "select text from message where channel_id='replay:1'") == [("@Andy may I?",)]
    assert rows(system, "select a.sender from allowedsender a join \"group\" g on g.id = a.group_id "
                        "where g.folder = 'family'") == [("carol@term",)]
    assert not (system.confdir / "allowlists" / "family.json").exists()  # the owner's file is the owner's
    assert "policy=ask (+1 approved)" in system.cli("groups", "list").stdout
    system.send("family", "@Andy and now?", sender="carol@term")
    assert w.reply(60) == "echo: and now?"
    assert len(cards(system)) == 1


def test_an_older_database_keeps_each_groups_behaviour_as_its_policy(offline_system):
    """Groups from before policies: an allowlist file means allowlist, none means open."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family")
    (s.confdir / "allowlists").mkdir()
    (s.confdir / "allowlists" / "family.json").write_text('{"senders": ["bob@term"]}')
    with s.db() as con:  # as the database was before this change (and before schema versions)
        con.execute('alter table "group" drop column policy')
        con.execute("drop table request")
        con.execute("drop table allowedsender")
        con.execute("pragma user_version = 0")
    assert "nanoclaw migrate" in s.cli("groups", "list", check=False).stderr  # not brought up silently
    s.cli("migrate")
    listing = s.cli("groups", "list").stdout
    assert "family" in listing and "policy=allowlist" in listing.split("family", 1)[1].splitlines()[0]
    assert "policy=open" in [line for line in listing.splitlines() if line.startswith("main")][0]
    assert rows(s, "select count(*) from request") == [(0,)]
    out = s.cli("groups", "set", "family", "--policy", "ask").stdout
    assert out.startswith("family: policy ask")
    assert "policy=ask" in s.cli("groups", "list").stdout
    bad = s.cli("groups", "set", "family", "--policy", "everyone", check=False)
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_the_owners_answer_is_read_strictly(tmp_path):
    from nanoclaw.core import approvals
    from nanoclaw.daemons.queue import approval_answers
    from nanoclaw.core.models import Group, open_db
    p = approval_answers.parse_command
    assert p("approve 7") == ("approve", 7, None)
    assert p("  Approve #7. ") == ("approve", 7, None)
    assert p("approve 7 as lisbon") == ("approve", 7, "lisbon")
    assert p("@Andy deny 12", "@Andy") == ("deny", 12, None)
    for text in ("approve", "approve seven", "please approve 7", "approve 7 and 8", "approve 7 as a b",
                 "approve 7\nrm -rf /", "deny -1"):
        assert p(text, "@Andy") is None, text
    c = approvals.clean
    assert c("A\u202eB\u200bC\nD\tE `x`") == "A B C D E 'x'"
    assert len(c("x" * 500)) == approvals.NAME_CAP and c("x" * 500).endswith("…")
    open_db(tmp_path / "db.sqlite")
    assert approvals.derive_folder("Lisbon trip!! 🇵🇹", 3) == "lisbon-trip"
    assert approvals.derive_folder("Família São João", 3) == "familia-sao-joao"
    assert approvals.derive_folder("🎉🎉", 3) == "chat-3"
    assert approvals.derive_folder("Global", 3) == "global-chat"
    Group.create(jid="x@g.us", name="x", folder="lisbon-trip")
    assert approvals.derive_folder("Lisbon trip", 4) == "lisbon-trip-2"
