"""A scripted agent for tests: same in/out spool protocol as the real one.

It answers the last message of each prompt by a command word (after an
optional @trigger):
  fail         exit 3 without answering        failonce  fail the first time only
  error [TEXT] answer with an error result (TEXT, or "scripted error")
  die TEXT     print TEXT on stderr, exit 3    sleep N   wait N seconds, then echo
  send TEXT    send_message(TEXT), then reply  sendto CHAT TEXT  send_message to CHAT
  internal     reply with an <internal> note   exit      reply, then exit
  silent       reply with only an <internal> note (a silent turn: nothing is sent)
  chaos ID     (every message) reply "ack ID1 ID2 ..." naming each message the prompt carried
  sh CMD       run CMD with /bin/sh in the container, reply "sh: <exit code>: <output>" (hostile tests)
  task T|V|P[|C]  ask for a scheduled task (schedule_task's request: type T, value V, prompt P,
               pre-check C), reply "asked"
  delegate A TASK  hand TASK to team member A, reply "delegated"
  anything else: "echo: TEXT"
In a team (the chaos test's): the lead of a group with a member "helper"
also delegates "team t<ID> ..." naming each chaos message; a member answers
"ack m<ID>... done t<ID>..." for what it was given; a prompt of team answers
only is answered "got t<ID>...".
Every prompt is also written to /workspace/group/prompts/<job>-<turn>.txt so
tests can check what the agent was told.
"""

import html
import os
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, "/opt/agent")
from inotify_simple import INotify, flags  # noqa: E402
from protocol import BadMessage, Spool  # noqa: E402

IPC = Path("/workspace/ipc")
GROUP = Path("/workspace/group")
inbox = Spool(IPC / "in")  # read-only here
outbox = Spool(IPC / "out")
idle = float(os.environ.get("NANOCLAW_IDLE_TIMEOUT", "600"))
job_env = int(os.environ.get("NANOCLAW_JOB", "0"))
AGENT = os.environ.get("NANOCLAW_AGENT", "")


def last_text(prompt):
    found = re.findall(r"<message [^>]*>(.*?)</message>", prompt, re.S)
    if not found:  # a scheduled task's prompt
        found = re.findall(r"<scheduled_task [^>]*>(.*?)</scheduled_task>", prompt, re.S)
    return html.unescape(found[-1]) if found else ""


def answer(body):
    prompt = body["prompt"]
    (GROUP / "prompts").mkdir(exist_ok=True)
    (GROUP / "prompts" / f"{body['job']}-{body['turn']}.txt").write_text(prompt)
    every = [re.sub(r"^@\w+\s+", "", html.unescape(t))
             for t in re.findall(r"<message [^>]*>(.*?)</message>", prompt, re.S)]
    if every and all(t.startswith(("chaos ", "team ", "done ", "ack ")) for t in every):
        # the chaos test: acknowledge every message this prompt carried, by id
        chaos = [t.split()[1] for t in every if t.startswith("chaos ")]
        team = [i for t in every if t.startswith("team ") for i in re.findall(r"\bt\d+", t)]
        answers = [i for t in every if t.startswith(("done ", "ack ")) for i in re.findall(r"\bt\d+", t)]
        if AGENT:
            text = " ".join(filter(None, ["ack " + " ".join(chaos) if chaos else "",
                                          "done " + " ".join(team) if team else ""]))
        else:
            text = " ".join(filter(None, ["ack " + " ".join(chaos) if chaos else "",
                                          "got " + " ".join(answers) if answers else ""]))
            if chaos and (GROUP / "agents" / "helper.md").exists():  # one delegation per turn
                outbox.put("delegate", {"job": body["job"], "agent": "helper",
                                        "task": "team " + " ".join(f"t{m[1:]}" for m in chaos)})
        outbox.put("result", {"job": body["job"], "turn": body["turn"],
                              "session_id": body.get("session_id") or f"session-{body['job']}",
                              "text": text or "nothing"})
        return True
    text = re.sub(r"^\s*@\w+\s*", "", last_text(prompt))
    word, _, rest = text.partition(" ")
    word = word.lower()
    session = body.get("session_id") or f"session-{body['job']}"
    out = {"job": body["job"], "turn": body["turn"], "session_id": session}
    if word == "fail":
        sys.exit(3)
    if word == "failonce":
        marker = GROUP / ".failed-once"
        if not marker.exists():
            marker.write_text("x")
            sys.exit(3)
        reply = "recovered"
    elif word == "error":
        outbox.put("result", {**out, "text": "", "error": rest or "scripted error"})
        return True
    elif word == "die":
        print(rest, file=sys.stderr, flush=True)
        sys.exit(3)
    elif word == "sleep":
        time.sleep(float(rest or 1))
        reply = f"slept {rest}"
    elif word == "send":
        outbox.put("send_message", {"job": body["job"], "text": rest})
        reply = "sent"
    elif word == "sendto":
        chat, _, msg = rest.partition(" ")
        outbox.put("send_message", {"job": body["job"], "text": msg, "chat": chat})
        reply = "sent to " + chat
    elif word == "task":
        kind, value, task_prompt, check = (rest.split("|", 3) + ["", "", ""])[:4]
        spec = {"prompt": task_prompt, "schedule_type": kind, "schedule_value": value}
        if check:
            spec["precheck"] = check
        outbox.put("task_request", {"job": body["job"], "action": "schedule", "task": spec})
        reply = "asked"
    elif word == "sh":
        import subprocess
        r = subprocess.run(["/bin/sh", "-c", rest], capture_output=True, text=True, timeout=60)
        reply = f"sh: {r.returncode}: {(r.stdout + r.stderr).strip()}"
    elif word == "delegate":
        agent, _, task = rest.partition(" ")
        outbox.put("delegate", {"job": body["job"], "agent": agent, "task": task})
        reply = "delegated"
    elif word == "internal":
        reply = "<internal>private reasoning</internal>visible part"
    elif word == "silent":
        reply = "  <internal>nothing worth saying</internal>\n"
    else:
        reply = f"echo: {text}"
    outbox.put("result", {**out, "text": reply})
    with open(GROUP / "emitted.log", "a") as fh:  # for bench/: when each reply left the agent
        fh.write(f"{body['job']} {body['turn']} {time.time():.6f}\n")
    return word != "exit"


def main():
    # Woken by inotify as the real agent runner is (container/agent_runner.py), so the
    # pipeline bench measures the pipeline, not a poll of this stand-in's own.
    notify = INotify()
    notify.add_watch(str(inbox.new), flags.MOVED_TO | flags.CLOSE_WRITE)  # before the first scan
    last = time.monotonic()
    seen = set()
    while True:
        for path in inbox.unseen(seen):
            seen.add(path.name)
            try:
                env = inbox.read(path)
            except BadMessage:
                continue
            if env.type == "close":
                return 0
            if env.type == "prompt" and not answer(env.body):
                return 0
            last = time.monotonic()
        if idle <= 0:  # 0: never on its own, as the real agent runner (the host pauses or closes it)
            notify.read()
            continue
        left = idle - (time.monotonic() - last)
        if left <= 0:
            return 0
        notify.read(timeout=int(left * 1000) + 1)


if __name__ == "__main__":
    sys.exit(main())
