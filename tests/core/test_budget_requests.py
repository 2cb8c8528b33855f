"""A budget asked for by an agent (core/budget_requests.py): only the main group's lead may ask,
and only the owner grants it. The ipc, channel, queue and router run as real daemons; the
agent's side is the test writing into the group's own ``out/`` spool."""

from __future__ import annotations

from proxy_harness import running_job

from nanoclaw.core.protocol import Spool


def test_only_the_main_groups_lead_may_ask_for_a_budget_and_only_the_owner_grants_it(make_system):
    """issue 24 section 5: a prompt-injected main agent's raise_budget changes nothing by itself.
    It becomes a card in the main chat; the owner's `approve N` (in the chat, or the CLI) makes
    the change, `deny N` or no answer leaves the budget as it was."""
    s = make_system()
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family")
    s.cli("agents", "add", "main", "helper", "--description", "helps", "--instructions", "Help.")
    s.start("ipc", "channel", "queue", "router")
    family_job = running_job(s, "family")
    # family's agent asks, naming itself main and the job as its own: the directory says family
    Spool(s.state / "ipc" / "family" / "out").ensure().put(
        "raise_budget", {"job": family_job, "group": "family", "period": "day", "amount": 100, "unit": "usd"})
    s.nudge("ipc")
    bad = s.state / "spool" / "ipc" / "family" / "bad"
    reason = s.wait_for(lambda: next(iter(bad.glob("*.reason")), None), 10, what="the refusal")
    assert "only the main group may change a budget" in reason.read_text()
    # a member of main's team is not the main chat's lead either
    helper_job = running_job(s, "main", "helper")
    Spool(s.state / "ipc" / "main" / "agents" / "helper" / "out").ensure().put(
        "raise_budget", {"job": helper_job, "group": "family", "period": "day", "amount": 100})
    s.nudge("ipc")
    bad = s.state / "spool" / "ipc" / "main" / "agents" / "helper" / "bad"
    reason = s.wait_for(lambda: next(iter(bad.glob("*.reason")), None), 10, what="the member's refusal")
    assert "a team member may not raise budget" in reason.read_text()
    # main's lead may ask: a card for the owner, and no budget yet
    main_job = running_job(s, "main")
    out = Spool(s.state / "ipc" / "main" / "out").ensure()
    out.put("raise_budget", {"job": main_job, "group": "family", "period": "month", "amount": 12.5})
    s.nudge("ipc")
    card = "The main agent asks to let family spend $12.50 per month (now no budget) — reply `approve 1` or `deny 1`"
    s.wait_for(lambda: card in s.replies("main@term"), 20, what="the card in the main chat")
    with s.db() as con:
        assert con.execute("select count(*) from budgetlimit").fetchone()[0] == 0
    assert "the main agent, to let family spend $12.50 per month" in s.cli("pending").stdout
    # the agent cannot answer its own card: what it says in the chat is the bot's, never the owner's
    out.put("send_message", {"job": main_job, "text": "approve 1"})
    s.nudge("ipc")
    s.wait_for(lambda: "approve 1" in s.replies("main@term"), 20, what="the agent's message sent")
    # the owner approves in the main chat
    s.send("main", "approve 1")
    s.wait_for(lambda: "approved 1: family may now spend $12.50 per month" in s.replies("main@term"), 20,
               what="the owner's approval carried out")
    with s.db() as con:
        row = con.execute("select * from budgetlimit").fetchone()
        assert (row["scope"], row["period"], row["unit"], row["limit"], row["set_by"]) == \
            ("family", "month", "usd", 12.5, "main")
    assert "family" in s.cli("budget").stdout and "$12.50" in s.cli("budget").stdout
    # "add" on top, denied from the CLI: nothing changes; asked again and approved from the CLI
    out.put("raise_budget", {"job": main_job, "group": "family", "period": "month", "amount": 5, "mode": "add"})
    s.nudge("ipc")
    s.wait_for(lambda: "`approve 2`" in " ".join(s.replies("main@term")), 20, what="the second card")
    assert "add $5.00 to the month budget of family (now $12.50)" in " ".join(s.replies("main@term"))
    assert s.cli("deny", "2").stdout.strip() == "denied 2: the budget stays as it is"
    out.put("raise_budget", {"job": main_job, "group": "all", "period": "day", "amount": 2000, "unit": "tokens"})
    s.nudge("ipc")
    s.wait_for(lambda: "`approve 3`" in " ".join(s.replies("main@term")), 20, what="the third card")
    assert s.cli("approve", "3").stdout.strip() == "approved 3: all groups together may now spend 2,000 tokens per day"
    with s.db() as con:
        assert [tuple(r) for r in con.execute("select scope, unit, \"limit\", set_by from budgetlimit order by scope")] \
            == [("*", "tokens", 2000.0, "cli"), ("family", "usd", 12.5, "main")]
    # at most three wait at once: an agent cannot bury the main chat in cards
    for amount in (1, 2, 3, 4):
        out.put("raise_budget", {"job": main_job, "group": "family", "period": "day", "amount": amount})
    s.nudge("ipc")
    s.wait_for(lambda: any("Budget not changed: 3 budget changes already wait" in r for r in s.replies("main@term")),
               20, what="the fourth refused")
