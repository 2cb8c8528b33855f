"""Budgets at the credential proxy: a spent budget stops calls before upstream, for one group
or all together, and the proxy's running totals are the database's sums.

The proxy, queue, router and channel run as real daemons against real SQLite; the agent's side
of ``api.sock`` is played by the test, and the API is the fake on 127.0.0.1."""

from __future__ import annotations

import json
import time

import pytest
from proxy_harness import call, proxied


def notices(s) -> list[str]:
    with s.db() as con:
        return [r[0] for r in con.execute("select text from outbox where kind='notice' order by id")]


def test_a_spent_budget_stops_calls_at_the_proxy_tells_the_chat_once_and_skips_tasks(make_system, fake_api):
    # $0.01 a day for main; the first call costs more than that.
    s = proxied(make_system, fake_api, budgets={"groups": {"main": {"day_usd": 0.01}}})
    s.start("proxy", "queue", "router", "channel")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    fake_api.usage = {"input_tokens": 5000, "output_tokens": 100}  # $0.0165
    assert call(sock)[0] == 200
    for stream in (False, True, False):
        status, data, _ = call(sock, stream=stream)
        assert status == 403
        error = json.loads(data)["error"]
        assert error["type"] == "nanoclaw_budget"
        assert error["message"].startswith("nanoclaw: main has used its $0.01 for today; it resumes at 00:00 UTC")
    assert len(fake_api.message_requests()) == 1  # the API never saw the refused calls
    text = "main has used its $0.01 for today; it resumes at 00:00 UTC."
    s.wait_for(lambda: notices(s) == [text], 20, what="the budget notice")

    # A chat message waits; a task due now is skipped and logged, not retried; no notice again.
    s.send("main", "are you there?")
    s.cli("tasks", "add", "main", "--every", "1h", "daily", "digest")
    s.cli("tasks", "run-now", "1")
    s.wait_for(lambda: "skipped" in s.cli("tasks", "log", "1").stdout, 20, what="the skipped run")
    log = s.cli("tasks", "log", "1").stdout
    assert "skipped" in log and "'skipped: main has used its $0.01 for today" in log
    assert "task=1 run=1 skipped: main has used its $0.01" in s.log("queue")
    with s.db() as con:
        assert con.execute("select count(*) from job").fetchone()[0] == 0
        assert tuple(con.execute("select status, attempts from taskrun").fetchone()) == ("skipped", 0)
    assert notices(s) == [text]

    assert "budget:   main has used its $0.01 for today" in s.cli("status", check=False).stdout
    # The owner raises it from the CLI: calls go through again.
    assert "SPENT" in s.cli("budget").stdout
    out = s.cli("budget", "raise", "main", "day", "1").stdout
    assert out.strip() == "main: $1.01 per day"
    listed = s.cli("budget", "list").stdout.split()
    assert listed[:4] == ["main", "per", "day", "$1.01"] and "(cli)" in listed
    assert call(sock)[0] == 200
    assert len(fake_api.message_requests()) == 2
    # the held message goes on now: the raise nudged the queue, which starts its job
    s.wait_for(lambda: s.db().execute("select count(*) from job where task_run is null").fetchone()[0] == 1, 20,
               what="the held message's job")
    # bad input: one clear line each
    for args, msg in ((("budget", "set", "main", "day", "lots"), "nanoclaw: 'lots' is not an amount of USD"),
                      (("budget", "set", "nobody", "day", "1"), "nanoclaw: no group 'nobody'"),
                      (("budget", "set", "main", "day", "-3"), "nanoclaw: '-3': an amount is 0 (no budget) or more")):
        bad = s.cli(*args, check=False)
        assert bad.returncode == 2 and bad.stderr.strip().startswith(msg), bad.stderr


def test_a_token_budget_for_all_groups_together(make_system, fake_api):
    s = proxied(make_system, fake_api, budgets={"day_tokens": 100})
    s.cli("groups", "add", "family", "--name", "Family")
    s.start("proxy")
    main = s.run / "proxy" / "main" / "api.sock"
    family = s.run / "proxy" / "family" / "api.sock"
    s.wait_for(lambda: main.exists() and family.exists(), 10, what="both API sockets")
    fake_api.usage = {"input_tokens": 90, "output_tokens": 20}
    assert call(main)[0] == 200
    status, data, _ = call(family)
    assert status == 403
    assert json.loads(data)["error"]["message"].startswith(
        "nanoclaw: All groups together have used their 100 tokens for today; Family resumes at 00:00 UTC")
    s.cli("budget", "set", "all", "day", "1M", "--tokens")
    assert call(family)[0] == 200


def test_the_proxys_running_totals_equal_the_databases_sums(tmp_path):
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import usage
    from nanoclaw.core.models import open_db
    from nanoclaw.daemons.proxy.budget import Tally
    open_db(tmp_path / "t.db")
    cfg = config_mod.Config(timezone="UTC")
    tally = Tally(cfg)
    now = time.time()
    for i, (folder, model) in enumerate((("a", "claude-sonnet-4-5"), ("b", "mystery"), ("a", "claude-haiku-4-5"))):
        if i == 1:  # totals first read between calls, then kept up to date
            assert tally.spent("a", "day", now).tokens == 1 + 2 + 3 + 4
            assert tally.spent(usage.ALL, "month", now).tokens == 10
        c = usage.Counts(model, 1 + i, 2, 3, 4, True)
        tally.add(folder, usage.record(cfg, folder, "", None, c, False, now), c.total, now)
    for scope in ("a", "b", usage.ALL):
        for period in usage.PERIODS:
            want = usage.spent(cfg, scope, period, now)
            got = tally.spent(scope, period, now)
            assert (got.tokens, got.unpriced) == (want.tokens, want.unpriced) and got.usd == pytest.approx(want.usd)
    assert tally.spent(usage.ALL, "day", now).unpriced == 1
