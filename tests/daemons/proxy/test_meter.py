"""Usage and cost at the credential proxy (daemons/proxy/meter.py): what the API reported, for
JSON, streamed and compressed answers, per group and team member; a model not allowed is refused.

The proxy runs as a real daemon against real SQLite; the agent's side of ``api.sock`` is played
by the test (HTTP over the Unix socket, as the container's forwarder relays it), and the API is
the fake on 127.0.0.1, which reports the usage each test scripts.
"""

from __future__ import annotations

import gzip
import json
import threading
import time

import pytest
from proxy_harness import PRICES, api_lines, call, open_stream, proxied, running_job, usage_rows
from system_harness import subjects

USAGE_A = {"input_tokens": 1200, "output_tokens": 345, "cache_creation_input_tokens": 5000,
           "cache_read_input_tokens": 70000}
USAGE_B = {"input_tokens": 17, "output_tokens": 2048, "cache_creation_input_tokens": 0,
           "cache_read_input_tokens": 91234}


def cost(u: dict) -> float:
    return (u["input_tokens"] * 3.0 + u["output_tokens"] * 15.0 + u["cache_creation_input_tokens"] * 3.75
            + u["cache_read_input_tokens"] * 0.30) / 1e6


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
    conn, resp, first = open_stream(sock, max_tokens=9)
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


def test_the_meter_reads_usage_from_any_chunking_and_prices_by_longest_prefix():
    from nanoclaw.core import config as config_mod
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
