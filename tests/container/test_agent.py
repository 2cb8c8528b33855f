"""The real agent: claude-agent-sdk and its CLI in the real image, against a fake Messages API.

Each test sends chat messages through the whole pipeline; the container's CLI
reaches the fake API only through the host's credential proxy.
"""

from __future__ import annotations

import base64
import json
import re
import subprocess

import pytest
from fake_anthropic import all_text, content_text, last_user_content, tool_results
from system_harness import SECRET

pytestmark = pytest.mark.podman


def jobs(system) -> int:
    with system.db() as con:
        return con.execute("select count(*) from job").fetchone()[0]


def test_plain_answer_reaches_the_chat(make_agent_system, fake_api):
    s = make_agent_system()
    w = s.watch("main")
    s.send("main", "hello agent")
    assert w.reply(120) == "echo: hello agent"
    [req] = fake_api.message_requests()
    assert req["body"]["stream"] is True
    # the group's CLAUDE.md reached the model as context
    assert "main channel" in json.dumps(req["body"]["system"]) + json.dumps(req["body"]["messages"])
    s.wait_idle()
    with s.db() as con:
        session = con.execute("select session_id from session").fetchone()[0]
    assert session and len(session) >= 32


def test_send_message_tool_reaches_the_chat_through_ipc_and_router(make_agent_system, fake_api):
    s = make_agent_system()
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__send_message", "input": {"text": "progress note"}}})
    w = s.watch("main")
    s.send("main", "work on it")
    assert {w.reply(120), w.reply(60)} == {"progress note", "tool done"}
    assert [e["MESSAGE"] for e in s.journal.of("ipc", GROUP="main", CHAT="main@term")
            if "send_message" in e["MESSAGE"]], s.log("ipc")
    tools = [t["name"] for t in fake_api.message_requests()[0]["body"]["tools"]]
    assert "mcp__nanoclaw__send_message" in tools and "mcp__nanoclaw__register_group" in tools
    assert "CronCreate" not in tools  # our scheduler, not the CLI's ephemeral one


def test_bash_writes_into_the_group_folder_and_nowhere_else(make_agent_system, fake_api):
    s = make_agent_system(settings={"timezone": "Pacific/Auckland"})
    s.cli("groups", "add", "other")
    fake_api.then({"tool_use": {"name": "Bash", "input": {
        "command": "echo written-by-agent > out.txt && echo TZ=$TZ && pwd && id -u",
        "description": "write a file"}}})
    w = s.watch("main")
    s.send("main", "write a file")
    assert w.reply(120) == "tool done"
    result = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[0]["content"])
    assert "/workspace/group" in result
    assert "TZ=Pacific/Auckland" in result  # the owner's clock, not the container's UTC
    assert result.strip().splitlines()[-1] != "0"  # not root inside
    found = [p for p in s.base.rglob("out.txt")]
    assert found == [s.state / "groups" / "main" / "out.txt"]
    assert found[0].read_text() == "written-by-agent\n"


def test_second_message_resumes_the_session(make_agent_system, fake_api):
    s = make_agent_system()
    w = s.watch("main")
    s.send("main", "remember the word pelican")
    assert w.reply(120) == "echo: remember the word pelican"
    s.wait_idle()  # the first container is gone
    s.send("main", "what was the word?")
    assert w.reply(120) == "echo: what was the word?"
    first, second = fake_api.message_requests()
    assert "pelican" in all_text(second["body"])  # the earlier turn was replayed
    assert first["headers"]["x-claude-code-session-id"] == second["headers"]["x-claude-code-session-id"]
    assert jobs(s) == 2


def test_follow_up_is_answered_by_the_same_warm_container(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=60.0)
    w = s.watch("main")
    s.send("main", "first")
    assert w.reply(120) == "echo: first"
    s.send("main", "second")
    assert w.reply(60) == "echo: second"
    assert jobs(s) == 1
    names = subprocess.run(["podman", "ps", "--filter", "label=nanoclaw.job", "--format", "{{.Names}}"],
                           capture_output=True, text=True).stdout.split()
    assert names == ["nanoclaw-main-1"]


def test_follow_up_mid_turn_waits_for_the_turn_boundary(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=60.0)
    fake_api.delay = 2.0  # hold each turn open
    w = s.watch("main")
    s.send("main", "slow one")
    # the turn is open once the API has the first request (the fake holds its answer 2 s)
    s.wait_for(lambda: fake_api.message_requests(), 60, what="the first turn reaching the API")
    s.send("main", "quick follow-up")
    assert w.reply(120) == "echo: slow one"  # complete, not cut short
    assert w.reply(60) == "echo: quick follow-up"
    assert jobs(s) == 1


def test_credential_stays_on_the_host(make_agent_system, fake_api):
    s = make_agent_system(idle_timeout=60.0)
    w = s.watch("main")
    s.send("main", "hi")
    assert w.reply(120) == "echo: hi"
    # the API got the real key, from the proxy
    assert {r["headers"].get("x-api-key") for r in fake_api.message_requests()} == {SECRET}
    inspect = subprocess.run(["podman", "inspect", "nanoclaw-main-1"], capture_output=True, text=True)
    assert inspect.returncode == 0 and SECRET not in inspect.stdout
    env = subprocess.run(["podman", "exec", "nanoclaw-main-1", "sh", "-c", "cat /proc/1/environ; env"],
                         capture_output=True, text=True)
    assert env.returncode == 0 and "ANTHROPIC_BASE_URL" not in env.stdout or SECRET not in env.stdout
    assert SECRET not in env.stdout
    grep = subprocess.run(["podman", "exec", "nanoclaw-main-1", "grep", "-rl", "TESTSECRET", "/workspace",
                           "/opt", "/tmp", "/etc", "/home", "/run"], capture_output=True, text=True)
    assert grep.stdout == ""
    assert SECRET not in "".join(s.log(n) for n in s.logs)


def test_oauth_token_is_sent_as_bearer(make_agent_system, fake_api):
    token = "sk-ant-oat01-TESTOAUTH-" + "x" * 20
    s = make_agent_system(credential=token)
    w = s.watch("main")
    s.send("main", "hi")
    assert w.reply(120) == "echo: hi"
    [req] = fake_api.message_requests()
    assert req["headers"]["authorization"] == f"Bearer {token}"
    assert "oauth-2025-04-20" in req["headers"]["anthropic-beta"]
    assert req["headers"].get("x-api-key") is None


def test_a_group_cannot_see_other_groups_or_the_host(make_agent_system, fake_api):
    s = make_agent_system()
    s.cli("groups", "add", "other")
    marker = "OTHER-GROUP-PRIVATE-" + SECRET[-8:]
    (s.state / "groups" / "other" / "CLAUDE.md").write_text(marker)
    probes = [
        f"cat {s.state}/groups/other/CLAUDE.md",
        "cat /workspace/group/../other/CLAUDE.md",
        "ls /workspace",
        f"ls {s.state}",
        f"cat {s.state}/nanoclaw.db | head -c 100",
        f"cat {s.confdir}/credentials/anthropic-credential",
        "ls /root /etc/nanoclaw",
        f"ls {s.run}",
        "touch /opt/nanoclaw/x /usr/x /etc/x /workspace/global/x",
        # the host's daemon sockets are not reachable (only this group's API socket is mounted)
        f"python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('{s.run}/queue.sock')\"",
        "python3 -c \"import socket; socket.socket(socket.AF_UNIX).connect('/run/podman/podman.sock')\"",
        # its own processes only; no network
        "echo procs=$(ls /proc | grep -c '^[0-9]')",
        "python3 -c \"import socket; print('interfaces', [n for _, n in socket.if_nameindex()])\"",
    ]
    fake_api.then({"tool_use": {"name": "Bash", "input": {
        "command": " ; ".join(f"{p} 2>&1" for p in probes), "description": "probe"}}})
    w = s.watch("main")
    s.send("main", "look around")
    assert w.reply(120) == "tool done"
    out = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[0]["content"])
    print(out)
    assert marker not in out and SECRET not in out and "SQLite" not in out
    assert out.count("No such file or directory") >= 6
    assert out.count("Read-only file system") == 3  # /opt, /usr, /etc; main may write /workspace/global
    assert "other" not in out.split()  # /workspace lists only this group's mounts
    assert out.count("FileNotFoundError") == 2  # neither host socket exists in here
    assert int(re.search(r"procs=(\d+)", out).group(1)) < 15  # a private pid namespace
    assert "interfaces ['lo']" in out  # no network device but loopback


def test_main_agent_registers_a_group_and_others_cannot(make_agent_system, fake_api):
    from nanoclaw.core.protocol import Spool
    s = make_agent_system()
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__register_group", "input": {
        "jid": "family@term", "name": "Family", "folder": "family", "trigger": "@Andy"}}})
    w = s.watch("main")
    s.send("main", "please add the family group")
    assert w.reply(120) == "tool done"
    s.wait_for(lambda: "family" in s.cli("groups", "list").stdout, 20, what="family registered")
    assert (s.state / "groups" / "family" / "CLAUDE.md").exists()
    # a non-main group is not offered the tool, and a forged request file is refused
    wf = s.watch("family")
    fake_api.then({"tool_use": {"name": "Bash", "input": {"command": "touch /workspace/global/x",
                                                          "description": "write global"}}})
    s.send("family", "@Andy try global")
    assert wf.reply(120) == "tool done"
    req = fake_api.message_requests()[-1]
    assert "Read-only file system" in content_text(tool_results(last_user_content(req["body"]))[0]["content"])
    assert "mcp__nanoclaw__register_group" not in [t["name"] for t in req["body"]["tools"]]
    assert "mcp__nanoclaw__list_available_groups" not in [t["name"] for t in req["body"]["tools"]]
    with s.db() as con:
        family_job = con.execute("select j.id from job j join 'group' g on g.id = j.group_id "
                                 "where g.folder='family'").fetchone()[0]
    out = Spool(s.state / "ipc" / "family" / "out")
    out.put("register_group", {"job": family_job, "jid": "evil@term", "name": "Evil", "folder": "evil",
                               "trigger": ""})
    bad = s.state / "spool" / "ipc" / "family" / "bad"
    s.wait_for(lambda: list(bad.glob("*.reason")), 20, what="forged request refused")
    assert "only the main group may register groups" in next(bad.glob("*.reason")).read_text()
    assert "evil" not in s.cli("groups", "list").stdout


def test_agent_schedules_a_task_with_its_tool(make_agent_system, fake_api):
    s = make_agent_system()
    s.cli("groups", "add", "family")
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__schedule_task", "input": {
        "prompt": "send the morning summary", "schedule_type": "cron", "schedule_value": "0 9 * * *"}}})
    w = s.watch("main")
    s.send("main", "every morning at 9 send me a summary")
    got = {w.reply(120), w.reply(60)}
    assert "tool done" in got
    confirmation = next(t for t in got if t != "tool done")
    assert confirmation.startswith("Scheduled: task 1 for main: cron 0 9 * * * (at 09:00 every day UTC)")
    assert "send the morning summary" in s.cli("tasks", "list").stdout
    # a bad schedule is refused and the chat is told why
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__schedule_task", "input": {
        "prompt": "x", "schedule_type": "cron", "schedule_value": "every day"}}})
    s.send("main", "schedule something odd")
    got = {w.reply(120), w.reply(60)}
    assert any(t.startswith("Task request refused: a cron expression has 5 fields") for t in got)
    # a non-main group may not schedule for another group
    wf = s.watch("family")
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__schedule_task", "input": {
        "prompt": "x", "schedule_type": "interval", "schedule_value": "1h", "target_group": "main"}}})
    s.send("family", "@Andy schedule for main")
    got = {wf.reply(120), wf.reply(60)}
    assert any("may only schedule tasks for itself" in t for t in got)
    assert s.cli("tasks", "list").stdout.count("\n") == 1


def test_a_session_that_cannot_be_resumed_is_replaced_not_fatal(make_agent_system, fake_api):
    """A stored session id the CLI does not know (its files lost, another agent's id) must not
    fail the group for good: the agent starts a new session and answers."""
    s = make_agent_system()
    with s.db() as con:
        con.execute("insert into session (group_id, session_id, updated_at) values "
                    "((select id from \"group\" where folder = 'main'), 'session-that-is-gone', 0)")
        con.commit()
    w = s.watch("main")
    s.send("main", "are you there?")
    assert w.reply(120) == "echo: are you there?"
    with s.db() as con:
        stored = con.execute("select session_id from session").fetchall()
    assert len(stored) == 1 and stored[0][0] != "session-that-is-gone"
    assert jobs(s) == 1  # answered on the first attempt, no retry needed


def _png() -> bytes:
    """A real 2x2 PNG (red), made here rather than shipped as a binary."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xffffffff)
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * 2 for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def test_a_photo_sent_to_the_chat_reaches_the_model_as_an_image(make_agent_system, fake_api, tmp_path):
    """The prompt names the file in the inbox; the agent's Read tool turns it into an image block."""
    photo = tmp_path / "garden.png"
    photo.write_bytes(_png())

    def read_the_attachment(body: dict) -> dict:
        text = content_text(last_user_content(body))
        path = re.search(r'<attachment kind="image" file="([^"]+)" type="image/png"', text).group(1)
        return {"tool_use": {"name": "Read", "input": {"file_path": path}}}
    fake_api.then(read_the_attachment)
    s = make_agent_system()
    w = s.watch("main")
    s.cli("send", "main", "--file", str(photo), "what", "is", "this?")
    assert w.reply(120) == "tool done"
    first, second = fake_api.message_requests()[:2]
    assert "what is this?" in content_text(last_user_content(first["body"]))
    [result] = tool_results(last_user_content(second["body"]))
    images = [b for b in result["content"] if isinstance(b, dict) and b.get("type") == "image"]
    assert images and images[0]["source"]["media_type"] == "image/png"
    assert base64.b64decode(images[0]["source"]["data"]).startswith(b"\x89PNG")
    inbox = list((s.state / "groups" / "main" / "inbox").iterdir())
    assert len(inbox) == 1 and inbox[0].read_bytes() == photo.read_bytes()


def test_the_agent_changes_a_task_and_the_main_agent_lists_the_chats(make_agent_system, fake_api):
    s = make_agent_system()
    s.cli("groups", "add", "family", "--name", "Family")
    s.cli("tasks", "add", "main", "--cron", "0 9 * * *", "--tz", "UTC", "morning", "summary")
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__update_task", "input": {
        "task_id": 1, "prompt": "evening summary", "schedule_type": "cron", "schedule_value": "0 18 * * *"}}})
    w = s.watch("main")
    s.send("main", "move my summary to the evening")
    got = {w.reply(120), w.reply(60)}
    assert "tool done" in got
    assert any(t.startswith("Updated: task 1 for main: cron 0 18 * * * (at 18:00 every day UTC)") for t in got), got
    listing = s.cli("tasks", "list").stdout
    assert "0 18 * * *" in listing and "evening summary" in listing
    # an impossible change is refused and nothing changes
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__update_task", "input": {
        "task_id": 1, "schedule_type": "cron", "schedule_value": "0 0 31 2 *"}}})
    s.send("main", "every 31st of February then")
    got = {w.reply(120), w.reply(60)}
    assert any("Task request refused: cron '0 0 31 2 *' never fires" in t for t in got), got
    assert "0 18 * * *" in s.cli("tasks", "list").stdout
    # main's agent lists the chats it could register
    fake_api.then({"tool_use": {"name": "mcp__nanoclaw__list_available_groups", "input": {}}})
    s.send("main", "which chats can you see?")
    assert w.reply(120) == "tool done"
    # a warm session keeps the turn's earlier tool results in the same user message: the last one is ours
    result = content_text(tool_results(last_user_content(fake_api.message_requests()[-1]["body"]))[-1]["content"])
    chats = json.loads(result)
    assert {"jid": "family@term", "name": "Family", "registered_as": "family"} in chats
    tools = [t["name"] for t in fake_api.message_requests()[-1]["body"]["tools"]]
    assert "mcp__nanoclaw__update_task" in tools and "mcp__nanoclaw__list_available_groups" in tools


def test_a_silent_answer_sends_nothing(make_agent_system, fake_api):
    """The model answers only with an internal note: the turn is done and nothing is sent."""
    s = make_agent_system()
    fake_api.then({"text": "<internal>Nothing new since this morning; no need to say so.</internal>"})
    w = s.watch("main")
    s.send("main", "anything new?")
    s.wait_for(lambda: "silent: nothing sent" in s.log("queue"), 120, what="the silent turn")
    s.send("main", "and now?")
    assert w.reply(120) == "echo: and now?"  # the first thing the chat hears
    assert s.replies("main@term") == ["echo: and now?"]
    with s.db() as con:
        assert [r[0] for r in con.execute("select text from outbox")] == ["echo: and now?"]
    assert "anything new?" in all_text(fake_api.message_requests()[0]["body"])


def test_a_precheck_runs_in_the_agent_image_and_feeds_the_agent(make_agent_system, fake_api):
    s = make_agent_system()
    w = s.watch("main")
    s.cli("tasks", "add", "main", "--every", "1h", "--isolated", "--if", "test -e mail.txt && cat mail.txt",
          "check", "mail")
    s.cli("tasks", "run-now", "1")
    s.wait_for(lambda: "skipped" in s.cli("tasks", "log", "1").stdout, 120, what="the skipped run")
    assert "exited with code 1" in s.cli("tasks", "log", "1").stdout
    assert fake_api.message_requests() == []  # no agent: not one call to the API
    (s.state / "groups" / "main" / "mail.txt").write_text("2 new mails: <from the bank>\n")
    s.cli("tasks", "run-now", "1")
    assert w.reply(120) == "echo: check mail"
    [req] = fake_api.message_requests()
    prompt = content_text(last_user_content(req["body"]))
    assert "<precheck_output>2 new mails: &lt;from the bank&gt;\n</precheck_output>" in prompt
