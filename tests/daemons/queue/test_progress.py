"""The queue's word on what each turn is doing (queue/progress.py), as the channel's socket hears
it: a real queue daemon on a real database, the channel's socket a listening stand-in."""

from __future__ import annotations

import json
import socket
import threading
import time

import pytest

from nanoclaw.core import groups as groups_mod
from nanoclaw.core.models import Job, Message, Turn
from nanoclaw.core.protocol import Envelope, tell
from nanoclaw.daemons.queue import QueueDaemon


class Listener:
    """The channel's socket: every line the queue tells it."""

    def __init__(self, path) -> None:
        self.lines: list[dict] = []
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(str(path))
        self.server.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(65536):
                    data += chunk
            self.lines += [json.loads(line) for line in data.splitlines() if line.strip()]

    def progress(self, n: int, timeout: float = 3.0) -> list[dict]:
        end = time.time() + timeout
        while len(got := [line for line in self.lines if line["op"] == "progress"]) < n and time.time() < end:
            time.sleep(0.01)
        return got


@pytest.fixture
def cfg(cfg):
    cfg.runtime_dir.mkdir(parents=True, exist_ok=True)
    groups_mod.add_group(cfg, "main", is_main=True)
    groups_mod.add_group(cfg, "other")
    return cfg


def say(chat: str, text: str) -> Message:
    return Message.create(chat=chat, sender="owner@term", text=text, timestamp=time.time(),
                          channel_id=f"id-{time.time_ns()}")


def test_accepted_on_the_newest_message_then_the_agents_word_then_silent(cfg):
    channel = Listener(cfg.socket("channel"))
    q = QueueDaemon(cfg)
    q.setup()
    say("lisbon@g.us", "@Andy anyone?")  # a chat no group is registered for: never a turn
    say("main@term", "first")
    newest = say("main@term", "and second")  # one burst, one turn
    q.work()
    [accepted] = channel.progress(1)
    job = Job.get()
    assert (accepted["chat"], accepted["state"], accepted["message"], accepted["who"], accepted["since"]) == \
        ("main@term", "accepted", newest.id, "Andy", 0.0)

    hostile = {"group": "main", "agent": "", "job": job.id, "turn": 0, "state": "tool",
               "tool": "Bash\x1b]0;pwned\x07", "detail": "git log\r\nrm -rf /\x1b[2J" + "x" * 200}
    assert q.progress.on_agent(hostile)["ok"]
    # another group's job, a turn that is not there, a state a container may not say: refused
    assert not q.progress.on_agent({**hostile, "group": "other"})["ok"]
    assert not q.progress.on_agent({**hostile, "turn": 7})["ok"]
    assert not q.progress.on_agent({**hostile, "state": "replied"})["ok"]
    tool = channel.progress(2)[1]
    # not "Bash" any more: no shell mark for a name that only starts like one
    assert (tool["state"], tool["kind"], tool["tool"], tool["message"]) == ("tool", "tool", "Bash]0;pwned", newest.id)
    assert tool["detail"].startswith("git log rm -rf /[2J") and len(tool["detail"]) <= 60
    assert 0 < tool["since"] <= time.time()

    q.turns.on_result(Envelope("turn_result", {"group": "main", "agent": "", "job": job.id, "turn": 0,
                                               "text": "<internal>nothing to say</internal>", "session_id": None,
                                               "error": None}))
    lines = channel.progress(3)
    assert [line["state"] for line in lines] == ["accepted", "tool", "silent"]
    assert Turn.get().status == "done"
    assert all(line["chat"] == "main@term" for line in lines)  # nothing for the chat never answered


def test_ipc_cleans_a_containers_report_and_refuses_one_it_may_not_make(cfg):
    """A container's ``progress`` file, read by the real ipc daemon: what reaches the queue's socket
    is cleaned and bounded; a state only the queue may say, or a job of another group, is refused."""
    from nanoclaw.core.models import Group
    from nanoclaw.core.protocol import Spool
    from nanoclaw.daemons.ipc import IpcDaemon
    queue = Listener(cfg.socket("queue"))
    ipc = IpcDaemon(cfg)
    ipc.setup()
    job = Job.create(group=Group.get(Group.folder == "main"), agent="")
    other = Job.create(group=Group.get(Group.folder == "other"), agent="")
    out = Spool(cfg.agent_ipc("main") / "out").ensure()
    out.put("progress", {"job": job.id, "turn": 0, "state": "tool", "tool": "WebFetch\n\x1b[1m",
                         "detail": "https://example.org/\u202e" + "a" * 500})
    out.put("progress", {"job": job.id, "turn": 0, "state": "replied"})  # the queue's word, not the agent's
    out.put("progress", {"job": other.id, "turn": 0, "state": "working"})  # another group's job
    ipc.work()
    # a barrier: the listener reads connections in the order they came, so once this line is
    # in, everything ipc told before it is too
    tell(cfg.socket("queue"), "barrier")
    end = time.time() + 3
    while not any(x["op"] == "barrier" for x in queue.lines) and time.time() < end:
        time.sleep(0.01)
    [line, barrier] = queue.lines
    assert barrier["op"] == "barrier"
    assert (line["op"], line["group"], line["job"], line["state"], line["tool"]) == \
        ("progress", "main", job.id, "tool", "WebFetch [1m")
    assert line["detail"].startswith("https://example.org/a") and len(line["detail"]) <= 60
    assert "\u202e" not in line["detail"]
    bad = sorted(p.name for p in (cfg.spool_dir / "ipc" / "main" / "bad").iterdir() if not p.name.endswith(".reason"))
    assert len(bad) == 2
