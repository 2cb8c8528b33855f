"""The credential proxy's own answers: refusals are valid JSON, whatever the request said."""

from __future__ import annotations

import json
import socket


def test_a_refusal_is_valid_json_whatever_the_path_holds(offline_system):
    """The defect: the error body was built with % and the request path, so a quote broke it."""
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    for path in ('/etc/"passwd', "/x\\y", "/%s%d"):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.settimeout(10)
            c.connect(str(sock))
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            data = b""
            while chunk := c.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 403"), head
        error = json.loads(body)["error"]
        assert error["type"] == "nanoclaw_proxy" and repr(path) in error["message"]


def test_an_agents_api_path_cannot_forge_journal_fields(make_system, fake_api):
    """The relay's line names the path; the agent chooses it, so '=' in it must not become a
    journal field such as HOST= or VERDICT= (the egress proxy's fields)."""
    from conftest import subjects
    s = make_system(proxy_upstream=fake_api.url)
    s.set_credential("sk-ant-api03-journal-test")
    s.cli("groups", "add", "main", "--main")
    s.start("proxy")
    sock = s.run / "proxy" / "main" / "api.sock"
    s.wait_for(sock.exists, 10, what="main's API socket")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(10)
        c.connect(str(sock))
        c.sendall(b"GET /v1/x/host=evil.example/verdict=allowed HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert c.recv(65536).startswith(b"HTTP/1.1 200")
    entry = s.wait_for(lambda: next((e for e in s.journal.of("proxy") if "GET /v1/x/" in e["MESSAGE"]), None),
                       10, what="the relay's line")
    assert subjects(entry) == {"GROUP": "main"}, entry


def test_the_api_relay_and_the_web_are_two_programs_each_serving_without_the_other(make_system, fake_api):
    """nanoclaw-proxy (the credential) and nanoclaw-egress (hostile web traffic) are separate
    processes: with either one killed, the other still serves its socket in the same directory."""
    import signal

    from web_sites import PAGE, Site
    from test_usage import call
    site = Site()
    s = make_system(proxy_upstream=fake_api.url,
                    egress={"allow_addresses": ["127.0.0.1"], "ports": [80, 443, site.port]})
    s.set_credential("sk-ant-api03-split-test")
    s.cli("groups", "add", "main", "--main")
    s.start("proxy", "egress")
    d = s.run / "proxy" / "main"
    s.wait_for(lambda: (d / "api.sock").exists() and (d / "web.sock").exists(), 10, what="both sockets")
    assert s.procs["proxy"].pid != s.procs["egress"].pid
    s.stop("egress", sig=signal.SIGKILL)
    assert call(d / "api.sock")[0] == 200  # the API without egress
    s.start("egress")
    s.stop("proxy", sig=signal.SIGKILL)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:  # the web without the proxy
        c.settimeout(10)
        c.connect(str(d / "web.sock"))
        c.sendall(f"GET http://127.0.0.1:{site.port}/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200") and data.endswith(PAGE)
    site.close()
