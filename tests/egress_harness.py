"""Egress as the container's forwarder meets it: test sites on 127.0.0.1 (fixtures ``certs`` and
``sites``, imported by the tests that use them), requests on a group's web socket, egress's
journal lines, a resolver of the test's own, and strace of a daemon's connect() calls."""

from __future__ import annotations

import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest
from system_harness import subjects
from web_sites import PAGE, Site, make_certs, server_tls


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
