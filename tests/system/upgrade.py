"""What an owner does with the previous release before upgrading it (tests/system/test_upgrade.py),
and what the machine then holds, read the same way before and after the upgrade."""

from __future__ import annotations

import json
import re
import shlex

from .machine import AS_NANOCLAW, Machine

# Read with sqlite3 as the service user: the same for the previous release's database and the
# new one's, and no file of the database becomes root's.
FACTS = """
import json, sqlite3
con = sqlite3.connect("/var/lib/nanoclaw/nanoclaw.db", timeout=30)
q = lambda sql: [list(r) for r in con.execute(sql)]
print(json.dumps({
    "schema": q("PRAGMA user_version")[0][0],
    "groups": q('SELECT folder, jid, name, policy, requires_trigger, is_main FROM "group" ORDER BY id'),
    "tasks": q('SELECT t.id, g.folder, t.prompt, t.schedule_type, t.schedule_value, t.status '
               'FROM task t JOIN "group" g ON g.id = t.group_id ORDER BY t.id'),
    "approved": q('SELECT g.folder, a.sender FROM allowedsender a JOIN "group" g ON g.id = a.group_id'),
    "requests": q("SELECT id, kind, chat, sender, status FROM request ORDER BY id"),
    "usage": q('SELECT id, "group", model, input_tokens, output_tokens FROM usage ORDER BY id'),
    "messages": q("SELECT id, chat, sender, text, is_bot FROM message ORDER BY id"),
    "outbox": q("SELECT key, chat, text FROM outbox ORDER BY id"),
    "unsent": q("SELECT count(*) FROM outbox WHERE status != 'sent'")[0][0],
    "waiting_jobs": q('SELECT j.id, g.folder, j.status FROM job j JOIN "group" g ON g.id = j.group_id '
                      "WHERE j.status IN ('queued', 'running') ORDER BY j.id"),
}))
"""


def facts(m: Machine) -> dict:
    out = m.sh(f"cd / && {AS_NANOCLAW} /opt/nanoclaw/bin/python -c {shlex.quote(FACTS)}").stdout
    found = json.loads(out)
    found["member"] = m.sh("cat /var/lib/nanoclaw/groups/family/agents/researcher.md").stdout
    found["timers"] = sorted(re.findall(r"nanoclaw-task-\d+\.timer",
                                        m.sh("systemctl list-timers --all --no-pager 'nanoclaw-task-*'").stdout))
    return found


def running_agents(m: Machine) -> list[str]:
    out = m.sh(f"cd / && {AS_NANOCLAW} podman ps --filter label=nanoclaw.job --format '{{{{.Names}}}}'").stdout
    return sorted(out.split())


def _task(added: str) -> int:
    return int(added.split("task ")[1].split()[0])


def use_the_previous_release(m: Machine) -> dict:
    """Groups (one asking the owner about strangers, with a team member), tasks as timers, an
    approved sender, usage rows, messages answered and their containers left warm, and one
    message waiting behind a stopped runner. Returns what the machine then holds."""
    m.as_service_user("groups", "add", "family", "--name", "Family")
    m.as_service_user("groups", "set", "family", "--policy", "ask")
    m.as_service_user("agents", "add", "family", "researcher", "--description", "finds flights and prices",
                      "--instructions", "Give prices in euros.")
    m.as_service_user("groups", "add", "work", "--no-trigger")
    tasks = [_task(m.as_service_user("tasks", "add", "main", "--cron", "0 9 * * *", "morning brief").stdout),
             _task(m.as_service_user("tasks", "add", "family", "--every", "2h", "check the weather").stdout)]
    assert "echo: before the upgrade" in m.send("before the upgrade")
    # A stranger in family asks; the owner approves; the message is answered.
    m.nanoclaw("send", "family", "@Andy hello from carol", "--sender", "carol@term")
    pending = m.wait_for(lambda: re.findall(r"^\s*(\d+)\s+sender", m.nanoclaw("pending").stdout, re.M), 30,
                         "carol's request")
    m.as_service_user("approve", pending[0])
    m.wait_for(lambda: any("hello from carol" in r for r in m.replies("family@term")), 180, "carol answered")
    warm = running_agents(m)
    assert len(warm) == 2, warm  # main's and family's containers wait for follow-ups
    # The runner stops; a message for a group with no container waits in the queue's hands.
    m.sh("systemctl stop nanoclaw-runner")
    m.nanoclaw("send", "work", "waiting through the upgrade")

    def queued() -> dict | None:
        found = facts(m)
        return found if ["work", "queued"] in [j[1:] for j in found["waiting_jobs"]] else None

    before = m.wait_for(queued, 30, "the queue's job for it")
    assert sorted(j[1:] for j in before["waiting_jobs"]) == [["family", "running"], ["main", "running"],
                                                               ["work", "queued"]], before["waiting_jobs"]
    assert sorted(f"nanoclaw-task-{t}.timer" for t in tasks) == before["timers"]
    assert before["approved"] == [["family", "carol@term"]] and before["usage"], before
    before["warm"] = warm
    return before
