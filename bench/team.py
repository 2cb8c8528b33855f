#!/usr/bin/env python3
"""Delegation latency in a team: the lead's ``delegate`` -> the member's prompt at its model.

    python3 bench/team.py [--runs 20]

The real agent image runs the lead and a member ("researcher"), each in its own
container, against the fake Messages API. The clock starts when the fake API
hands the lead its ``delegate`` tool call and stops when the member's request
(its prompt, built by the queue and read by the member's own CLI) reaches the
fake API: the tool call in the lead's CLI, the ipc daemon, the queue, the
runner, the member's container, the proxy.

Cold: the member's container has exited between runs (idle timeout 0.2 s), so
each delegation starts one. Warm: the member's container is still up and gets
the task as a follow-up. Beside them, for scale: a plain chat message to the
lead (cold and warm), measured the same way (message stored -> its request at
the model).
"""

from __future__ import annotations

import argparse
import re
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench"), str(ROOT / "tests")]

from agent_latency import make, real_agent, summary  # noqa: E402
from podman_harness import _podman  # noqa: E402
from system_harness import System  # noqa: E402
from fake_anthropic import FakeAnthropic, content_text, last_user_content, tool_results  # noqa: E402



class Clock:
    """The fake API's view: when each delegation left, when each member prompt arrived."""

    def __init__(self) -> None:
        self.handed: dict[str, float] = {}
        self.arrived: dict[str, float] = {}
        self.lead_asked: dict[str, float] = {}
        self.cond = threading.Condition()

    def responder(self, body: dict) -> dict:
        # The newest prompt: the CLI can put a resumed turn's tool result and a new prompt in one message.
        text = content_text(last_user_content(body)).rpartition("<messages>")[2]
        now = time.time()
        member = "(researcher), a member of the team" in str(body.get("system"))
        if member and not tool_results(last_user_content(body)):
            n = re.findall(r"task (\d+)", text)[-1]
            with self.cond:
                self.arrived.setdefault(n, now)
                self.cond.notify_all()
            return {"text": f"done {n}"}
        if 'from="agent:researcher"' in text:
            return {"text": "summed " + re.findall(r"done (\d+)", text)[-1]}
        found = re.findall(r"(bench|plain) (\d+)", text)
        # The delegate tool's result comes back with no new prompt, or (resumed sessions) beside
        # the prompt already answered: each bench message is delegated once.
        if not found or (found[-1][0] == "bench" and found[-1][1] in self.handed):
            return {"text": "ok"}
        kind, n = found[-1]
        if kind == "plain":
            with self.cond:
                self.lead_asked.setdefault(n, now)
                self.cond.notify_all()
            return {"text": f"plain {n}"}
        self.handed[n] = time.time()
        return {"tool_use": {"name": "mcp__nanoclaw__delegate", "input": {"agent": "researcher", "task": f"task {n}"}}}

    def wait(self, table: dict, key: str, timeout: float = 120) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: key in table, timeout):
                raise TimeoutError(f"no request for {key}")
            return table[key]


def idle(s: System) -> None:
    s.wait_for(lambda: s.db().execute("select count(*) from job where status in ('queued','running')")
               .fetchone()[0] == 0, 120)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    args = ap.parse_args()
    tag, opts, work, service = real_agent("nc-bench-team-")
    sock = work / "podman.sock"
    results: dict[str, list[float]] = {}
    try:
        for mode, idle_timeout in (("cold", 0.2), ("warm", 600.0)):
            clock = Clock()
            api = FakeAnthropic()
            api.responder = clock.responder
            api.start()
            s = make(work / mode, api, tag, opts, f"unix://{sock}", idle=idle_timeout,
                     members=(("researcher", "finds things", "Find."),))
            w = s.watch("main")
            delegated, plain = [], []
            for i in range(args.runs + (1 if mode == "warm" else 0)):  # warm: a first round starts them
                s.send("main", f"bench {i}")
                t1 = clock.wait(clock.arrived, str(i))
                while True:
                    if w.said(120)[1] == f"summed {i}":
                        break
                if mode == "cold":
                    idle(s)
                t0 = time.time()
                s.send("main", f"plain {i}")
                asked = clock.wait(clock.lead_asked, str(i))
                while w.said(120)[1] != f"plain {i}":
                    pass
                if mode == "cold":
                    idle(s)
                if mode == "warm" and i == 0:
                    continue
                delegated.append(t1 - clock.handed[str(i)])
                plain.append(asked - t0)
            s.close()
            api.stop()
            results[f"{mode}: delegate -> member"] = delegated
            results[f"{mode}: chat msg -> lead"] = plain
    finally:
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
        service.terminate()
    print(f"\nteam latency, to the agent's request at the (fake) model ({args.runs} runs each)")
    for name, values in results.items():
        if values:
            print(summary(name, values))
    return 0


if __name__ == "__main__":
    sys.exit(main())
