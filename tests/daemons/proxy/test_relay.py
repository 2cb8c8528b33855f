"""What an API call holds and costs at the relay, whatever the agent does: reservations
against the budgets, calls in flight and request bytes per group, an answer left early
counted in full, unpriced models under a USD budget, server-side tool requests.

The proxy runs as a real daemon against real SQLite; the agent's side of ``api.sock`` is
played by the test, and the API is the fake on 127.0.0.1.
"""

from __future__ import annotations

import json
import socket
import threading

import pytest
from proxy_harness import UnixHTTP, call, open_stream, proxied, usage_rows


def stream_call(sock, max_tokens: int = 100):
    """A streamed Messages call, left open after its first event: (connection, response)."""
    conn, resp, first = open_stream(sock, max_tokens)
    assert b"message_start" in first
    return conn, resp


def test_an_answer_the_agent_leaves_early_is_counted_in_full(make_system, fake_api):
    """The API bills what it generated whether the agent read it or not: an agent that closes
    a stream after message_start (1 output token so far) is charged the final usage."""
    s = proxied(make_system, fake_api)
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    fake_api.hold = threading.Event()
    fake_api.then({"text": "long answer " * 200, "usage": {"input_tokens": 100, "output_tokens": 30000},
                   "pace": 0.5})  # the content, then half a second of generating, then the final usage
    conn, _ = stream_call(sock, max_tokens=32000)
    conn.sock.shutdown(socket.SHUT_RDWR)
    conn.close()  # the agent goes away
    fake_api.hold.set()
    [row] = s.wait_for(lambda: usage_rows(s), 10, what="the usage row")
    assert (row["input_tokens"], row["output_tokens"]) == (100, 30000)
    assert row["cost_usd"] == pytest.approx((100 * 3.0 + 30000 * 15.0) / 1e6)


def test_an_answer_whose_final_usage_never_comes_is_charged_its_max_tokens(make_system, fake_api):
    s = proxied(make_system, fake_api)
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    fake_api.then({"text": "x", "cut": True, "usage": {"input_tokens": 100, "output_tokens": 5}})
    conn = UnixHTTP(sock)
    conn.request("POST", "/v1/messages", json.dumps({"model": "claude-test-1", "stream": True, "max_tokens": 4096,
                                                     "messages": [{"role": "user", "content": "hi"}]}),
                 {"Content-Type": "application/json"})
    assert b"message_delta" not in conn.getresponse().read()  # the stream ended after message_start
    conn.close()
    [row] = s.wait_for(lambda: usage_rows(s), 10, what="the usage row")
    assert (row["input_tokens"], row["output_tokens"]) == (100, 4096)
    line = s.wait_for(lambda: next((e for e in s.journal.of("proxy") if "never came" in e["MESSAGE"]), None), 10,
                      what="the call's line")
    assert "charged 4096 output tokens" in line["MESSAGE"]


def test_calls_in_flight_hold_their_reservation_so_parallel_calls_cannot_overshoot(make_system, fake_api):
    """$0.02 a day; each call reserves its max_tokens (1000 at $15/M: $0.015) before it leaves.
    Two calls fit in flight, a third waits for them; they spend the budget, so it is refused
    and never reaches the API. Counted after the answers, all three went through."""
    s = proxied(make_system, fake_api, budgets={"groups": {"main": {"day_usd": 0.02}}})
    s.start("proxy", "queue")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    fake_api.hold = threading.Event()
    fake_api.then(*[{"text": "x", "usage": {"input_tokens": 10, "output_tokens": 800}}] * 3)  # $0.01203 each
    first = [stream_call(sock, max_tokens=1000) for _ in range(2)]
    third: list = []
    caller = threading.Thread(target=lambda: third.append(call(sock, stream=True)))
    caller.start()
    s.wait_for(lambda: [e for e in s.journal.of("proxy") if "a call waits" in e["MESSAGE"]], 10,
               what="the third call waiting for the two in flight")
    assert len(fake_api.message_requests()) == 2
    fake_api.hold.set()
    for conn, resp in first:
        assert b"message_stop" in resp.read()
        conn.close()
    caller.join(30)
    [(status, data, _)] = third
    assert status == 403 and json.loads(data)["error"]["type"] == "nanoclaw_budget"
    assert len(fake_api.message_requests()) == 2
    assert sum(r["cost_usd"] for r in usage_rows(s)) == pytest.approx(2 * (10 * 3.0 + 800 * 15.0) / 1e6)


def test_calls_in_flight_are_capped_per_agent_and_per_group(make_system, fake_api):
    s = proxied(make_system, fake_api, api={"max_calls_per_agent": 2, "max_calls_per_group": 3})
    s.cli("agents", "add", "main", "researcher", "--description", "finds things", "--instructions", "Find.")
    s.start("proxy")
    lead = s.run / "proxy" / "main" / "api.sock"
    member = s.run / "proxy" / ".team" / "main" / "researcher" / "api.sock"
    s.wait_for(lambda: lead.exists() and member.exists(), 10, what="the lead's and the member's sockets")
    fake_api.hold = threading.Event()
    held = [stream_call(lead), stream_call(lead)]
    status, data, _ = call(lead)
    assert status == 429 and json.loads(data)["error"]["type"] == "rate_limit_error"
    assert "this agent already has 2 API calls in flight" in json.loads(data)["error"]["message"]
    held.append(stream_call(member))
    status, data, _ = call(member)
    assert status == 429 and "this group already has 3 API calls in flight" in json.loads(data)["error"]["message"]
    assert len(fake_api.message_requests()) == 3
    fake_api.hold.set()
    for conn, resp in held:
        resp.read()
        conn.close()
    assert call(lead)[0] == 200 and call(member)[0] == 200  # the slots are given back


def test_request_bytes_held_are_capped_per_group(make_system, fake_api):
    """One group's bodies in the relay's memory are bounded: a body that has not finished
    arriving holds its bytes, and the group's next body is refused past the cap while
    another group's passes."""
    s = proxied(make_system, fake_api, api={"max_body_bytes": 80_000, "max_buffered_per_group": 100_000})
    s.cli("groups", "add", "family")
    s.start("proxy")
    main, family = (s.run / "proxy" / g / "api.sock" for g in ("main", "family"))
    s.wait_for(lambda: main.exists() and family.exists(), 10, what="the API sockets")
    pad = "x" * 50_000
    body = json.dumps({"model": "claude-test-1", "max_tokens": 10, "messages": [{"role": "user", "content": pad}]})
    slow = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    slow.connect(str(main))
    slow.sendall("POST /v1/messages HTTP/1.1\r\nHost: x\r\nContent-Length: 75000\r\n\r\n".encode() + b"y" * 60_000)
    s.wait_for(lambda: "60000 request bytes held" in s.request("proxy", {"op": "status"})["status"], 10,
               what="the slow body held")
    status, data, _ = call_body(main, body)
    assert status == 429 and "this group's calls hold 100000 bytes of requests" in json.loads(data)["error"]["message"]
    assert call_body(family, body)[0] == 200  # another group's memory is its own
    assert call_body(main, json.dumps({"model": "claude-test-1", "messages": [], "x": "z" * 90_000}))[0] == 413
    slow.close()
    s.wait_for(lambda: " 0 request bytes held" in s.request("proxy", {"op": "status"})["status"], 10,
               what="the slow body let go")
    assert call_body(main, body)[0] == 200
    assert len(fake_api.message_requests()) == 2


def call_body(sock, body: str) -> tuple[int, bytes, dict]:
    conn = UnixHTTP(sock)
    conn.request("POST", "/v1/messages", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data, dict(resp.getheaders())


def test_an_unpriced_model_is_refused_where_a_usd_budget_applies_never_free(make_system, fake_api):
    s = proxied(make_system, fake_api, budgets={"month_usd": 50.0})
    s.cli("groups", "add", "family")
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    status, data, _ = call(sock, model="mystery-model")
    error = json.loads(data)["error"]
    assert status == 403 and error["type"] == "nanoclaw_budget"
    assert error["message"] == ("nanoclaw: the model 'mystery-model' has no price, and a USD budget applies to this "
                                "group, so its calls could not be counted; the owner adds its price "
                                "([usage.prices.\"<model>\"] in the configuration) or chooses a priced model")
    assert fake_api.message_requests() == []
    assert call(sock)[0] == 200  # a priced model passes
    s.cli("budget", "set", "all", "month", "0")  # no USD budget: its cost is unknown, not refused
    assert call(sock, model="mystery-model")[0] == 200


def test_server_side_tool_requests_are_priced(make_system, fake_api):
    s = proxied(make_system, fake_api)
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    tools = {"web_search_requests": 3, "web_fetch_requests": 2}
    fake_api.then({"text": "a", "usage": {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": tools}},
                  {"text": "b", "usage": {"input_tokens": 1000, "output_tokens": 100, "server_tool_use": tools}})
    assert call(sock)[0] == 200 and call(sock, stream=True)[0] == 200
    rows = s.wait_for(lambda: r if len(r := usage_rows(s)) == 2 else None, 10, what="the usage rows")
    for row in rows:
        assert (row["web_search_requests"], row["web_fetch_requests"]) == (3, 2)
        assert row["cost_usd"] == pytest.approx((1000 * 3.0 + 100 * 15.0) / 1e6 + 3 * 0.01)  # fetches: no charge
