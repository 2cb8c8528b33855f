"""``nanoclaw chat``'s live status line: who is working, for how long, on what.

SYNOPSIS
    status = StatusLine(sys.stdout)
    status.update(event)        a ``progress`` line from the channel
    status.say(who, text)       print a message; the speaker's status is cleared
    status.close()

DESCRIPTION
    While an agent works the line under the conversation reads
    ``Andy · 14 s · running Bash: git log`` (a team member working at the same time
    gets its own part, ``| Bob · 3 s · thinking``), redrawn every second in place and
    cleared when the reply prints, or at once when the turn ends without one. Only on a
    terminal: piped output gets the messages alone.

HOSTILE INPUT
    The tool and what it was given come from an agent's container: cleaned (no control
    characters, so no escape sequences reach the terminal) and cut short, by ipc and
    again here.
"""

from __future__ import annotations

import shutil
import threading
import time
from typing import TextIO

from nanoclaw.core import progress as progress_mod

ENDED = ("silent", "waiting", "failed")
TICK = 1.0
REPLY_WAIT = 30.0  # a reply announced but never printed here stops showing after this


class StatusLine:
    def __init__(self, out: TextIO, enabled: bool | None = None) -> None:
        self.out = out
        self.enabled = out.isatty() if enabled is None else enabled
        self.lock = threading.Lock()
        self.working: dict[str, dict] = {}  # who -> the newest progress line about them
        self.drawn = False
        self._stop = threading.Event()
        if self.enabled:
            threading.Thread(target=self._tick, daemon=True).start()

    def update(self, event: dict) -> None:
        who = progress_mod.clean(event.get("who"), progress_mod.TOOL_MAX) or "agent"
        seq = event.get("seq") if isinstance(event.get("seq"), int) else 0
        with self.lock:
            known = self.working.get(who)
            if known is not None and known["seq"] > seq:
                return  # overtaken by a newer line
            if event.get("state") in ENDED:
                self.working.pop(who, None)
            elif event.get("state") in progress_mod.STATES:  # "replied": shown until it prints
                self.working[who] = {**event, "seq": seq, "seen": time.time()}
            self._draw()

    def say(self, who: str, text: str) -> None:
        with self.lock:
            self.working.pop(who, None)  # the reply prints: its status goes
            self._clear()
            self.out.write(f"[{who}] {text}\n")
            self._draw()
            self.out.flush()

    def line(self, now: float | None = None) -> str:
        now = time.time() if now is None else now
        parts = []
        for who, e in list(self.working.items()):
            if e.get("state") == "replied" and now - e["seen"] > REPLY_WAIT:
                del self.working[who]
                continue
            since = e.get("since") if isinstance(e.get("since"), (int, float)) else 0
            doing = progress_mod.describe(str(e.get("state")), progress_mod.clean(e.get("tool"), progress_mod.TOOL_MAX),
                                          progress_mod.clean(e.get("detail"), progress_mod.DETAIL_MAX))
            parts.append(f"{who} · {max(0, int(now - since))} s · {doing}" if since else f"{who} · {doing}")
        return " | ".join(parts)

    def close(self) -> None:
        self._stop.set()
        with self.lock:
            self._clear()
            self.out.flush()

    def _draw(self) -> None:
        if not self.enabled:
            return
        text = self.line()
        width = max(10, shutil.get_terminal_size().columns - 1)
        if text:
            self.out.write("\r\x1b[K" + (text if len(text) <= width else text[: width - 1] + "…"))
            self.drawn = True
        else:
            self._clear()
        self.out.flush()

    def _clear(self) -> None:
        if self.enabled and self.drawn:
            self.out.write("\r\x1b[K")
            self.drawn = False

    def _tick(self) -> None:
        while not self._stop.wait(TICK):
            with self.lock:
                if self.working:
                    self._draw()
