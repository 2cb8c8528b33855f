#!/usr/bin/env python3
"""What the egress daemon adds to an HTTPS fetch: proxied against direct, on loopback.

    python3 bench/egress_latency.py [--runs 300]

A site on 127.0.0.1 serves a small page over TLS (a throwaway CA made with
openssl). Direct: a new TLS connection to it per fetch. Proxied: the same
fetch as an agent makes it: TCP to a byte relay on 127.0.0.1 (what the
container's forwarder is), the group's web socket, the real egress daemon
(policy, lookup, journal line), CONNECT, then TLS end to end with the site.
The two kinds alternate so that load on the machine falls on both alike.
Every byte stays on loopback.
"""

from __future__ import annotations

import argparse
import http.client
import os
import socket
import ssl
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from system_harness import System  # noqa: E402
from web_sites import PAGE, Site, make_certs, server_tls  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def relay(unix_path: Path) -> int:
    """A TCP port on 127.0.0.1 whose connections are relayed byte for byte to ``unix_path``,
    as the agent runner's forwarder does in the container; returns the port."""
    listener = socket.create_server(("127.0.0.1", 0))

    def pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def accept() -> None:
        while True:
            client, _ = listener.accept()
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # as asyncio's forwarder has it
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(str(unix_path))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=pump, args=(a, b), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return listener.getsockname()[1]


def fetch(ctx: ssl.SSLContext, port: int, proxy_port: int | None) -> float:
    """One HTTPS GET on a new connection; seconds from connect to the last byte."""
    started = time.perf_counter()
    if proxy_port is None:
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    else:
        conn = http.client.HTTPSConnection("127.0.0.1", proxy_port, context=ctx, timeout=10)
        conn.set_tunnel("127.0.0.1", port)
    try:
        conn.request("GET", "/bench")
        body = conn.getresponse().read()
    finally:
        conn.close()
    assert body == PAGE, body[:200]
    return time.perf_counter() - started


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=300)
    args = ap.parse_args()
    base = Path(tempfile.mkdtemp(prefix="nc-egress-bench-"))
    certs = make_certs(base / "certs")
    site = Site(server_tls(certs))
    system = System(base / "sys", {"timezone": "UTC", "egress": {
        "allow_addresses": ["127.0.0.1"], "ports": [site.port]}})
    try:
        system.cli("groups", "add", "main", "--main")
        system.start("egress")
        sock = system.run / "proxy" / "main" / "web.sock"
        system.wait_for(sock.exists, 10, what="the web socket")
        proxy_port = relay(sock)
        ctx = ssl.create_default_context(cafile=str(certs / "ca.pem"))
        for _ in range(10):  # warm both paths (imports, first handshakes)
            fetch(ctx, site.port, None)
            fetch(ctx, site.port, proxy_port)
        direct, proxied = [], []
        for _ in range(args.runs):
            direct.append(fetch(ctx, site.port, None))
            proxied.append(fetch(ctx, site.port, proxy_port))
        # egress writes a tunnel's line once it sees the close: wait for the last one
        lines = system.wait_for(lambda: (n := system.log("egress").count(" egress ip=")) >= args.runs + 10
                                and n, 10, what="a journal line per proxied connection")
    finally:
        system.close()
        site.close()
    print(f"HTTPS GET of a {len(PAGE)}-byte page on loopback, a new TLS connection each, "
          f"{args.runs} runs each, {os.cpu_count()} cores")
    print(f"{'':<10} {'p50':>9} {'p90':>9} {'p99':>9}")
    for name, values in (("direct", direct), ("proxied", proxied)):
        print(f"{name:<10} " + " ".join(f"{pct(values, p) * 1000:7.2f}ms" for p in (50, 90, 99)))
    print(f"{'added':<10} " + " ".join(f"{(pct(proxied, p) - pct(direct, p)) * 1000:7.2f}ms" for p in (50, 90, 99)))
    print(f"egress journal lines: {lines} for {args.runs + 10} proxied connections")
    return 0


if __name__ == "__main__":
    sys.exit(main())
