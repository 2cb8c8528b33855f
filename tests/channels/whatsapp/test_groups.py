"""The account's WhatsApp groups (groups.py): discovered, renamed, listed for the main agent."""

from __future__ import annotations

import json

from nanoclaw.core.models import Group

from whatsapp_harness import FAMILY, OWNER, group_info, run, wait_until
from whatsapp_harness import harness_fixture  # noqa: F401 - the harness fixture


def test_discover_lists_groups_and_names_are_refreshed(harness):
    async def go():
        h = await harness().start(connected=False)
        h.client.groups = [group_info(FAMILY, "Family (renamed)", 4), group_info("120363000000000002", "Book club", 9)]
        offline = await h.daemon.handle({"op": "discover_groups"}, None)
        await h.connect()
        found = await h.daemon.handle({"op": "discover_groups"}, None)
        await wait_until(lambda: Group.get(Group.folder == "family").name == "Family (renamed)")
        await h.close()
        return offline, found
    offline, found = run(go())
    assert not offline["ok"] and "not connected" in offline["error"]
    assert found["ok"] and found["self"] == f"{OWNER}@s.whatsapp.net"
    assert found["groups"] == [
        {"name": "Book club", "jid": "120363000000000002@g.us", "participants": 9, "folder": ""},
        {"name": "Family (renamed)", "jid": f"{FAMILY}@g.us", "participants": 4, "folder": "family"}]


def test_the_main_agents_list_of_chats_holds_the_whatsapp_groups_we_are_in(harness):
    """What list_available_groups reads: written by the channel into main's read-only in/."""
    async def go():
        h = await harness().start()
        h.client.groups = [group_info(FAMILY, "Family", 4), group_info("120363000000000002", "Book club", 9)]
        await h.daemon.work()
        path = h.cfg.ipc_dir / "main" / "in" / "available_groups.json"
        chats = json.loads(path.read_text())
        await h.close()
        return chats
    chats = run(go())
    assert {"jid": "120363000000000002@g.us", "name": "Book club", "members": 9, "registered_as": None} in chats
    assert {"jid": f"{FAMILY}@g.us", "name": "Family", "members": 4, "registered_as": "family"} in chats
    assert {"jid": "term@term", "name": "term", "registered_as": "term"} in chats  # registered, not on WhatsApp
