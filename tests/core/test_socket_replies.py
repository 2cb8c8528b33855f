"""The replies on the daemons' sockets and the lines pushed to a watcher are typed
(nanoclaw/core/socket_replies.py): the client refuses one that carries a field its struct
does not declare, in one line naming the op and the field, and reads a well-formed one as
before, pipelined requests each against their own op; the server never sends such a reply."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import threading
from pathlib import Path

import pytest

from nanoclaw.core import serve, socket_replies
from nanoclaw.core.protocol import LineClient
from nanoclaw.core.socket_replies import BadReply

STORED = {"ok": True, "message_id": 7, "duplicate": False, "chat": "main@term"}
WATCHING = {"ok": True, "chat": "main@term", "group": "main",
            "history": [{"text": "hi", "from": "owner", "name": "", "time": 1.5}]}


def test_a_reply_with_an_unknown_field_is_refused_naming_op_and_field():
    with pytest.raises(BadReply) as exc:
        socket_replies.read("inbound", {**STORED, "admin": True}, "channel daemon")
    assert str(exc.value) == "the channel daemon's reply does not fit: inbound: unknown field 'admin'"
    with pytest.raises(BadReply) as exc:
        socket_replies.read("watch", {**WATCHING, "history": [{**WATCHING["history"][0], "x": 1}]}, "channel daemon")
    assert str(exc.value) == "the channel daemon's reply does not fit: watch: unknown field 'history[0].x'"
    with pytest.raises(BadReply) as exc:
        socket_replies.read("inbound", {**STORED, "message_id": "7"}, "channel daemon")
    assert str(exc.value) == \
        "the channel daemon's reply does not fit: inbound: field 'message_id' has the wrong type (expected int, got str)"
    with pytest.raises(BadReply):  # an op without a reply of its own: ok and error, nothing else
        socket_replies.read("typing", {"ok": True, "typing": True}, "channel daemon")


def test_a_well_formed_reply_is_read_as_the_fields_it_carried():
    assert socket_replies.read("inbound", STORED, "channel daemon") == STORED
    assert socket_replies.read("watch", WATCHING, "channel daemon") == WATCHING
    assert socket_replies.read("stop", {"ok": False, "error": "no such group"}, "queue daemon") == \
        {"ok": False, "error": "no such group"}  # an error fits every op's reply


def test_a_pushed_line_is_read_by_its_own_op():
    line = {"op": "message", "chat": "main@term", "text": "hello", "id": "m1", "from": "assistant", "name": ""}
    assert socket_replies.read(None, line, "channel daemon") == line
    with pytest.raises(BadReply) as exc:
        socket_replies.read(None, {**line, "admin": True}, "channel daemon")
    assert str(exc.value) == "the channel daemon's line does not fit: message: unknown field 'admin'"
    with pytest.raises(BadReply) as exc:
        socket_replies.read(None, {"op": "format_disk"}, "channel daemon")
    assert "neither a reply nor a line it pushes" in str(exc.value)


class FakeDaemonSocket:
    """A socket that answers each request line with the next of ``replies`` (a daemon of
    another release, say): what a client makes of replies it was not built for."""

    def __init__(self, path: Path, replies: list[dict]) -> None:
        self.replies = list(replies)
        self.asked: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(4)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            buf = b""
            while self.replies and (chunk := conn.recv(65536)):
                buf += chunk
                while b"\n" in buf and self.replies:
                    line, _, buf = buf.partition(b"\n")
                    self.asked.append(json.loads(line))
                    conn.sendall(json.dumps(self.replies.pop(0)).encode() + b"\n")

    def close(self) -> None:
        self.server.close()


def test_the_client_refuses_a_reply_with_an_unknown_field(tmp_path):
    fake = FakeDaemonSocket(tmp_path / "channel.sock", [{**STORED, "admin": True}])
    try:
        with LineClient(tmp_path / "channel.sock") as c, pytest.raises(BadReply) as exc:
            c.call({"op": "inbound", "group": "main", "text": "hi"})
        assert str(exc.value) == "the channel daemon's reply does not fit: inbound: unknown field 'admin'"
    finally:
        fake.close()


def test_pipelined_replies_are_each_read_against_their_own_request(tmp_path):
    """Two requests sent before either reply is read: each reply is checked as its op's, so
    the watch's history passes, and the same reply given to the inbound would not."""
    fake = FakeDaemonSocket(tmp_path / "channel.sock", [STORED, WATCHING, WATCHING])
    try:
        with LineClient(tmp_path / "channel.sock") as c:
            c.send({"op": "inbound", "group": "main", "text": "hi"})
            c.send({"op": "watch", "group": "main"})
            assert c.recv() == STORED
            assert c.recv() == WATCHING
            with pytest.raises(BadReply) as exc:  # a watch's answer to an inbound: not what was asked
                c.call({"op": "inbound", "group": "main", "text": "again"})
            assert "inbound: unknown field" in str(exc.value)
        assert [a["op"] for a in fake.asked] == ["inbound", "watch", "inbound"]
    finally:
        fake.close()


def test_the_cli_says_in_one_line_what_it_did_not_understand(offline_system):
    s = offline_system
    fake = FakeDaemonSocket(s.run / "channel.sock", [{**STORED, "admin": True}])
    try:
        r = s.cli("send", "main", "hello", check=False)
    finally:
        fake.close()
    assert r.returncode == 1
    assert r.stderr == "nanoclaw: the channel daemon's reply does not fit: inbound: unknown field 'admin'\n"
    assert fake.asked and fake.asked[0]["text"] == "hello"  # it was asked, and its answer refused


class SlipDaemon:
    """The daemon side of core/serve.py with a handler that slips a field into one reply."""
    name = "slip"
    log = logging.getLogger("slip")

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        if req["op"] == "ping":
            return {"ok": True, "daemon": self.name, "pid": 1, "secret": "not for the wire"}
        if req["op"] == "status":
            return {"ok": True, "daemon": self.name, "status": "fine"}
        return None

    def disconnected(self, writer: asyncio.StreamWriter) -> None:
        pass


def test_the_server_never_sends_a_field_the_reply_does_not_declare(tmp_path, caplog):
    path = tmp_path / "slip.sock"
    daemon = SlipDaemon()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    server = asyncio.run_coroutine_threadsafe(
        asyncio.start_unix_server(lambda r, w: serve.serve_client(daemon, r, w), path=str(path)), loop).result(10)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:  # the bytes on the wire
            raw.settimeout(10)
            raw.connect(str(path))
            raw.sendall(b'{"op": "ping"}\n{"op": "status"}\n')  # pipelined: answered in order
            buf = b""
            while buf.count(b"\n") < 2:
                buf += raw.recv(65536)
    finally:
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
    bad, good = (json.loads(line) for line in buf.splitlines())
    assert bad == {"ok": False, "error": "internal error: reply to ping: unknown field 'secret'"}
    assert b"not for the wire" not in buf
    assert good == {"ok": True, "daemon": "slip", "status": "fine"}  # the next request is served as before
    assert "not sent: reply to ping: unknown field 'secret'" in caplog.text
