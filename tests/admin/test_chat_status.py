"""`nanoclaw chat` in a terminal (tmux) shows what the agent is doing while it works: the real agent
image and CLI against the fake API, which scripts a Bash tool call that takes a few seconds."""

from __future__ import annotations

import io
import re
import shutil
import sys
import time

import pytest
from tmux_harness import Tmux


def test_status_line_parts_seconds_and_clearing():
    """The line itself (admin/chat_status.py): each worker's part, the seconds, what a tool was
    given cleaned of escapes; a reply clears its speaker's part; a silent end clears at once."""
    from nanoclaw.admin.chat_status import StatusLine
    out = io.StringIO()
    status = StatusLine(out, enabled=True)
    now = time.time()
    status.update({"who": "Andy", "state": "tool", "tool": "Bash", "detail": "git log\x1b[2J", "since": now - 14,
                   "seq": 2})
    status.update({"who": "Andy", "state": "working", "since": now - 14, "seq": 1})  # older: dropped
    status.update({"who": "Bob", "state": "working", "since": now - 3, "seq": 3})
    assert status.line(now) == "Andy · 14 s · running Bash: git log[2J | Bob · 3 s · thinking"
    status.update({"who": "Andy", "state": "replied", "since": now - 14, "seq": 4})
    assert status.line(now).startswith("Andy · 14 s · sending the reply")
    status.say("Andy", "here")
    assert status.line(now) == "Bob · 3 s · thinking"
    status.update({"who": "Bob", "state": "silent", "seq": 5})
    assert status.line(now) == ""
    status.close()
    assert "[Andy] here\n" in out.getvalue() and out.getvalue().endswith("\r\x1b[K")
    assert "\x1b[2J" not in out.getvalue()


@pytest.mark.podman
def test_status_line_while_the_agent_runs_a_long_bash_command(make_agent_system, fake_api, tmp_path):
    if not shutil.which("tmux"):
        pytest.skip("needs tmux")
    s = make_agent_system()
    fake_api.then({"tool_use": {"name": "Bash", "input": {
        "command": "sleep 5; echo slept", "description": "a long command"}}})
    tmux = Tmux(tmp_path, s.env)
    try:
        tmux.open("chat", [sys.executable, "-m", "nanoclaw", "chat", "main"])
        tmux.wait("chat", "chatting in main")
        tmux.type("chat", "run the long thing")
        # who, for how long, what it is doing now: the command as the agent gave it, its escape cut
        try:
            screen = tmux.wait("chat", re.compile(r"Andy · \d+ s · running Bash: sleep 5; echo slept"), 120)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n" + "\n".join(f"--- {d}:\n{s.log(d)[-3000:]}"
                                                      for d in ("ipc", "queue", "channel", "runner"))) from None
        first = int(re.search(r"Andy · (\d+) s", screen).group(1))
        # the seconds go on while it runs (the command takes 5 s: two more must show)
        later = "|".join(str(n) for n in range(first + 2, first + 120))
        tmux.wait("chat", re.compile(rf"Andy · (?:{later}) s · running Bash"), 30)
        screen = tmux.wait("chat", "[Andy] tool done", 60)
        # cleared when the reply printed: the turn's last state ("replied") reached this terminal
        # before its reply, so nothing of it may follow the reply line
        assert screen.rstrip().splitlines()[-1] == "[Andy] tool done", screen
        # and nothing of it comes back later: a second turn's reply proves the first turn's
        # every line has been through the queue, the channel and this terminal
        fake_api.then({"text": "second done"})
        tmux.type("chat", "and now?")
        screen = tmux.wait("chat", "[Andy] second done", 60)
    finally:
        tmux.close()
    assert "\x1b" not in screen
    lines = screen.rstrip().splitlines()
    done = lines.index("[Andy] tool done")
    assert lines[done + 1:] == ["and now?", "[Andy] second done"], screen  # no status line came back
