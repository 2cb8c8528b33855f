"""Spool messages (core/messages.py): every kind round-trips, a field no struct declares is
refused (its file goes to bad/ with a reason naming the kind and the field), and files the
previous release wrote are still read (and what this one writes, the previous one reads)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from old_release import PREVIOUS_RELEASE, need_commit
from system_harness import ROOT
from nanoclaw.core.protocol import BadMessage, Spool, decode, encode, validate

# One body per kind with every field its struct declares (optional ones too), as its writer
# sends it; written here by hand, so a field dropped from a struct fails the round trip.
FULL = {
    "job": {"job": 7, "group": "family", "chat": "fam@g.us", "is_main": False, "prompt": "<messages/>",
            "session_id": None, "agent": "researcher", "precheck": "test -e x", "model": "claude-haiku-4-5"},
    "prompt": {"job": 7, "turn": 1, "prompt": "hello", "session_id": "s-1"},
    "close": {"job": 7},
    "park": {"job": 7},
    "stop": {"job": 7, "turn": 2},
    "result": {"job": 7, "turn": 1, "text": "hi", "session_id": "s-1", "error": None,
               "usage": {"input_tokens": 3, "duration_s": 1.5, "stages": {"python": 1.0}}},
    "progress": {"job": 7, "turn": 1, "state": "tool", "tool": "Bash", "detail": "git log"},
    "send_message": {"job": 7, "text": "on my way", "chat": "main"},
    "task_request": {"job": 7, "action": "add", "task": {"prompt": "p", "schedule": "@daily"}},
    "register_group": {"job": 7, "jid": "x@g.us", "name": "X", "folder": "x", "trigger": "@Andy"},
    "delegate": {"job": 7, "agent": "researcher", "task": "look it up"},
    "create_agent": {"job": 7, "name": "researcher", "description": "d", "instructions": "i",
                     "model": "claude-x", "tools": ["WebSearch"]},
    "raise_budget": {"job": 7, "group": "all", "period": "day", "amount": 2.5, "unit": "usd", "mode": "set"},
    "budget_spent": {"group": "family", "agent": "researcher", "key": "family:day"},
    "turn_result": {"group": "family", "agent": "", "job": 7, "turn": 1, "text": "hi", "session_id": None,
                    "error": None, "usage": {"stages": {"process": 1.0, "sdk_imported": 2.5}}},
    "job_event": {"job": 7, "event": "exited", "exit_code": 0, "error": "", "container": "nc-family-7",
                  "reason": "", "stopped": True},
    "task_fire": {"task": 3, "fired_at": 1.5, "due_at": None, "started_at": 1.25, "python_at": 1.375},
    "transcribe": {"message": 12, "group": "family", "file": "inbox/12-note.ogg", "deadline": 1700000000.5},
    "transcript": {"message": 12, "group": "family", "ok": True, "text": "Andy, hello", "cut": False,
                   "language": "en", "duration": 4.2, "engine": "faster-whisper", "model": "tiny.en",
                   "took": 0.6, "error": ""},
    "outbound": {"key": "k", "chat": "fam@g.us", "text": "Grüße ✓", "kind": "reply", "sender": "Andy",
                 "reply_to": 12},
}
# The same with only what is required: an absent optional field stays absent.
REQUIRED = {
    "job": ["job", "group", "chat", "is_main", "prompt", "session_id"],
    "result": ["job", "turn", "text"],
    "progress": ["job", "turn", "state"],
    "send_message": ["job", "text"],
    "create_agent": ["job", "name", "description", "instructions"],
    "raise_budget": ["job", "group", "period", "amount"],
    "budget_spent": ["group"],
    "turn_result": ["group", "job", "turn", "text", "session_id", "error"],
    "job_event": ["job", "event"],
    "task_fire": ["task", "fired_at"],
    "transcript": ["message", "group", "ok"],
    "outbound": ["key", "chat", "text", "kind"],
}


def minimal(kind: str) -> dict:
    return {k: v for k, v in FULL[kind].items() if k in REQUIRED.get(kind, FULL[kind])}


def test_every_kind_is_covered():
    from nanoclaw.core.messages import KINDS
    assert set(KINDS) == set(FULL)


@pytest.mark.parametrize("kind", sorted(FULL))
def test_a_valid_message_round_trips(tmp_path, kind):
    spool = Spool(tmp_path / "q").ensure()
    for body in (FULL[kind], minimal(kind)):
        spool.put(kind, body)
        [env] = spool.take(spool.claim_new())
        assert (env.type, env.body) == (kind, body)
        spool.done(env.path)
    assert not list(spool.bad.iterdir())


@pytest.mark.parametrize("kind", sorted(FULL))
def test_an_unknown_field_is_refused(tmp_path, kind):
    """A file with a field its kind does not declare (an agent's, or a writer newer than the
    reader) goes to bad/ with one line naming the kind and the field: nothing reads it."""
    spool = Spool(tmp_path / "q").ensure()
    raw = json.dumps({"v": 1, "type": kind, "body": {**FULL[kind], "surprise": 1}}).encode()
    (spool.new / f"00000000000000000001.1.1.{kind}").write_bytes(raw)
    assert spool.take(spool.claim_new()) == []
    reason = (spool.bad / f"00000000000000000001.1.1.{kind}.reason").read_text()
    assert reason == f"{kind}: unknown field 'surprise'\n"
    with pytest.raises(BadMessage, match=f"{kind}: unknown field 'surprise'"):
        encode(kind, {**FULL[kind], "surprise": 1})


def test_nested_and_envelope_fields_are_checked_too():
    body = {**FULL["turn_result"], "usage": {"stages": {"python": 1.0}, "cost": 9}}
    with pytest.raises(BadMessage, match="turn_result: unknown field 'usage.cost'"):
        decode(json.dumps({"v": 1, "type": "turn_result", "body": body}).encode())
    body = {**FULL["turn_result"], "usage": {"stages": {"a b=c": 1.0}}}  # a forged log field
    with pytest.raises(BadMessage, match="turn_result: field 'usage.stages'"):
        decode(json.dumps({"v": 1, "type": "turn_result", "body": body}).encode())
    with pytest.raises(BadMessage, match="envelope: unknown field 'extra'"):
        decode(json.dumps({"v": 1, "type": "close", "body": {"job": 1}, "extra": 1}).encode())
    with pytest.raises(BadMessage, match="close: field 'job' has the wrong type"):
        decode(b'{"v": 1, "type": "close", "body": {"job": true}}')
    body = minimal("outbound")
    del body["text"]
    with pytest.raises(BadMessage, match="outbound: missing field 'text'"):
        decode(json.dumps({"v": 1, "type": "outbound", "body": body}).encode())


def _previous_protocol(tmp_path):
    """protocol.py as the previous release had it, loaded beside this one."""
    need_commit(PREVIOUS_RELEASE)
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{PREVIOUS_RELEASE}:nanoclaw/core/protocol.py"],
                         capture_output=True, check=True).stdout
    path = tmp_path / "previous_protocol.py"
    path.write_bytes(src)
    spec = importlib.util.spec_from_file_location("previous_protocol", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["previous_protocol"] = module
    spec.loader.exec_module(module)
    return module


def test_files_of_the_previous_release_are_read_and_the_other_way_round(tmp_path):
    """An upgrade finds files the old code wrote in its spools; a rollback finds the new
    code's: each reads the other's, every kind both know, full and minimal."""
    old = _previous_protocol(tmp_path)
    kinds = sorted(set(FULL) & set(old.SCHEMAS))
    assert kinds
    for kind in kinds:
        for body in (FULL[kind], minimal(kind)):
            if set(body) - set(old.SCHEMAS[kind]):
                continue  # a field the previous release did not have yet
            old_spool, new_spool = old.Spool(tmp_path / "a").ensure(), Spool(tmp_path / "a")
            old_spool.put(kind, body)
            [env] = new_spool.take(new_spool.claim_new())
            assert (env.type, env.body) == (kind, body)
            new_spool.done(env.path)
            new_spool.put(kind, body)
            [env] = old_spool.take(old_spool.claim_new())
            assert (env.type, env.body) == (kind, body)
            old_spool.done(env.path)
            assert not list(new_spool.bad.iterdir())


def test_validation_is_strict():
    with pytest.raises(BadMessage, match="wrong type"):
        validate({"v": 1, "type": "close", "body": {"job": True}})
    with pytest.raises(BadMessage, match="missing"):
        validate({"v": 1, "type": "close", "body": {}})
    with pytest.raises(BadMessage, match="version"):
        validate({"v": "1", "type": "close", "body": {"job": 1}})
    with pytest.raises(BadMessage):
        encode("close", {"job": "1"})
    assert validate(json.loads(encode("close", {"job": 1}))) == ("close", {"job": 1})
