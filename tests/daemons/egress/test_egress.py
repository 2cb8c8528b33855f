"""The egress daemon (daemons/egress/): tunnels and plain HTTP, refusals before any connect, limits,
its journal lines.

Every server here listens on 127.0.0.1 and every test's traffic stays on loopback.
Refusals of private and metadata addresses are proven twice: the proxy's line
names the rule, and strace of the proxy process shows no connect() to the
refused address at all. A name that resolves to a private address exists only
in the proxy's own mount namespace, whose /etc/hosts the test writes.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time

from system_harness import SECRET
from egress_harness import (
    Strace, ask, egress_system, get, https_get, private_hosts, read_head, tunnel, wait_lines,
    web_sock)
from web_sites import PAGE


def test_connect_tunnel_keeps_tls_end_to_end(make_system, sites, certs):
    site = sites(tls=True)
    s = egress_system(make_system, [site.port])
    s.start("egress")
    status, headers, conn, _ = tunnel(web_sock(s), f"127.0.0.1:{site.port}")
    assert status == 200
    answer = https_get(conn, certs, "127.0.0.1")  # the site's own certificate, checked here
    assert answer.startswith(b"HTTP/1.0 200") or answer.startswith(b"HTTP/1.1 200")
    assert answer.endswith(PAGE)
    [line] = wait_lines(s, 1)
    assert line["GROUP"] == "main" and line["HOST"] == "127.0.0.1" and line["PORT"] == str(site.port)
    assert line["VERDICT"] == "allowed"
    # TLS records both ways: more than the page came in, a request went out
    assert int(line["BYTES_IN"]) > len(PAGE) and int(line["BYTES_OUT"]) > 100
    assert PAGE.decode() not in s.log("egress")


def test_a_tunnel_carries_megabytes_both_ways_at_once(make_system):
    """Bytes, not requests: an echo service behind CONNECT gets 3 MB while it answers, so
    both directions and the proxy's pausing of a fast sender are exercised. (The agent's side
    closes whole: aiohttp, like the container's forwarder, ends a connection on EOF.)"""
    echo = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        for _ in range(2):
            conn, _ = echo.accept()
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    port = echo.getsockname()[1]
    s = egress_system(make_system, [port])
    s.start("egress")
    status, _, conn, _ = tunnel(web_sock(s), f"127.0.0.1:{port}")
    assert status == 200
    payload = os.urandom(3 * 1024 * 1024)
    sender = threading.Thread(target=conn.sendall, args=(payload,))
    sender.start()
    received = bytearray()
    while len(received) < len(payload) and (chunk := conn.recv(65536)):
        received += chunk
    sender.join(30)
    conn.close()
    assert bytes(received) == payload
    [line] = wait_lines(s, 1)
    assert (line["BYTES_IN"], line["BYTES_OUT"], line["VERDICT"]) == (str(len(payload)), str(len(payload)), "allowed")
    # bytes sent right behind the CONNECT head, before the 200, are the tunnel's too
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as eager:
        eager.settimeout(15)
        eager.connect(str(web_sock(s)))
        eager.sendall(f"CONNECT 127.0.0.1:{port} HTTP/1.1\r\nHost: x\r\n\r\nearly bytes".encode())
        status, _, rest = read_head(eager)
        while len(rest) < len(b"early bytes") and (chunk := eager.recv(65536)):
            rest += chunk
    assert status == 200 and rest == b"early bytes"
    echo.close()


def test_plain_http_goes_to_the_checked_address_with_the_urls_host(make_system, sites):
    site = sites()
    s = egress_system(make_system, [site.port])
    s.start("egress")
    sock = web_sock(s)
    # the agent's Host header cannot steer the request elsewhere (RFC 9112: the URL's wins)
    status, headers, body = get(sock, f"http://127.0.0.1:{site.port}/page?q=1", Host="metadata.internal",
                                X_Agent="kept", Proxy_Authorization="Basic eA==")
    assert status == 200 and body == PAGE and headers["content-length"] == str(len(PAGE))
    [seen] = site.requests
    assert seen["path"] == "/page?q=1" and seen["headers"]["host"] == f"127.0.0.1:{site.port}"
    assert seen["headers"]["x-agent"] == "kept" and "proxy-authorization" not in seen["headers"]
    status, _, _ = get(sock, f"http://user:secret@127.0.0.1:{site.port}/userinfo")
    assert status == 200 and site.requests[-1]["headers"]["host"] == f"127.0.0.1:{site.port}"  # never user:secret@
    # a body goes through, and the API credential never goes anywhere but the API
    status, _, body = ask(sock, f"POST http://127.0.0.1:{site.port}/form HTTP/1.1\r\nHost: x\r\n"
                                f"Content-Length: 11\r\nConnection: close\r\n\r\nhello=world".encode())
    assert status == 200 and site.requests[-1]["body"] == b"hello=world"
    assert not any(SECRET in json.dumps(r["headers"]) for r in site.requests)
    lines = wait_lines(s, 3)
    assert [(x["HOST"], x["VERDICT"]) for x in lines] == [("127.0.0.1", "allowed")] * 3
    assert int(lines[0]["BYTES_IN"]) == len(PAGE) and int(lines[2]["BYTES_OUT"]) == 11
    # https:// in absolute form and origin-form requests are not proxy requests
    status, headers, body = get(sock, f"https://127.0.0.1:{site.port}/")
    assert status == 400 and b"CONNECT" in body
    status, headers, body = ask(sock, b"GET /page HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 400 and headers["x-nanoclaw-egress-rule"] == "bad-request"
    assert len(site.requests) == 3


def test_local_addresses_are_refused_before_any_connect(make_system, sites, tmp_path, need_root_and_strace):
    """10.0.0.1, the metadata address, names that resolve to local addresses, loopback the owner
    did not open: each refused by rule with a 403 the agent can read, and strace shows the
    proxy never called connect() for any of them. The one allowed page proves tracing was live."""
    site = sites()
    s = egress_system(make_system, [site.port])
    s.wrap["egress"] = private_hosts(tmp_path / "hosts", {
        "internal.test": "10.1.2.3", "metadata.test": "169.254.169.254", "sneaky.test": "127.0.0.9",
        "pages.test": "127.0.0.1"})
    s.start("egress")
    sock = web_sock(s)
    trace = Strace(s.procs["egress"].pid, tmp_path / "strace.txt")
    try:
        assert get(sock, f"http://pages.test:{site.port}/page")[0] == 200  # allowed: 127.0.0.1 is opened
        trace.wait_for_connect(site.port)
        refused = [("GET", "10.0.0.1", 80, "10.0.0.1 is private (RFC 1918)"),
                   ("GET", "169.254.169.254", 80, "link-local (169.254.0.0/16, cloud metadata)"),
                   ("CONNECT", "169.254.169.254", 443, "cloud metadata"),
                   ("CONNECT", "internal.test", 443, "internal.test resolves to local addresses only: 10.1.2.3 is private"),
                   ("GET", "metadata.test", 80, "metadata.test resolves to local addresses only: 169.254.169.254 is link-local"),
                   ("GET", "sneaky.test", 80, "127.0.0.9 is loopback"),
                   ("CONNECT", "[::ffff:10.0.0.1]", 443, "::ffff:a00:1 is private (RFC 1918)"),
                   ("CONNECT", "[::1]", 443, "::1 is loopback")]
        for method, host, port, why in refused:
            if method == "GET":
                status, headers, body = get(sock, f"http://{host}:{port}/latest/meta-data/")
            else:
                status, headers, conn, body = tunnel(sock, f"{host}:{port}")
                while chunk := conn.recv(65536):
                    body += chunk
                conn.close()
            assert status == 403, (host, status, body)
            assert headers["x-nanoclaw-egress-rule"] == "local-address"
            assert b"rule: local-address" in body and why.encode() in body, body
    finally:
        traced = trace.stop()
    for address in ("10.0.0.1", "169.254.169.254", "10.1.2.3", "127.0.0.9", "::1", "::ffff:10.0.0.1"):
        assert f'inet_addr("{address}")' not in traced and f'"{address}"' not in traced, address
    assert f"htons({site.port})" in traced  # the allowed one did connect, and it was seen
    lines = wait_lines(s, 1 + len(refused))
    assert [x["VERDICT"] for x in lines] == ["allowed"] + ["refused"] * len(refused)
    assert all(x["RULE"] == "local-address" and x["BYTES_IN"] == x["BYTES_OUT"] == "0" for x in lines[1:])
    assert [x["HOST"] for x in lines[1:4]] == ["10.0.0.1", "169.254.169.254", "169.254.169.254"]


def test_modes_and_lists_refuse_by_name_without_a_lookup(make_system, sites):
    site = sites()
    s = make_system(egress={"mode": "open", "allow_addresses": ["127.0.0.1"], "ports": [80, 443, site.port],
                            "deny_domains": ["127.0.0.1"],
                            "groups": {"family": {"mode": "off"},
                                       "work": {"mode": "allowlist", "allow_domains": ["127.0.0.1"],
                                                "deny_domains": []},
                                       "ports": {"deny_domains": [], "ports": [443]}}})
    for group in ("main", "family", "work", "ports"):
        s.cli("groups", "add", group, *(["--main"] if group == "main" else []))
    s.start("egress")
    url = f"http://127.0.0.1:{site.port}/page"
    expect = {"main": (403, "deny-list"), "family": (403, "egress-off"), "work": (200, None),
              "ports": (403, "port")}
    for group, (code, rule) in expect.items():
        status, headers, body = get(web_sock(s, group), url)
        assert (status, headers.get("x-nanoclaw-egress-rule")) == (code, rule), (group, body)
    status, headers, body = get(web_sock(s, "work"), "http://elsewhere.example/")
    assert status == 403 and headers["x-nanoclaw-egress-rule"] == "allowlist"
    assert b"elsewhere.example is not on this group's allow list" in body
    status, headers, body = get(web_sock(s, "main"), "http://bad_host!/")
    assert status == 400 and headers["x-nanoclaw-egress-rule"] == "bad-host"
    assert len(site.requests) == 1  # work's
    lines = wait_lines(s, 6)
    assert sorted(x["GROUP"] for x in lines) == ["family", "main", "main", "ports", "work", "work"]
    assert "HOST" in lines[-1] and lines[-1]["HOST"] == "-"  # an invalid name is never logged


def test_tunnel_limit_and_the_daily_byte_cap_that_nothing_resets(make_system, sites, certs):
    """The byte cap is the group's for the owner's day: neither the runner's ensure before a
    new container (a lead delegating, a restart) nor a restart of egress gives it back."""
    big = sites(body=b"x" * 300_000)
    small = sites(tls=True)
    s = egress_system(make_system, [big.port, small.port], max_tunnels=1, max_bytes_per_day=200_000)
    s.start("egress")
    sock = web_sock(s)
    status, _, held, _ = tunnel(sock, f"127.0.0.1:{small.port}")
    assert status == 200
    status, headers, _, body = tunnel(sock, f"127.0.0.1:{small.port}")
    assert status == 429 and headers["x-nanoclaw-egress-rule"] == "tunnel-limit"
    assert https_get(held, certs, "127.0.0.1").endswith(PAGE)  # the held one still works; then it closes
    wait_lines(s, 2)
    # a download past the day's allowance is cut: the agent gets less than the length it was promised
    status, headers, body = get(sock, f"http://127.0.0.1:{big.port}/big")
    assert status == 200 and int(headers["content-length"]) == 300_000 and len(body) < 300_000
    lines = wait_lines(s, 3)
    assert (lines[-1]["VERDICT"], lines[-1]["RULE"]) == ("cut", "byte-cap")
    status, headers, body = get(sock, f"http://127.0.0.1:{big.port}/again")
    assert status == 429 and headers["x-nanoclaw-egress-rule"] == "byte-cap"
    assert b"this group's web allowance of 200000 bytes a day is used up; it resumes at 00:00 UTC" in body
    # a new container (what a lead's delegation or a restart makes) asks ensure: nothing resets
    assert s.request("egress", {"op": "ensure", "group": "main"})["ok"]
    assert tunnel(sock, f"127.0.0.1:{small.port}")[0] == 429
    s.restart("egress")  # counted on disk: a restart gives nothing back either
    assert tunnel(web_sock(s), f"127.0.0.1:{small.port}")[0] == 429
    with s.db() as con:
        [(group, agent, day, used)] = con.execute("select * from egressbytes").fetchall()
    assert (group, agent, day) == ("main", "", time.strftime("%Y-%m-%d", time.gmtime())) and used > 200_000
    lines = wait_lines(s, 6)
    assert [x["VERDICT"] for x in lines] == ["refused", "allowed", "cut", "refused", "refused", "refused"]
    assert [x["RULE"] for x in lines[3:]] == ["byte-cap"] * 3


def test_each_agent_has_its_own_daily_allowance_inside_the_groups(make_system, sites):
    page = sites(body=b"y" * 50_000)
    s = egress_system(make_system, [page.port], max_bytes_per_day=230_000, max_bytes_per_agent_per_day=120_000)
    s.cli("agents", "add", "main", "researcher", "--description", "finds things", "--instructions", "Find.")
    s.start("egress")
    lead = web_sock(s)
    member = s.run / "proxy" / ".team" / "main" / "researcher" / "web.sock"
    s.wait_for(member.exists, 10, what="the member's web socket")
    url = f"http://127.0.0.1:{page.port}/"
    assert [len(get(member, url)[2]) for _ in range(2)] == [50_000] * 2
    status, _, body = get(member, url)
    assert status == 200 and len(body) < 50_000  # cut at the member's own 120 000
    status, headers, body = get(member, url)
    assert status == 429 and b"this agent's web allowance of 120000 bytes a day is used up" in body
    assert len(get(lead, url)[2]) == 50_000  # the lead's is its own ...
    status, _, body = get(lead, url)
    assert status == 200 and len(body) < 50_000  # ... inside the group's 230 000, which the member's count in
    status, _, body = get(lead, url)
    assert status == 429 and b"this group's web allowance of 230000 bytes a day is used up" in body
    lines = wait_lines(s, 7)
    assert [(x.get("AGENT", ""), x["VERDICT"]) for x in lines] == [
        ("researcher", "allowed"), ("researcher", "allowed"), ("researcher", "cut"), ("researcher", "refused"),
        ("", "allowed"), ("", "cut"), ("", "refused")]
