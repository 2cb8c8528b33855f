"""Where an approved chat's agent starts (nanoclaw/daemons/queue/owner.py), in process against
real SQLite and spools, the queue played by the real daemon.

The cursor is the queue's: core/approvals.py records the decision and never moves it; the
queue, making a new group's cursor, starts a chat the owner approved at the message that
asked, and nothing else there.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from nanoclaw.core import approvals
from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Cursor, Group, Message, db
from nanoclaw.daemons.queue import QueueDaemon

LISBON = "120363000000000777@g.us"


@pytest.fixture
def cfg(cfg):
    groups_mod.add_group(cfg, "main", is_main=True)
    return cfg


def started(cfg) -> QueueDaemon:
    """A queue daemon as systemd (re)starts one, on the state left behind."""
    q = QueueDaemon(cfg)
    q.setup()
    return q


def say(chat: str, text: str, **kw) -> Message:
    return Message.create(chat=chat, sender=kw.pop("sender", "owner@term"), text=text, timestamp=time.time(),
                          channel_id=os.urandom(6).hex(), **kw)


def asks(cfg, text: str = "@Andy where do we eat?") -> Message:
    """A chat no group is registered for names the trigger, as the channel stores it."""
    with db.atomic("IMMEDIATE"):
        m = say(LISBON, text, sender="alice@s.whatsapp.net", sender_name="Alice")
        assert approvals.on_inbound(cfg, m, None, chat_name="Lisbon trip", members=5) is not None
    return m


def test_an_approved_chats_agent_starts_at_the_message_that_asked(cfg):
    say(LISBON, "@Andy an old question, kept from before it asked")  # as with [whatsapp] store_unregistered
    asked = asks(cfg)
    approvals.approve(cfg, 1, by="cli")
    group = Group.get(Group.folder == "lisbon-trip")
    assert Cursor.get_or_none(Cursor.group == group) is None  # the queue makes it
    q = started(cfg)
    q.work()
    assert Cursor.get(Cursor.group == group, Cursor.agent == "").last_message_id == asked.id - 1
    [job] = [json.loads(p.read_text())["body"] for p in (cfg.spool_dir / "runner" / "new").iterdir()]
    assert "an old question" not in job["prompt"] and "where do we eat?" in job["prompt"]


def test_a_chat_registered_again_by_hand_starts_at_the_beginning(cfg):
    """Only the request decided as the group was added places its cursor: a later registration
    of the same chat in the same folder, by hand, starts where `groups add` always did."""
    say(LISBON, "@Andy an old question")
    asks(cfg)
    approvals.approve(cfg, 1, folder="lisbon", by="cli")
    groups_mod.remove_group(cfg, "lisbon")
    group = groups_mod.add_group(cfg, "lisbon", jid=LISBON)
    started(cfg).work()
    assert Cursor.get(Cursor.group == group, Cursor.agent == "").last_message_id == 0
