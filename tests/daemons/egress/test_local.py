"""What counts as local for egress beyond the address ranges: the host's own addresses, the
networks it is on and its gateways (global addresses, in network namespaces of the test's
own), every spelling of an address on the deny list, and IPv6 zone ids.

Every refusal is shown twice: egress's line names the rule, and strace of the egress
process shows no connect() to the refused address at all.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from system_harness import ROOT
from egress_harness import (  # noqa: F401 - certs and sites are fixtures
    Strace, certs, egress_system, get, private_hosts, sites, tunnel, wait_lines, web_sock)


def test_a_zone_id_is_no_host_and_never_reaches_the_journal(make_system):
    """An IPv6 zone id takes any text: CONNECT [fe80::1%x,verdict=allowed]:443 must be refused
    as a bad host, and its text must not be logged as the host."""
    s = egress_system(make_system, [])
    s.start("egress")
    sock = web_sock(s)
    for authority in ("[fe80::1%x,verdict=allowed,rule=-]:443", "[fe80::1%25eth0]:443", "[::1%lo]:443"):
        status, headers, conn, body = tunnel(sock, authority)
        conn.close()
        assert status == 400 and headers["x-nanoclaw-egress-rule"] == "bad-host", (authority, status, body)
    lines = wait_lines(s, 3)
    assert [(x["HOST"], x["VERDICT"], x["RULE"]) for x in lines] == [("-", "refused", "bad-host")] * 3


def test_an_address_on_the_deny_list_is_refused_in_every_spelling_before_any_connect(make_system, sites, tmp_path,  # noqa: F811
                                                                                     need_root_and_strace):
    """deny_domains = ["127.0.0.1"] (opened by allow_addresses, so only the deny list stops it):
    the resolver reads 0x7f000001, 2130706433, 0177.0.0.1 and 127.1 as that address, as it
    does a name that resolves to it; each is refused by the deny list, and strace shows egress
    never connected to it. The other group's page proves tracing was live."""
    site = sites()
    s = make_system(egress={"allow_addresses": ["127.0.0.1"], "ports": [80, 443, site.port],
                            "deny_domains": ["127.0.0.1"], "groups": {"family": {"deny_domains": []}}})
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family")
    s.wrap["egress"] = private_hosts(tmp_path / "hosts", {"loop.test": "127.0.0.1"})
    s.start("egress")
    trace = Strace(s.procs["egress"].pid, tmp_path / "strace.txt")
    try:
        assert get(web_sock(s, "family"), f"http://127.0.0.1:{site.port}/live")[0] == 200
        trace.wait_for_connect(site.port)
        for host in ("0x7f000001", "2130706433", "0177.0.0.1", "127.1", "0x7f.0.0.1", "[::ffff:127.0.0.1]",
                     "loop.test"):
            status, headers, body = get(web_sock(s), f"http://{host}:{site.port}/")
            assert status == 403 and headers["x-nanoclaw-egress-rule"] == "deny-list", (host, status, body)
    finally:
        traced = trace.stop()
    assert [r["path"] for r in site.requests] == ["/live"]
    assert traced.count(f"htons({site.port})") == 1
    lines = wait_lines(s, 8)
    assert [x["HOST"] for x in lines[1:]] == ["127.0.0.1"] * 4 + ["127.0.0.1", "::ffff:7f00:1", "loop.test"]


# -- the host's own addresses, networks and gateways, in namespaces of the test's own --------

def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


@pytest.fixture
def netns(need_root_and_strace):
    """Two network namespaces of the test's own, joined by a veth pair and reaching nothing
    else: "host" (egress runs there) with global-looking addresses, 81.2.69.10/24 and
    2a02:c7f:1::10/64, and default routes via "lan", which holds their gateways (.1 and ::1),
    a LAN device (2a02:c7f:1::99) and a stand-in for a public site (93.184.215.14). A web
    server listens in "lan" on every address, and one in "host" (the host's own service)."""
    tag = os.urandom(3).hex()
    host, lan = f"nc-eg-{tag}", f"nc-lan-{tag}"
    _ip("netns", "add", host)
    _ip("netns", "add", lan)
    servers: list[subprocess.Popen] = []
    try:
        _ip("link", "add", "eg0", "netns", host, "type", "veth", "peer", "name", "lan0", "netns", lan)
        for ns, dev in ((host, "eg0"), (lan, "lan0")):
            _ip("-n", ns, "link", "set", "lo", "up")
            _ip("-n", ns, "link", "set", dev, "up")
        for address in ("81.2.69.10/24", "2a02:c7f:1::10/64"):
            _ip("-n", host, "addr", "add", address, "dev", "eg0", *(["nodad"] if ":" in address else []))
        for address in ("81.2.69.1/24", "2a02:c7f:1::1/64", "2a02:c7f:1::99/64"):
            _ip("-n", lan, "addr", "add", address, "dev", "lan0", *(["nodad"] if ":" in address else []))
        _ip("-n", lan, "addr", "add", "93.184.215.14/32", "dev", "lo")
        _ip("-n", host, "route", "add", "default", "via", "81.2.69.1")
        _ip("-n", host, "-6", "route", "add", "default", "via", "2a02:c7f:1::1")
        ports = {}
        for ns in (lan, host):
            proc = subprocess.Popen(["ip", "netns", "exec", ns, sys.executable, "-u", "-m", "http.server", "0",
                                     "--bind", "::", "--directory", str(ROOT / "tests")],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
            servers.append(proc)
            ports[ns] = int(re.search(r"port (\d+)", proc.stdout.readline()).group(1))  # printed once bound
        yield {"host": host, "lan": lan, "lan_port": ports[lan], "host_port": ports[host]}
    finally:
        for proc in servers:
            proc.terminate()
            proc.wait(10)
        _ip("netns", "del", host)
        _ip("netns", "del", lan)


def test_the_hosts_own_addresses_networks_and_gateways_are_refused_before_any_connect(make_system, netns,
                                                                                     tmp_path):
    """Global addresses can be local: the host's own (its services on [::]), its /64 (the
    router's [prefix::1] admin page, LAN devices) and its gateways. egress reads them from the
    kernel and refuses them before any connect; an address added while it runs is refused
    from the change on. The public stand-in is reached, which proves tracing was live."""
    lan_port, host_port = netns["lan_port"], netns["host_port"]
    s = make_system(egress={"ports": [80, 443, lan_port, host_port]})
    s.cli("groups", "add", "main", "--main")
    s.wrap["egress"] = ["ip", "netns", "exec", netns["host"],
                        *private_hosts(tmp_path / "hosts", {"router.test": "2a02:c7f:1::1"})]
    s.start("egress")
    sock = web_sock(s)
    trace = Strace(s.procs["egress"].pid, tmp_path / "strace.txt")
    refused = [("81.2.69.10", host_port, "81.2.69.10 is this host's own address (on eg0)"),
               ("[2a02:c7f:1::10]", host_port, "2a02:c7f:1::10 is this host's own address (on eg0)"),
               ("[2a02:c7f:1::99]", lan_port, "on this host's network 2a02:c7f:1::/64 (on eg0)"),
               ("81.2.69.50", lan_port, "on this host's network 81.2.69.0/24 (on eg0)"),
               ("81.2.69.1", lan_port, "81.2.69.1 is a gateway of this host"),
               ("[2a02:c7f:1::1]", lan_port, "2a02:c7f:1::1 is a gateway of this host"),
               ("router.test", lan_port, "router.test resolves to local addresses only: 2a02:c7f:1::1 is a gateway"),
               ("[::ffff:81.2.69.10]", host_port, "this host's own address")]
    try:
        status, _, body = get(sock, f"http://93.184.215.14:{lan_port}/system_harness.py")
        assert status == 200 and b"class System" in body  # the public stand-in, through the gateway
        trace.wait_for_connect(lan_port)
        for host, port, why in refused:
            status, headers, body = get(sock, f"http://{host}:{port}/conftest.py")
            assert status == 403 and headers["x-nanoclaw-egress-rule"] == "local-address", (host, status, body)
            assert why.encode() in body, (host, body)
        # an address added while egress runs: refused from the kernel's announcement on
        _ip("-n", netns["host"], "addr", "add", "2a02:c7f:2::10/64", "dev", "eg0", "nodad")
        s.wait_for(lambda: [e for e in s.journal.of("egress") if "2a02:c7f:2::/64" in e["MESSAGE"]], 10,
                   what="egress reading the new address")
        status, _, body = get(sock, f"http://[2a02:c7f:2::77]:{lan_port}/")
        assert status == 403 and b"on this host's network 2a02:c7f:2::/64" in body, body
    finally:
        traced = trace.stop()
    assert '"93.184.215.14"' in traced
    for address in ("81.2.69.10", "2a02:c7f:1::10", "2a02:c7f:1::99", "81.2.69.50", "81.2.69.1", "2a02:c7f:1::1",
                    "2a02:c7f:2::77", "::ffff:81.2.69.10"):
        assert f'"{address}"' not in traced, address
    lines = wait_lines(s, 2 + len(refused))
    assert [x["VERDICT"] for x in lines] == ["allowed"] + ["refused"] * (1 + len(refused))
    assert all(x["RULE"] == "local-address" for x in lines[1:])
