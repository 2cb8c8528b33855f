"""Usage, cost and budgets at the credential proxy.

The proxy, queue, router, channel and ipc run as real daemons against real
SQLite; the agent's side of ``api.sock`` is played by the test (HTTP over the
Unix socket, as the container's forwarder relays it), and the API is the fake
on 127.0.0.1, which reports the usage each test scripts.
"""

from __future__ import annotations

import gzip
import http.client
import json
import socket
import threading
import time

import pytest
from conftest import subjects

from nanoclaw.core.protocol import Spool

# A price of our own, so costs are checked against numbers this file states.
PRICES = {"claude-test": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}}
USAGE_A = {"input_tokens": 1200, "output_tokens": 345, "cache_creation_input_tokens": 5000,
           "cache_read_input_tokens": 70000}
USAGE_B = {"input_tokens": 17, "output_tokens": 2048, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": 91234}


def cost(u: dict) -> float:
    return (u["input_tokens"] * 3.0 + u["output_tokens"] * 15.0 + u["cache_creation_input_tokens"] * 3.75
            + u["cache_read_input_tokens"] * 0.30) / 1e6


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path) -> None:
        super().__init__("localhost", timeout=30)
        self.path = str(path)

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)
        self.sock.connect(self.path)


def call(sock, model: str = "claude-test-1", stream: bool = False, headers: dict | None = None
         ) -> tuple[int, bytes, dict]:
    """One Messages API call as the agent's CLI makes it, through a group's api.sock."""
    conn = UnixHTTP(sock)
    body = json.dumps({"model": model, "max_tokens": 100, "stream": stream,
                       "messages": [{"role": "user", "content": "hi"}]})
    conn.request("POST", "/v1/messages", body, {"Content-Type": "application/json", "x-api-key": "placeholder",
                                                 "anthropic-version": "2023-06-01", **(headers or {})})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, dict(resp.getheaders())


def proxied(make_system, fake_api, **settings):
    s = make_system(proxy_upstream=fake_api.url, usage={"prices": PRICES, **settings.pop("usage", {})}, **settings)
    s.set_credential("sk-ant-api03-usage-test")
    s.cli("groups", "add", "main", "--main")
    return s


def running_job(s, folder: str, agent: str = "") -> int:
    """A job row as the queue makes one for a live container of (group, agent)."""
    with s.db() as con:
        gid = con.execute("select id from \"group\" where folder=?", (folder,)).fetchone()[0]
        cur = con.execute("insert into job (group_id, agent, status, created_at, started_at, container, error, "
                          "closing) values (?, ?, 'running', ?, ?, '', '', 0)", (gid, agent, time.time(), time.time()))
        return cur.lastrowid


def usage_rows(s) -> list[dict]:
    with s.db() as con:
        return [dict(r) for r in con.execute("select * from usage order by id")]


def api_lines(s) -> list[dict]:
    return [subjects(e) for e in s.journal.of("proxy") if "POST /v1/messages" in e["MESSAGE"]]


def test_usage_rows_match_what_the_api_reported_for_json_and_streamed_answers(make_system, fake_api):
    s = proxied(make_system, fake_api)
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    job = running_job(s, "main")

    fake_api.then({"text": "plain", "usage": USAGE_A})
    status, data, _ = call(sock)
    assert status == 200 and json.loads(data)["usage"] == USAGE_A

    # Streamed: the agent has message_start while the API still holds the rest (nothing is
    # buffered), and the row counts message_start's input side and message_delta's output total.
    fake_api.hold = threading.Event()
    fake_api.then({"text": "streamed " * 40, "usage": USAGE_B})
    conn = UnixHTTP(sock)
    conn.request("POST", "/v1/messages", json.dumps({"model": "claude-test-1", "stream": True, "max_tokens": 9,
                                                     "messages": [{"role": "user", "content": "hi"}]}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(65536)
    while b"\n\n" not in first:
        first += resp.read1(65536)
    assert b"message_start" in first and b"message_stop" not in first
    fake_api.hold.set()
    rest = resp.read()
    conn.close()
    assert b"message_delta" in rest and b"message_stop" in rest

    # A model the price table does not know: its cost is unknown, never guessed.
    fake_api.hold = None
    fake_api.then({"text": "x", "usage": USAGE_A})
    assert call(sock, model="mystery-model")[0] == 200
    rows = s.wait_for(lambda: r if len(r := usage_rows(s)) == 3 else None, 10, what="three usage rows")
    for row, u, streamed, model in ((rows[0], USAGE_A, 0, "claude-test-1"), (rows[1], USAGE_B, 1, "claude-test-1"),
                                    (rows[2], USAGE_A, 0, "mystery-model")):
        assert (row["group"], row["agent"], row["job"], row["model"], row["streamed"]) == \
            ("main", "", job, model, streamed)
        assert (row["input_tokens"], row["output_tokens"], row["cache_write_tokens"], row["cache_read_tokens"]) == \
            (u["input_tokens"], u["output_tokens"], u["cache_creation_input_tokens"], u["cache_read_input_tokens"])
        assert row["day"] == time.strftime("%Y-%m-%d", time.gmtime(row["at"]))  # timezone = "UTC"
    assert rows[0]["cost_usd"] == pytest.approx(cost(USAGE_A)) and rows[1]["cost_usd"] == pytest.approx(cost(USAGE_B))
    assert rows[2]["cost_usd"] is None

    lines = s.wait_for(lambda: x if len(x := api_lines(s)) == 3 else None, 10, what="three journal lines")
    assert lines[0] == {"GROUP": "main", "JOB": str(job), "MODEL": "claude-test-1",
                        "TOKENS_IN": str(1200 + 5000 + 70000), "TOKENS_OUT": "345",
                        "COST_USD": f"{cost(USAGE_A):.6f}"}
    assert lines[1]["TOKENS_OUT"] == "2048" and lines[2]["COST_USD"] == "unknown"

    by_model = s.cli("usage", "--by", "model").stdout.splitlines()
    assert by_model[0].startswith("usage of all groups, today, by model (UTC")
    assert by_model[1].split() == ["MODEL", "CALLS", "INPUT", "OUTPUT", "CACHE", "W", "CACHE", "R", "COST"]
    assert by_model[2].split() == ["claude-test-1", "2", "1217", "2393", "5000", "161.2k",
                                   f"${cost(USAGE_A) + cost(USAGE_B):.4f}"]
    assert by_model[3].split() == ["mystery-model", "1", "1200", "345", "5000", "70.0k", "unknown"]
    assert by_model[4].split() == ["TOTAL", "3", "2417", "2738", "10.0k", "231.2k",
                                   f"${cost(USAGE_A) + cost(USAGE_B):.4f}", "+1", "unpriced"]
    by_day = s.cli("usage", "main", "--days", "7", "--by", "day").stdout.splitlines()
    assert by_day[0].startswith("usage of main, the last 7 days (")
    assert by_day[2].split()[:2] == [rows[0]["day"], "3"]
    assert s.cli("usage", "nobody").stdout.splitlines()[1] == "  no API calls"
    assert s.cli("usage", "--days", "0", check=False).stderr.strip() == "nanoclaw: --days must be 1 or more"
    assert "usage:    today $0" in s.cli("status", check=False).stdout  # status shows today's total


def test_a_compressed_answer_is_metered_and_passed_on_as_it_came(make_system, fake_api):
    """The agent may ask for gzip: the proxy reads the usage from the inflated copy and passes
    the compressed bytes unchanged; an encoding it cannot read (br) is not asked for."""
    import gzip as gz
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen: list[str] = []
    body = json.dumps({"type": "message", "model": "claude-test-1", "content": [], "usage": USAGE_A}).encode()
    packed = gz.compress(body)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers.get("Accept-Encoding", ""))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(packed)))
            self.end_headers()
            self.wfile.write(packed)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        s = make_system(proxy_upstream=f"http://127.0.0.1:{server.server_address[1]}", usage={"prices": PRICES})
        s.set_credential("sk-ant-api03-usage-test")
        s.cli("groups", "add", "main", "--main")
        s.start("proxy")
        sock = s.run / "proxy" / "main" / "api.sock"
        s.wait_for(sock.exists, 10, what="main's API socket")
        status, data, headers = call(sock, headers={"Accept-Encoding": "br, gzip"})
        assert status == 200 and data == packed and headers["Content-Encoding"] == "gzip"
        assert seen == ["gzip"]
        [row] = s.wait_for(lambda: usage_rows(s), 10, what="the usage row")
        assert (row["input_tokens"], row["output_tokens"], row["cache_read_tokens"]) == (1200, 345, 70000)
    finally:
        server.shutdown()
        server.server_close()


def test_a_team_member_calls_through_its_own_socket_and_its_usage_is_its_own(make_system, fake_api):
    s = proxied(make_system, fake_api)
    s.cli("agents", "add", "main", "researcher", "--description", "finds things", "--instructions", "Find.")
    s.start("proxy")
    lead = s.run / "proxy" / "main" / "api.sock"
    member = s.run / "proxy" / ".team" / "main" / "researcher" / "api.sock"
    s.wait_for(lambda: lead.exists() and member.exists(), 10, what="the lead's and the member's sockets")
    assert not (s.run / "proxy" / "main" / "researcher").exists()  # nothing of it in what the lead mounts
    job = running_job(s, "main", "researcher")
    running_job(s, "main")  # the lead's job is not the member's
    assert call(member)[0] == 200
    [row] = s.wait_for(lambda: usage_rows(s), 10, what="the member's usage row")
    assert (row["group"], row["agent"], row["job"]) == ("main", "researcher", job)
    [line] = s.wait_for(lambda: api_lines(s), 10, what="the call's journal line")
    assert line["AGENT"] == "researcher" and line["JOB"] == str(job)
    assert call(lead)[0] == 200
    s.wait_for(lambda: len(usage_rows(s)) == 2, 10, what="the lead's usage row")
    table = s.cli("usage", "--by", "agent").stdout.splitlines()
    assert [r.split()[:2] for r in table[2:]] == [["main", "1"], ["main/researcher", "1"], ["TOTAL", "2"]]


def test_a_disallowed_model_is_refused_before_upstream(make_system, fake_api):
    s = proxied(make_system, fake_api, usage={"allowed_models": ["claude-test-*"]})
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    status, data, _ = call(sock, model="claude-opus-4-5")
    assert status == 400
    error = json.loads(data)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert "'claude-opus-4-5' is not allowed here" in error["error"]["message"]
    assert fake_api.message_requests() == []
    # the agent chooses the model name: it must not forge journal fields in the refusal's line
    assert call(sock, model="x host=evil.example verdict=allowed")[0] == 400
    entry = s.wait_for(lambda: next((e for e in s.journal.of("proxy") if "evil.example" in e["MESSAGE"]), None),
                       10, what="the refusal's line")
    assert subjects(entry) == {"GROUP": "main"}, entry
    assert call(sock, model="claude-test-2")[0] == 200
    assert [r["body"]["model"] for r in fake_api.message_requests()] == ["claude-test-2"]
    # the CLI refuses a group model the proxy would refuse
    bad = s.cli("groups", "set", "main", "--model", "claude-opus-4-5", check=False)
    assert bad.returncode == 2 and "not in [usage] allowed_models" in bad.stderr


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


def test_a_groups_model_reaches_its_containers_and_a_members_own_wins(tmp_path, monkeypatch):
    from nanoclaw.admin.cli import main as cli_main
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
    from nanoclaw.core import groups as groups_mod
    from nanoclaw.core import team
    from nanoclaw.core.models import open_db
    from nanoclaw.daemons.runner.dirs import prepare_dirs
    from nanoclaw.daemons.runner.driver import options
    from nanoclaw.daemons.runner.spec import agent_spec
    for env, sub in (("NANOCLAW_STATE_DIR", "state"), ("NANOCLAW_RUNTIME_DIR", "run"), ("NANOCLAW_CONFIG_DIR", "etc")):
        monkeypatch.setenv(env, str(tmp_path / sub))
    conf = tmp_path / "config.toml"
    conf.write_text('timezone = "UTC"\nmodel = "claude-sonnet-4-5"\n')
    monkeypatch.setenv("NANOCLAW_CONFIG", str(conf))
    config_file.get.cache_clear()
    cfg = config_file.get()
    open_db(cfg.db_path)
    groups_mod.add_group(cfg, "family")
    team.write(cfg, "family", team.Member("researcher", "d", "i", model="claude-opus-4-5"))
    team.write(cfg, "family", team.Member("planner", "d", "i"))

    def env(agent: str = "") -> dict:
        prepare_dirs(cfg, "family", False, agent)
        return options(agent_spec(cfg, {"job": 3, "group": "family", "is_main": False, "agent": agent,
                                        "chat": "family@term", "prompt": "", "session_id": None}))

    assert env()["environment"]["NANOCLAW_MODEL"] == "claude-sonnet-4-5"
    with pytest.raises(SystemExit) as done:
        cli_main(["groups", "set", "family", "--model", "claude-haiku-4-5"])
    assert done.value.code == 0
    assert env()["environment"]["NANOCLAW_MODEL"] == "claude-haiku-4-5"
    assert env("planner")["environment"]["NANOCLAW_MODEL"] == "claude-haiku-4-5"
    assert env("researcher")["environment"]["NANOCLAW_MODEL"] == "claude-opus-4-5"
    # a member mounts its own proxy directory; the lead's path is as before
    mounts = {m["target"]: m["source"] for m in env("researcher")["mounts"]}
    assert mounts["/run/nanoclaw-proxy"] == str(cfg.runtime_dir / "proxy" / ".team" / "family" / "researcher")
    mounts = {m["target"]: m["source"] for m in env()["mounts"]}
    assert mounts["/run/nanoclaw-proxy"] == str(cfg.runtime_dir / "proxy" / "family")
    with pytest.raises(SystemExit) as done:
        cli_main(["groups", "set", "family", "--model", "bad model!"])
    assert done.value.code == 2
    config_file.get.cache_clear()


def test_the_meter_reads_usage_from_any_chunking_and_prices_by_longest_prefix():
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
    from nanoclaw.core.usage import cost, parse_amount, price_of
    from nanoclaw.daemons.proxy.meter import Meter
    events = [{"type": "message_start", "message": {"model": "claude-sonnet-4-5-20250929", "usage": {
        "input_tokens": 12, "cache_creation_input_tokens": 100, "cache_read_input_tokens": 7, "output_tokens": 1}}},
        {"type": "content_block_delta", "delta": {"type": "text_delta", "text": '"message_delta" ' * 500}},
        {"type": "message_delta", "usage": {"output_tokens": 77}}]
    raw = "".join(f"event: {e['type']}\r\ndata: {json.dumps(e)}\r\n\r\n" for e in events).encode()
    for encoding, data in (("", raw), ("gzip", gzip.compress(raw))):
        for size in (1, 7, 4096):
            meter = Meter("text/event-stream; charset=utf-8", encoding)
            for i in range(0, len(data), size):
                meter.feed(data[i:i + size])
            c = meter.finish()
            assert (c.model, c.input_tokens, c.cache_write_tokens, c.cache_read_tokens, c.output_tokens) == \
                ("claude-sonnet-4-5-20250929", 12, 100, 7, 77)
    cfg = config_mod.Config()
    assert price_of(cfg, "claude-sonnet-4-20250514").input == 3.0
    assert price_of(cfg, "claude-opus-4-1-20250805").input == 15.0
    assert price_of(cfg, "claude-opus-4-5-20251101").input == 5.0
    assert price_of(cfg, "claude-opus-45") is None and price_of(cfg, "gpt-4") is None
    assert cost(cfg, c) == pytest.approx((12 * 3 + 100 * 3.75 + 7 * 0.3 + 77 * 15) / 1e6)
    assert parse_amount("$2.50") == 2.5 and parse_amount("2M", tokens=True) == 2_000_000
    assert parse_amount("500k", tokens=True) == 500_000


def test_budget_and_price_configuration_is_checked(tmp_path):
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
    conf = tmp_path / "c.toml"
    for text, msg in (('[usage.prices.x]\ninput = 1\n', "input and output prices are required"),
                      ('[usage.prices.x]\ninput = 1\noutput = -2\n', "0 or more"),
                      ('[budgets]\nday_usd = -1\n', "0 (none) or more"),
                      ('[budgets]\nweekly_usd = 1\n', "unknown setting 'weekly_usd'"),
                      ('[budgets.groups."../x"]\nday_usd = 1\n', "is not a group folder name"),
                      ('[api]\nmax_calls_per_group = 0\n', "max_calls_per_group, max_calls_per_agent, max_body_bytes and"),
                      ('[api]\nbetas = "x"\n', "api.betas: expected a list of strings"),
                      ('[usage]\nweb_search_usd = -1\n', "web_search_usd and web_fetch_usd are USD per request")):
        conf.write_text(text)
        with pytest.raises(config_mod.ConfigError, match=msg.replace("(", r"\(").replace(")", r"\)")):
            config_file.load(conf)
    conf.write_text('[usage]\nallowed_models = ["claude-*"]\n[usage.prices.claude-new]\ninput = 1\noutput = 2\n'
                    '[budgets]\nmonth_usd = 30\n[budgets.groups.family]\nday_usd = 2\nday_tokens = 500000\n')
    cfg = config_file.load(conf)
    assert cfg.usage.allowed_models == ("claude-*",) and cfg.usage.prices["claude-new"].output == 2.0
    assert "claude-sonnet-4-5" in cfg.usage.prices  # the shipped table stays under the owner's rows
    assert cfg.budget.month_usd == 30 and cfg.budget_groups["family"].day_tokens == 500000


def test_an_older_database_gains_the_usage_tables_and_keeps_every_groups_rows(tmp_path):
    """Group.model is added as a nullable column: SQLite makes a NOT NULL one by rebuilding
    the table, and dropping the old "group" table would cascade to its jobs, cursors and tasks."""
    from conftest import old_database

    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
    from nanoclaw.core import usage
    from nanoclaw.core.models import Group, Job, open_db
    path = old_database(tmp_path / "old.db", """
        create table job (id integer primary key autoincrement, group_id integer not null references "group"(id)
            on delete cascade, agent varchar not null default '', status varchar, created_at real, started_at real,
            finished_at real, container varchar, exit_code integer, error text, closing integer, task_run integer);
        insert into job (group_id, status, created_at, container, error, closing) values (1, 'done', 0, '', '', 0);
    """)
    from nanoclaw.core import migrations
    migrations.migrate(path)
    open_db(path)
    assert [(g.folder, g.model) for g in Group.select()] == [("main", None)]
    assert Job.select().count() == 1
    cfg = config_mod.Config()
    assert usage.spent(cfg, "main", "day").tokens == 0 and usage.limits(cfg, usage.ALL) == []


def test_the_proxys_running_totals_equal_the_databases_sums(tmp_path):
    from nanoclaw.core import config as config_mod
    from nanoclaw.core import config_file
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
