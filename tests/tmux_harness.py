"""A terminal program driven as a person would: tmux windows, keys sent with send-keys, the
screen read with capture-pane (nanoclaw run-all and nanoclaw chat)."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import time
from pathlib import Path


class Tmux:
    """A tmux server of the test's own; each window one command, kept on screen after it exits."""

    def __init__(self, base: Path, env: dict[str, str]) -> None:
        conf = base / "tmux.conf"
        conf.write_text("set -g remain-on-exit on\nset -g history-limit 100000\n")
        self.cmd = [shutil.which("tmux"), "-S", str(base / "tmux.sock"), "-f", str(conf)]
        self.env = env
        self.started = False

    def tmux(self, *args: str) -> str:
        return subprocess.run([*self.cmd, *args], env=self.env, capture_output=True, text=True,
                              check=True).stdout

    def open(self, name: str, command: list[str]) -> None:
        line = shlex.join(command)
        if not self.started:
            self.tmux("new-session", "-d", "-s", "t", "-n", name, "-x", "250", "-y", "50", line)
            self.started = True
        else:
            self.tmux("new-window", "-d", "-t", "t", "-n", name, line)

    def text(self, name: str) -> str:
        return self.tmux("capture-pane", "-p", "-J", "-S", "-", "-t", f"t:{name}")

    def type(self, name: str, text: str) -> None:
        self.tmux("send-keys", "-t", f"t:{name}", "-l", text)
        self.tmux("send-keys", "-t", f"t:{name}", "Enter")

    def keys(self, name: str, *keys: str) -> None:
        self.tmux("send-keys", "-t", f"t:{name}", *keys)

    def pid(self, name: str) -> int:
        return int(self.tmux("display", "-p", "-t", f"t:{name}", "#{pane_pid}"))

    def dead(self, name: str) -> bool:
        return self.tmux("display", "-p", "-t", f"t:{name}", "#{pane_dead}").strip() == "1"

    def wait(self, name: str, what: str | re.Pattern, timeout: float = 60) -> str:
        """The window's text once it shows ``what``."""
        deadline = time.time() + timeout
        while True:
            text = self.text(name)
            if (what.search(text) if isinstance(what, re.Pattern) else what in text):
                return text
            if time.time() > deadline:
                raise AssertionError(f"window {name} never showed {what!r}:\n{text[-4000:]}")
            time.sleep(0.2)

    def wait_dead(self, name: str, timeout: float) -> str:
        deadline = time.time() + timeout
        while not self.dead(name):
            assert time.time() < deadline, f"{name} still running:\n{self.text(name)[-4000:]}"
            time.sleep(0.2)
        return self.text(name)

    def close(self) -> None:
        if self.started:
            subprocess.run([*self.cmd, "kill-server"], env=self.env, capture_output=True)
