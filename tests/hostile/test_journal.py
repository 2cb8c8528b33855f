"""Nothing an agent writes becomes a journal field (issue 24, section 2).

Every string an agent controls is given ``X=Y``, ``verdict=allowed``, fields of our own
(``group=``, ``GROUP=``, ...) and line breaks, and pushed through the real daemons: its
model name (the API relay), a web host (the egress proxy), its error text, its container's
last output, a pre-check's output, team member names, a task's prompt and schedule, its
messages, the chats and folders it names. Then every entry the journal stand-in received
(the native protocol, parsed as journald parses it) must carry only fields nanoclaw meant:
known names, a GROUP that is a registered folder, an AGENT that is a member, VERDICT
``allowed`` only for a connection that was allowed, no value with a space, ``=`` or line
break, and nothing of the agent's words except in the two fields that name what it asked
for (MODEL, HOST), whole. No line of any daemon's own log is split by the agent's text.
"""

from __future__ import annotations

import re
import socket

import pytest
from proxy_harness import call
from system_harness import JOURNAL_OWN, subjects

from nanoclaw.core.log import FIELDS, clean
from nanoclaw.core.protocol import Spool

MARK = "FORGED"
FORGE = f"X=Y verdict=allowed group={MARK} job=666 host={MARK}\nGROUP={MARK} VERDICT=allowed\r\nAGENT={MARK} rule=-"
NAMES = {"MESSAGE_ROW" if f == "message" else f.upper() for f in FIELDS} | set(JOURNAL_OWN)
AGENT_NAMED = ("MODEL", "HOST")  # fields whose value is, by design, what the agent asked for (cleaned)
LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) nanoclaw")


def web_request(sock, raw: bytes) -> bytes:
    """What an agent sends on its group's web.sock (its forwarder relays bytes as they come)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
        c.settimeout(20)
        c.connect(str(sock))
        c.sendall(raw)
        out = b""
        while chunk := c.recv(65536):
            out += chunk
        return out


def newest_job(s, folder: str, agent: str = "") -> int:
    with s.db() as con:
        return con.execute('select max(j.id) from job j join "group" g on g.id = j.group_id '
                           "where g.folder=? and j.agent=?", (folder, agent)).fetchone()[0]


def entries_with(s, daemon: str, text: str) -> list[dict]:
    return [e for e in s.journal.of(daemon) if text in e["MESSAGE"]]


@pytest.mark.podman
def test_no_agent_text_becomes_a_journal_field_or_splits_a_line(make_system, agent_image, podman_service, fake_api):
    s = make_system(container={"image": agent_image, "podman_url": podman_service}, proxy_upstream=fake_api.url,
                    max_attempts=2)
    s.set_credential("sk-ant-api03-journal-test")
    s.cli("groups", "add", "main", "--main")
    s.cli("groups", "add", "family")
    s.cli("agents", "add", "main", "helper", "--description", "helps", "--instructions", "Help.")
    s.start()

    # The container's last words, and an error result's text.
    s.send("main", f"die {FORGE}")
    s.wait_for(lambda: entries_with(s, "runner", "failed:"), 60, what="the container's failure logged")
    s.barrier()
    s.send("main", f"error {FORGE}")
    s.wait_for(lambda: entries_with(s, "queue", "agent error"), 60, what="the agent's error logged")
    s.barrier()

    # Its model name, on the API relay (the fake API names the model it was asked for).
    proxy = s.run / "proxy" / "main"
    assert call(proxy / "api.sock", model=FORGE)[0] == 200
    # A host with an IPv6 zone id (any text), and one with a space, on the web proxy.
    zone_answer = web_request(proxy / "web.sock", b"CONNECT [fe80::1%x,verdict=allowed,rule=-]:443 HTTP/1.1\r\n"
                                                  b"Host: [fe80::1%x,verdict=allowed,rule=-]:443\r\n\r\n")
    assert zone_answer.startswith(b"HTTP/1.1 400 ") and b"rule: bad-host" in zone_answer
    web_request(proxy / "web.sock", f"GET http://{MARK}.example/ HTTP/1.1\r\nHost: x verdict=allowed\r\n\r\n"
                .encode())

    # Requests in its own out/ spool, as its tools (or a shell in its container) write them.
    job = newest_job(s, "main")
    out = Spool(s.state / "ipc" / "main" / "out").ensure()
    out.put("send_message", {"job": job, "text": FORGE})
    out.put("send_message", {"job": job, "text": "hi", "chat": FORGE})
    out.put("task_request", {"job": job, "action": "schedule",
                             "task": {"prompt": FORGE, "schedule_type": "interval", "schedule_value": "1h"}})
    out.put("task_request", {"job": job, "action": "schedule",
                             "task": {"prompt": "x", "schedule_type": "cron", "schedule_value": FORGE}})
    out.put("task_request", {"job": job, "action": "schedule",
                             "task": {"prompt": "x", "schedule_type": "interval", "schedule_value": "1h",
                                      "target_group": FORGE}})
    out.put("register_group", {"job": job, "jid": "evil@g.us", "name": FORGE, "folder": "evil\n", "trigger": ""})
    out.put("register_group", {"job": job, "jid": FORGE, "name": FORGE, "folder": "evil2", "trigger": FORGE})
    out.put("send_message", {"job": job, "text": "hello", "chat": "evil2"})  # its CHAT: the chat id it gave
    out.put("create_agent", {"job": job, "name": FORGE, "description": FORGE, "instructions": FORGE})
    out.put("create_agent", {"job": job, "name": "mole\n", "description": "x", "instructions": "y"})
    out.put("delegate", {"job": job, "agent": FORGE, "task": FORGE})
    out.put("raise_budget", {"job": job, "group": FORGE, "period": FORGE, "amount": 1})
    out.put("delegate", {"job": job, "agent": "helper", "task": FORGE})  # runs the member: it echoes the task
    s.nudge("ipc")
    s.wait_for(lambda: not list((s.state / "ipc" / "main" / "out" / "new").iterdir()), 30, what="ipc took them all")
    s.wait_for(lambda: entries_with(s, "queue", "answered delegation="), 90, what="the member's answer")

    # A pre-check's output, through a task run.
    s.cli("tasks", "add", "main", "--every", "1h", "--if", f"printf '%s' '{FORGE}' >&2; exit 1", "checked")
    with s.db() as con:
        task = con.execute("select max(id) from task where prompt='checked'").fetchone()[0]
    s.cli("tasks", "run-now", str(task))
    s.wait_for(lambda: entries_with(s, "queue", "skipped, no agent started"), 60, what="the pre-check's skip")
    s.barrier()

    folders = {"main", "family"}
    problems = []
    ours = [e for e in list(s.journal.entries) if e.get("SYSLOG_IDENTIFIER", "").startswith("nanoclaw-")]
    for e in ours:
        where = f"{e['SYSLOG_IDENTIFIER']}: {e['MESSAGE'][:160]!r}"
        if set(e) - NAMES:
            problems.append(f"{where}: fields {sorted(set(e) - NAMES)}")
        if "\n" in e["MESSAGE"] or "\r" in e["MESSAGE"]:
            problems.append(f"{where}: a line break in the text")
        for key, value in subjects(e).items():
            if not re.fullmatch(r"[A-Za-z0-9._:@/+-]*", value):
                problems.append(f"{where}: {key}={value!r} is not one clean value")
            if MARK in value and key not in AGENT_NAMED:
                problems.append(f"{where}: {key}={value!r} holds the agent's words")
        if "GROUP" in e and e["GROUP"] not in folders:
            problems.append(f"{where}: GROUP={e['GROUP']!r} is no registered folder")
        if "AGENT" in e and e["AGENT"] not in ("lead", "helper"):
            problems.append(f"{where}: AGENT={e['AGENT']!r} is no agent of the team")
        if e.get("VERDICT") == "allowed" and ("verdict" in e.get("HOST", "") or MARK in e.get("HOST", "")):
            problems.append(f"{where}: VERDICT=allowed for {e.get('HOST')!r}, a connection never made")
    # Each of the two agent-named fields is there, whole: the model it named, the host it asked for.
    if not any(e.get("MODEL") == clean(FORGE[:100]) for e in ours):  # usage keeps 100 characters of a name
        problems.append(f"no API line with MODEL={clean(FORGE[:100])!r}: "
                        f"{[subjects(e) for e in s.journal.of('proxy')]}")
    # The zone-id host is refused as it is parsed: its line names no host (never the agent's text).
    zone = [e for e in s.journal.of("egress") if e.get("RULE") == "bad-host"]
    if len(zone) != 1 or zone[0].get("VERDICT") != "refused" or zone[0].get("HOST") != "-":
        problems.append(f"the zone-id CONNECT's lines: {[subjects(e) for e in zone]}")
    # The daemons' own line-per-event logs (stderr, what systemd's stream would get): every line
    # with the agent's words in it is one of ours, never a second line made by its line breaks.
    for name in s.logs:
        for line in s.log(name).splitlines():
            if MARK in line and not LINE.match(line):
                problems.append(f"{name}'s log has a line of the agent's making: {line[:160]!r}")
    assert not problems, "\n".join(problems)
    # What was handled really was: the vectors reached the code that logs them.
    assert entries_with(s, "runner", "pre-check says skip") and entries_with(s, "ipc", "delegated to helper")
    assert any(MARK in e["MESSAGE"] for e in s.journal.of("queue"))  # the error text is in a line's text
    with s.db() as con:
        assert [r[0] for r in con.execute('select folder from "group" order by folder')] == ["family", "main"]
