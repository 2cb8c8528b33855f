"""Web egress through the host proxy: policy, refusals before any connect, limits, journal.

Every server here listens on 127.0.0.1 and every test's traffic stays on loopback.
Refusals of private and metadata addresses are proven twice: the proxy's line
names the rule, and strace of the proxy process shows no connect() to the
refused address at all. A name that resolves to a private address exists only
in the proxy's own mount namespace, whose /etc/hosts the test writes.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path

import pytest
from conftest import SECRET, subjects
from web_sites import PAGE, Site, make_certs, server_tls

from nanoclaw.core import config as config_mod
from nanoclaw.core import config_file
from nanoclaw.core.egress import EgressPolicy, classify, normalize_host, parse_ip

# -- the policy, pure -------------------------------------------------------------------

@pytest.mark.parametrize("address, kind", [
    ("127.0.0.1", "loopback"), ("10.0.0.1", "RFC 1918"), ("172.16.5.4", "RFC 1918"),
    ("192.168.1.1", "RFC 1918"), ("169.254.169.254", "link-local"), ("100.64.0.1", "carrier-grade NAT"),
    ("0.0.0.0", "unspecified"), ("224.0.0.251", "multicast"), ("255.255.255.255", "reserved"),
    ("::1", "loopback"), ("::", "unspecified"), ("fd00::1", "unique-local"), ("fe80::1", "link-local"),
    ("ff02::1", "multicast"), ("::ffff:10.0.0.1", "RFC 1918"), ("64:ff9b::a9fe:a9fe", "link-local"),
    ("2002:a00:1::1", "RFC 1918"), ("192.0.2.1", "not a public address"),
    # IPv4 inside IPv6 in the spellings Python calls global, and deprecated or local-use ranges
    ("::8.8.8.8", "IPv4-compatible"), ("::127.0.0.1", "IPv4-compatible"), ("::ffff:0:8.8.8.8", "IPv4-translated"),
    ("64:ff9b:1::808:808", "local-use NAT64"), ("fec0::1", "site-local"),
])
def test_every_local_address_is_classified(address, kind):
    assert kind in (classify(parse_ip(address)) or "")


@pytest.mark.parametrize("address", ["93.184.216.34", "1.1.1.1", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses_are_not_local(address):
    assert classify(parse_ip(address)) is None


def test_policy_rules_in_order():
    open_ = EgressPolicy(deny_domains=("tracker.example",), allow_addresses=("192.168.1.20",)).validated()
    assert open_.check_name("example.org", 443) is None
    assert open_.check_name("example.org", 22).rule == "port"
    assert open_.check_name("ads.tracker.example", 443).rule == "deny-list"  # a domain covers its subdomains
    assert open_.check_name("nottracker.example", 443) is None  # ... but not look-alikes
    assert open_.check_address(parse_ip("192.168.1.20")) is None  # opened by the owner
    assert open_.check_address(parse_ip("192.168.1.21")).rule == "local-address"
    assert open_.check_address(parse_ip("93.184.216.34")) is None
    allow = EgressPolicy(mode="allowlist", allow_domains=("Wikipedia.ORG.",), deny_domains=("x.wikipedia.org",))
    allow = allow.validated()
    assert allow.check_name("en.wikipedia.org", 443) is None
    assert allow.check_name("x.wikipedia.org", 443).rule == "deny-list"  # deny wins
    assert allow.check_name("example.org", 443).rule == "allowlist"
    assert EgressPolicy(mode="off").check_name("example.org", 443).rule == "egress-off"
    for bad in ("a b", "-x.org", "x..org", "ex\u00e4mple.org", "a" * 254, "host\r\ninjected: 1",
                "fe80::1%eth0", "fe80::1%x,verdict=allowed", "fe80::1%25eth0"):  # no zone ids
        assert normalize_host(bad) is None, bad
    # an IPv4 address has one spelling here, whichever the resolver would read
    for spelled in ("0x5db8d70e", "93.12113678", "0135.0270.0327.016", "1572394766", "0X5DB8D70E", "93.184.215.14."):
        assert normalize_host(spelled) == "93.184.215.14", spelled
    deny = EgressPolicy(deny_domains=("0x5db8d70e",)).validated()
    assert deny.deny_domains == ("93.184.215.14",)
    for host in ("93.184.215.14", "::ffff:93.184.215.14", "::ffff:5db8:d70e"):
        assert deny.check_name(normalize_host(host), 443).rule == "deny-list", host
    assert deny.check_address(parse_ip("::ffff:93.184.215.14")).rule == "deny-list"  # a name resolving to it


def test_egress_configuration_is_validated(tmp_path):
    good = tmp_path / "good.toml"
    good.write_text('[egress]\nallow_addresses = ["127.0.0.1"]\nports = [443]\n'
                    '[egress.groups.family]\nmode = "allowlist"\nallow_domains = ["wikipedia.org"]\n')
    cfg = config_file.load(good)
    assert cfg.egress_for("main").mode == "open" and cfg.egress_for("main").ports == (443,)
    family = cfg.egress_for("family")  # its own keys over [egress]
    assert (family.mode, family.allow_domains, family.allow_addresses) == ("allowlist", ("wikipedia.org",),
                                                                            ("127.0.0.1",))
    for text, error in [('[egress]\nmode = "sometimes"', "egress.mode: expected one of open, allowlist, off"),
                        ('[egress]\nports = ["443"]', "egress.ports: expected a list of integers"),
                        ('[egress]\nallow_addresses = ["intranet"]', "not an IP address or network"),
                        ('[egress.groups."../x"]\nmode = "off"', "not a group folder name"),
                        ('[egress.groups.family]\nmax_tunels = 3', "unknown setting 'max_tunels'"),
                        ('[egress]\nmax_tunnels = 0', "max_tunnels must be at least 1")]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        with pytest.raises(config_mod.ConfigError, match=re.escape(error)):
            config_file.load(bad)


# -- servers the proxy may reach, all on 127.0.0.1 ------------------------------------------

@pytest.fixture(scope="module")
def certs(tmp_path_factory) -> Path:
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def sites(certs):
    made: list[Site] = []

    def make(tls: bool = False, body: bytes = PAGE) -> Site:
        made.append(Site(server_tls(certs) if tls else None, body))
        return made[-1]

    yield make
    for site in made:
        site.close()


# -- talking to a group's web socket as the container's forwarder would -------------------

def web_sock(system, group: str = "main") -> Path:
    sock = system.run / "proxy" / group / "web.sock"
    system.wait_for(sock.exists, 10, what=f"{group}'s web socket")
    return sock


def read_head(conn: socket.socket) -> tuple[int, dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split(" ")[1]), headers, rest


def ask(sock: Path, raw: bytes, timeout: float = 15) -> tuple[int, dict[str, str], bytes]:
    """One request on the web socket; the proxy closes the connection after it."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        conn.connect(str(sock))
        conn.sendall(raw)
        status, headers, body = read_head(conn)
        while chunk := conn.recv(65536):
            body += chunk
    return status, headers, body


def get(sock: Path, url: str, **headers: str) -> tuple[int, dict[str, str], bytes]:
    host = headers.pop("Host", url.split("/")[2])
    extra = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return ask(sock, f"GET {url} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n".encode())


def tunnel(sock: Path, authority: str, timeout: float = 15) -> tuple[int, dict[str, str], socket.socket, bytes]:
    """CONNECT; the socket is the tunnel when the answer is 200 (then nothing follows the head),
    else the refusal's body follows it."""
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(timeout)
    conn.connect(str(sock))
    conn.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    status, headers, rest = read_head(conn)
    assert status != 200 or rest == b""
    return status, headers, conn, rest


def https_get(conn: socket.socket, certs: Path, name: str, path: str = "/page") -> bytes:
    """An HTTPS request inside a tunnel, verified against the test CA: TLS is end to end."""
    ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
    with ctx.wrap_socket(conn, server_hostname=name) as tls:
        tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    return data


def egress_lines(system) -> list[dict[str, str]]:
    """The egress daemon's line per connection, as the journal fields it carries under systemd."""
    return [subjects(e) | {"LINE": e["MESSAGE"]} for e in system.journal.of("egress") if " egress ip=" in e["MESSAGE"]]


def wait_lines(system, n: int) -> list[dict[str, str]]:
    return system.wait_for(lambda: lines if len(lines := egress_lines(system)) >= n else None, 15,
                           what=f"{n} egress line(s)")


# -- evidence that nothing was sent to a refused address ------------------------------------

def private_hosts(path: Path, names: dict[str, str]) -> list[str]:
    """A wrapper that runs a daemon in its own mount namespace where /etc/hosts is ``names``:
    its resolver sees them, nothing else on the machine does."""
    path.write_text("127.0.0.1 localhost\n" + "".join(f"{ip} {name}\n" for name, ip in names.items()))
    return ["unshare", "--mount", "--propagation", "private", "--",
            "sh", "-c", 'mount --bind "$0" /etc/hosts && exec "$@"', str(path)]


class Strace:
    """strace attached to a running process and its threads: every connect() it makes."""

    def __init__(self, pid: int, out: Path) -> None:
        self.out = out
        self.proc = subprocess.Popen(["strace", "-f", "-e", "trace=connect,sendto,sendmsg", "-o", str(out),
                                      "-p", str(pid)], stderr=subprocess.PIPE, text=True)
        assert "attached" in self.proc.stderr.readline()

    def text(self) -> str:
        return self.out.read_text() if self.out.exists() else ""

    def wait_for_connect(self, port: int, timeout: float = 15) -> None:
        """Tracing is live once a connect() to this loopback port shows."""
        deadline = time.time() + timeout
        while f"htons({port})" not in self.text():
            assert time.time() < deadline, f"strace never saw a connect to port {port}:\n{self.text()[-2000:]}"
            time.sleep(0.05)

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(10)
        return self.text()


def egress_system(make_system, ports: list[int], **egress) -> object:
    settings = {"mode": "open", "allow_addresses": ["127.0.0.1"], "ports": [80, 443, *ports], **egress}
    s = make_system(egress=settings)
    s.cli("groups", "add", "main", "--main")
    return s


# -- the proxy on its own -------------------------------------------------------------

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


def test_the_old_per_run_byte_cap_is_read_as_a_days_with_a_deprecation_line(tmp_path, caplog):
    conf = tmp_path / "c.toml"
    conf.write_text('[egress]\nmax_bytes_per_run = 5000\n[egress.groups.family]\nmax_bytes_per_run = 700\n')
    cfg = config_file.load(conf)
    assert cfg.egress_for("main").max_bytes_per_day == 5000 and cfg.egress_for("family").max_bytes_per_day == 700
    said = [r.getMessage() for r in caplog.records if "max_bytes_per_run is deprecated" in r.getMessage()]
    assert len(said) == 2 and said[0].startswith("egress.max_bytes_per_run is deprecated: read as max_bytes_per_day")
    conf.write_text('[egress]\nmax_bytes_per_run = 5000\nmax_bytes_per_day = 10\n')
    with pytest.raises(config_mod.ConfigError, match="max_bytes_per_run is replaced by max_bytes_per_day; remove it"):
        config_file.load(conf)


# -- the real agent: the CLI's WebFetch and curl in the container, through the host ---------

def agent_egress_system(make_agent_system, tmp_path, certs, ports: list[int]):
    """The real agent image with the proxy in its own mount namespace, where pages.test is
    127.0.0.1 (opened by this config) and internal.test a private address. Allowlist mode
    with those names: anything else the CLI might try is refused by name, never looked up."""
    # the CLI (node) trusts the test CA as curl does with --cacert: TLS stays end to end
    s = make_agent_system(extra_env=["CLAUDE_CODE_MAX_RETRIES=0", "NODE_EXTRA_CA_CERTS=/workspace/group/ca.pem"],
                          settings={"egress": {
        "mode": "allowlist", "allow_addresses": ["127.0.0.1"], "ports": [80, 443, *ports],
        "allow_domains": ["pages.test", "internal.test", "10.0.0.1", "169.254.169.254"]}})
    s.stop("egress")
    s.wrap["egress"] = private_hosts(tmp_path / "hosts", {"pages.test": "127.0.0.1", "internal.test": "10.1.2.3"})
    s.start("egress")
    group = s.state / "groups" / "main"
    (group / "ca.pem").write_bytes((certs / "ca.pem").read_bytes())
    # WebFetch first asks api.anthropic.com whether a domain may be fetched; a test must not
    # reach a public host, so this group's project settings turn that lookup off.
    (group / ".claude").mkdir(exist_ok=True)
    (group / ".claude" / "settings.json").write_text(json.dumps({"skipWebFetchPreflight": True}))
    return s


def tool_outputs(fake_api) -> dict[str, str]:
    """Every tool_result the CLI sent, by tool_use id, as text."""
    from fake_anthropic import content_text, last_user_content, tool_results
    out = {}
    for req in fake_api.message_requests():
        for result in tool_results(last_user_content(req["body"])):
            content = result["content"]
            out[result["tool_use_id"]] = content if isinstance(content, str) else content_text(content)
    return out


@pytest.mark.podman
def test_agent_curl_and_webfetch_reach_an_allowed_page(make_agent_system, fake_api, sites, certs, tmp_path,
                                                     need_root_and_strace):
    page, tls_page = sites(), sites(tls=True)
    s = agent_egress_system(make_agent_system, tmp_path, certs, [page.port, tls_page.port])
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "fetch pages", "command": (
        f"curl -sS --max-time 30 http://pages.test:{page.port}/page; echo; "
        f"curl -sS --max-time 30 --cacert /workspace/group/ca.pem https://pages.test:{tls_page.port}/tls")}}},
                  # WebFetch makes http:// https://, fetches, then asks the model about the page: the
                  # fake's default answer echoes that request, page and all
                  {"tool_use": {"name": "WebFetch", "input": {
                      "url": f"https://pages.test:{tls_page.port}/webfetch", "prompt": "What is the marker?"}}})
    w = s.watch("main")
    s.send("main", "fetch the pages")
    assert w.reply(120) == "tool done"
    curl, webfetch = tool_outputs(fake_api).values()
    assert curl.count("PELICAN-7731") == 2
    assert "Web page content" in webfetch and "PELICAN-7731" in webfetch
    assert [r["path"] for r in page.requests] == ["/page"]
    assert [r["path"] for r in tls_page.requests] == ["/tls", "/webfetch"]
    # one line per connection, with its group; nothing else left the container
    lines = wait_lines(s, 3)
    assert [(x["GROUP"], x["HOST"], x["VERDICT"]) for x in lines] == [("main", "pages.test", "allowed")] * 3
    assert [x["PORT"] for x in lines] == [str(page.port), str(tls_page.port), str(tls_page.port)]
    assert all(int(x["BYTES_IN"]) >= len(PAGE) for x in lines)
    # the API credential went to the API only
    assert not any(SECRET in json.dumps(r["headers"]) for r in page.requests + tls_page.requests)
    assert {r["headers"].get("x-api-key") for r in fake_api.message_requests()} == {SECRET}


@pytest.mark.podman
def test_agent_requests_to_local_addresses_are_refused_before_leaving(make_agent_system, fake_api, sites, certs,
                                                                     tmp_path, need_root_and_strace):
    page = sites()
    s = agent_egress_system(make_agent_system, tmp_path, certs, [page.port])
    trace = Strace(s.procs["egress"].pid, tmp_path / "strace.txt")
    probes = [f"http://pages.test:{page.port}/first",  # allowed: shows the trace is live
              "http://10.0.0.1/", "http://169.254.169.254/latest/meta-data/", "http://internal.test/",
              "https://10.0.0.1/", "https://169.254.169.254/", "https://internal.test/"]
    fake_api.then({"tool_use": {"name": "Bash", "input": {"description": "probe", "command": "; ".join(
        f"echo '## {url}'; curl -sS --max-time 30 {url} 2>&1" for url in probes)}}},
                  {"tool_use": {"name": "WebFetch", "input": {"url": "https://internal.test/x", "prompt": "?"}}},
                  {"tool_use": {"name": "WebFetch", "input": {"url": "https://169.254.169.254/", "prompt": "?"}}})
    w = s.watch("main")
    s.send("main", "probe the network")
    try:
        assert w.reply(120) == "tool done"
    finally:
        traced = trace.stop()
    curl, webfetch_name, webfetch_metadata = tool_outputs(fake_api).values()
    answers = dict(part.split("\n", 1) for part in curl.split("## ")[1:])
    assert "PELICAN-7731" in answers[probes[0]]
    for url in probes[1:4]:  # plain http: the agent reads the rule in the 403's body
        assert "rule: local-address" in answers[url] and "agents may not reach local addresses" in answers[url]
    assert "internal.test resolves to local addresses only: 10.1.2.3 is private" in answers[probes[3]]
    for url in probes[4:]:  # https: curl reports the refused CONNECT
        assert "CONNECT tunnel failed, response 403" in answers[url], answers[url]
    assert "proxy refused the connection" in webfetch_name and "proxy refused" in webfetch_metadata
    # refused by the proxy, by rule, one line per connection, with its group
    lines = wait_lines(s, 9)
    refused = [(x["HOST"], x["PORT"]) for x in lines if x["VERDICT"] == "refused"]
    assert sorted(refused) == sorted([("10.0.0.1", "80"), ("169.254.169.254", "80"), ("internal.test", "80"),
                                      ("10.0.0.1", "443"), ("169.254.169.254", "443"), ("internal.test", "443"),
                                      ("internal.test", "443"), ("169.254.169.254", "443")])
    assert all(x["RULE"] == "local-address" and x["GROUP"] == "main" for x in lines if x["VERDICT"] == "refused")
    # ... before any packet left: the proxy never even called connect() for them
    assert f"htons({page.port})" in traced
    for address in ("10.0.0.1", "169.254.169.254", "10.1.2.3"):
        assert f'"{address}"' not in traced, address


@pytest.mark.podman
def test_websearch_is_an_api_request_through_the_credential_proxy(make_agent_system, fake_api):
    """WebSearch runs at the API (a server-side tool): the CLI asks the Messages API with the
    web_search tool, through api.sock like every model request; nothing goes through web.sock."""
    s = make_agent_system()

    def search_results(body: dict) -> dict:
        return {"text": "Search results: pelicans are large water birds (PELICAN-7731)."}

    fake_api.then({"tool_use": {"name": "WebSearch", "input": {"query": "pelican facts"}}}, search_results)
    w = s.watch("main")
    s.send("main", "search the web for pelicans")
    assert w.reply(120) == "tool done"
    requests = fake_api.message_requests()
    searching = [r for r in requests if any(str(t.get("type", "")).startswith("web_search")
                                            for t in r["body"].get("tools", []))]
    print(json.dumps([r["body"].get("tools") for r in searching])[:2000])
    assert len(searching) == 1
    assert searching[0]["headers"]["x-api-key"] == SECRET  # the proxy added the credential: it came through
    assert s.log("proxy").count("POST /v1/messages -> 200") == len(requests)
    [result] = tool_outputs(fake_api).values()
    assert "PELICAN-7731" in result
    assert egress_lines(s) == []
