"""The requests on the daemons' sockets are typed (core/socket_lines.py): a field no struct
declares, or one of the wrong type, is refused with one line naming the op and the field;
every op a daemon serves has its struct; and a real daemon answers so on its socket."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from nanoclaw.core import socket_lines
from nanoclaw.core.messages import BadMessage
from nanoclaw.core.protocol import LineClient

ROOT = Path(__file__).resolve().parent.parent


def refused(obj: dict) -> str:
    with pytest.raises(BadMessage) as exc:
        socket_lines.check(obj)
    return str(exc.value)


def test_an_unknown_field_is_refused_naming_op_and_field():
    assert refused({"op": "ping", "extra": 1}) == "ping: unknown field 'extra'"
    assert refused({"op": "inbound", "group": "main", "text": "hi", "admin": True}) == \
        "inbound: unknown field 'admin'"
    assert refused({"op": "typing", "chat": "x@term", "on": True, "as": "owner"}) == "typing: unknown field 'as'"


def test_a_wrong_type_is_refused_naming_op_and_field():
    assert refused({"op": "inbound", "group": "main", "text": "hi", "id": 5}) == \
        "inbound: field 'id' has the wrong type (expected str | null, got int)"
    assert refused({"op": "deliver", "chat": "main@term", "text": "x", "outbox_id": "1"}) == \
        "deliver: field 'outbox_id' has the wrong type (expected int, got str)"
    assert refused({"op": "typing", "chat": "x@term", "on": 1}) == \
        "typing: field 'on' has the wrong type (expected bool, got int)"
    assert refused({"op": "kill", "job": True}) == "kill: field 'job' has the wrong type (expected int, got bool)"
    assert refused({"op": "typing", "chat": "x@term"}) == "typing: missing field 'on'"
    assert refused({"op": "format_disk"}) == "unknown op 'format_disk'"
    assert refused({"op": "ping", "v": 2}) == "unsupported version 2"
    assert refused(["ping"]) == "expected an object with an 'op'"


def test_a_good_request_is_handed_on_as_the_fields_it_carried():
    assert socket_lines.check({"op": "inbound", "group": "main", "text": "hi", "v": 1}) == \
        ("inbound", {"op": "inbound", "v": 1, "group": "main", "text": "hi"})
    assert socket_lines.check({"op": "ensure", "group": "fam"}) == ("ensure", {"op": "ensure", "group": "fam"})


def served_ops() -> dict[str, str]:
    """Every op a daemon's code compares a request's op with (``op == "x"``, ``req["op"] ==
    "x"``, ``req.get("op") == "x"``), read from the source: op -> where."""
    found: dict[str, str] = {}
    for path in (ROOT / "nanoclaw").rglob("*.py"):
        tree = ast.parse(path.read_text(), str(path))
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Compare) and len(node.ops) == 1 and isinstance(node.ops[0], ast.Eq)):
                continue
            left, right = node.left, node.comparators[0]
            if not (isinstance(right, ast.Constant) and isinstance(right.value, str)):
                continue
            is_op = (isinstance(left, ast.Name) and left.id == "op") or \
                (isinstance(left, ast.Subscript) and isinstance(left.slice, ast.Constant) and left.slice.value == "op") or \
                (isinstance(left, ast.Call) and isinstance(left.func, ast.Attribute) and left.func.attr == "get"
                 and left.args and isinstance(left.args[0], ast.Constant) and left.args[0].value == "op")
            if is_op:
                found.setdefault(right.value, f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


# Ops compared in code that are pushed to a client (a watcher's messages, pairing's codes),
# not requests a daemon serves.
PUSHED = {"message"}


def test_every_op_the_daemons_serve_is_declared():
    served = served_ops()
    assert {"nudge", "ping", "status", "inbound", "deliver", "typing", "stop", "kill", "ensure"} <= set(served)
    missing = {op: where for op, where in served.items() if op not in socket_lines.REQUESTS and op not in PUSHED}
    assert not missing, f"ops served without a struct in core/socket_lines.py: {missing}"
    stale = set(socket_lines.REQUESTS) - set(served)
    assert not stale, f"structs for ops no daemon serves: {stale}"


def test_a_real_daemon_refuses_a_bad_line_and_serves_the_next(offline_system):
    s = offline_system
    s.cli("groups", "add", "main", "--main")
    s.start("channel", "queue")
    with LineClient(s.run / "channel.sock") as c:
        bad = c.call({"op": "inbound", "group": "main", "text": "hi", "id": 5})
        assert bad == {"ok": False, "error": "inbound: field 'id' has the wrong type (expected str | null, got int)"}
        assert c.call({"op": "inbound", "group": "main", "text": "hi", "sneaky": 1}) == \
            {"ok": False, "error": "inbound: unknown field 'sneaky'"}
        good = c.call({"op": "inbound", "group": "main", "text": "hello", "id": "r-1"})
        assert good["ok"] and good["duplicate"] is False
    with s.db() as con:  # the refused lines stored nothing; the good one is there once
        assert [r[0] for r in con.execute("select text from message where is_bot = 0")] == ["hello"]
    with LineClient(s.run / "queue.sock") as q:
        assert q.call({"op": "stop", "group": 7}) == \
            {"ok": False, "error": "stop: field 'group' has the wrong type (expected str, got int)"}
        assert q.call({"op": "ping"})["daemon"] == "queue"
    assert "socket request refused: inbound: unknown field 'sneaky'" in s.log("channel")
    assert "Traceback" not in s.log("channel") and "Traceback" not in s.log("queue")
