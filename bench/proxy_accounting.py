#!/usr/bin/env python3
"""What the credential proxy adds to an API call, with usage accounting on.

    python3 bench/proxy_accounting.py [--runs 300]

The fake Messages API (tests/fake_anthropic.py) serves on 127.0.0.1. Direct:
a new HTTP connection to it per call. Proxied: the call as an agent makes it:
TCP to a byte relay on 127.0.0.1 (what the container's forwarder is), the
group's api.sock, the real proxy daemon (credential swap, model check, budget
check against the database, the answer metered as it passes, a usage row
written, a journal line), then the fake API. Budgets are set (high) for the
group and for all groups, so every call runs the budget queries. JSON answers
and streamed (SSE) answers are measured; for streams also the time to the
first event. Kinds alternate so that load on the machine falls on all alike.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

from egress_latency import pct, relay  # noqa: E402
from fake_anthropic import FakeAnthropic  # noqa: E402
from system_harness import System  # noqa: E402

USAGE = {"input_tokens": 1200, "output_tokens": 345, "cache_creation_input_tokens": 5000,
         "cache_read_input_tokens": 70000}
TEXT = "The quick brown fox jumps over the lazy dog. " * 20  # ~900 bytes: about 23 text deltas streamed


def call(port: int, stream: bool) -> tuple[float, float]:
    """One Messages call on a new connection: (seconds to the first body bytes, to the last)."""
    body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 512, "stream": stream,
                       "messages": [{"role": "user", "content": "hello"}]})
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("POST", "/v1/messages", body, {"Content-Type": "application/json", "x-api-key": "placeholder",
                                                     "anthropic-version": "2023-06-01"})
        resp = conn.getresponse()
        first = resp.read1(65536)
        first_at = time.perf_counter()
        data = first + resp.read()
    finally:
        conn.close()
    assert resp.status == 200, data[:300]
    assert (b"message_stop" in data) if stream else json.loads(data)["usage"] == USAGE
    return first_at - started, time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--no-budgets", action="store_true", help="no budgets set: the budget check finds none")
    args = ap.parse_args()
    fake = FakeAnthropic().start()
    fake.usage = dict(USAGE)
    fake.responder = lambda body: {"text": TEXT}
    api_port = int(fake.url.rsplit(":", 1)[1])
    base = Path(tempfile.mkdtemp(prefix="nc-accounting-bench-"))
    budgets = {} if args.no_budgets else {"budgets": {"day_usd": 1e6, "groups": {"main": {"day_usd": 1e6}}}}
    system = System(base / "sys", {"timezone": "UTC", "proxy_upstream": fake.url, **budgets})
    system.set_credential("sk-ant-api03-accounting-bench")
    results: dict[str, list[tuple[float, float]]] = {}
    try:
        system.cli("groups", "add", "main", "--main")
        system.start("proxy")
        sock = system.run / "proxy" / "main" / "api.sock"
        system.wait_for(sock.exists, 10, what="the API socket")
        proxy_port = relay(sock)
        kinds = {f"{where} {shape}": (port, shape == "stream") for where, port in
                 (("direct", api_port), ("proxied", proxy_port)) for shape in ("json", "stream")}
        for _ in range(10):  # warm every path (imports, first connections, the database)
            for port, stream in kinds.values():
                call(port, stream)
        for _ in range(args.runs):
            for name, (port, stream) in kinds.items():
                results.setdefault(name, []).append(call(port, stream))
        proxied = 2 * (args.runs + 10)

        def counted() -> int | None:
            with system.db() as con:
                n = con.execute("select count(*), sum(cache_read_tokens) from usage").fetchone()
            return n if n[0] >= proxied else None
        rows, cache_read = system.wait_for(counted, 20, what="a usage row per proxied call")
        lines = system.log("proxy").count(" tokens_out=345 ")
    finally:
        system.close()
        fake.stop()
        shutil.rmtree(base, ignore_errors=True)
    print(f"Messages API calls on loopback (fake API), a new connection each, {args.runs} runs each, "
          f"{os.cpu_count()} cores; accounting on (metering, a usage row, a journal line), budgets "
          f"{'none' if args.no_budgets else 'set (checked before each call)'}")
    print(f"{'':<16} {'p50':>9} {'p90':>9} {'p99':>9}   (time to the last byte)")
    for name, values in results.items():
        print(f"{name:<16} " + " ".join(f"{pct([v[1] for v in values], p) * 1000:7.2f}ms" for p in (50, 90, 99)))
    for shape in ("json", "stream"):
        d, p_ = [v[1] for v in results[f"direct {shape}"]], [v[1] for v in results[f"proxied {shape}"]]
        print(f"{'added ' + shape:<16} " + " ".join(f"{(pct(p_, p) - pct(d, p)) * 1000:7.2f}ms" for p in (50, 90, 99)))
    d, p_ = [v[0] for v in results["direct stream"]], [v[0] for v in results["proxied stream"]]
    print(f"{'added stream':<16} " + " ".join(f"{(pct(p_, p) - pct(d, p)) * 1000:7.2f}ms" for p in (50, 90, 99))
          + "   (time to the first event)")
    ok = rows == proxied and cache_read == proxied * USAGE["cache_read_input_tokens"]
    print(f"usage rows: {rows} for {proxied} proxied calls, tokens {'exact' if ok else 'WRONG'}; "
          f"journal lines with usage: {lines}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
