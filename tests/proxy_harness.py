"""The agent's side of a group's api.sock, as the container's forwarder relays it: an HTTP
client over the Unix socket, a proxy system with prices of the tests' own, job rows as the
queue makes them, and what the proxy recorded (usage rows, journal lines)."""

from __future__ import annotations

import http.client
import json
import socket
import time

from system_harness import subjects


# A price of our own, so costs are checked against numbers the tests state (test_meter.cost).
PRICES = {"claude-test": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.30}}


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


def open_stream(sock, max_tokens: int = 100) -> tuple[UnixHTTP, http.client.HTTPResponse, bytes]:
    """A streamed Messages call, read up to the end of its first event and left open:
    (connection, response, the bytes read so far)."""
    conn = UnixHTTP(sock)
    conn.request("POST", "/v1/messages", json.dumps({"model": "claude-test-1", "stream": True, "max_tokens": max_tokens,
                                                     "messages": [{"role": "user", "content": "hi"}]}),
                 {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = resp.read1(65536)
    while b"\n\n" not in first:
        first += resp.read1(65536)
    return conn, resp, first


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
