"""Figures that need a real systemd: install time, agent latency under the units,
task timer accuracy, unit exposure.

Boots the system-test machine (a fresh Debian as PID 1 in a privileged Podman
container; ``--suite trixie`` for Debian 13), installs it as the README says
(`sudo ./install.sh`, apt and the image build included) and times that, then
  - sends messages to the real agent image (rootless, under the units, through
    the fake Messages API): a new container each (cold) and follow-ups into a
    warm one, p50/p95;
  - schedules N one-off tasks a couple of seconds apart and reports, for each
    firing, fire time minus due time (median and max);
  - prints ``systemd-analyze security`` exposure for every nanoclaw unit.

    .venv/bin/python bench/systemd.py [--suite bookworm] [--firings 12] [--runs 10]

``bench/pipeline.py`` calls :func:`measure` for its scheduler line.
"""

from __future__ import annotations

import argparse
import re
import shlex
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from system.machine import UNITS, Machine, booted_and_installed  # noqa: E402


def agent_latency(m: Machine, runs: int) -> dict[str, list[float]]:
    """Seconds from a message handed to the channel's socket to the reply sent back to its
    chat (as `nanoclaw send --wait` does it, less that command's own start): cold (each in a
    new container, the last one gone) and warm (follow-ups into a container kept idle)."""
    def timed(text: str) -> float:
        prog = ("import time, uuid; from nanoclaw.core import config_file\n"
                "from nanoclaw.admin.commands.chat import ChannelClient\n"
                "c = ChannelClient(config_file.load(), timeout=120); c.call({'op': 'watch', 'group': 'main'})\n"
                f"t = time.monotonic(); c.call({{'op': 'inbound', 'group': 'main', 'text': {text!r}, "
                "'id': uuid.uuid4().hex})\n"
                "while not (e := c.recv()).get('op') == 'message' or e.get('from') != 'assistant': pass\n"
                "print(time.monotonic() - t)")
        return float(m.sh(f"/opt/nanoclaw/bin/python -c {shlex.quote(prog)}").stdout)

    def idle() -> bool:
        return m.query("print(Job.select().where(Job.status.in_(['queued', 'running'])).count())") == 0
    def idle_timeout(seconds: float) -> None:
        # The installed config.toml has no [container] table (detected.toml holds the host's
        # options): the bench's own table goes at the end, replaced each time. Cold means a new
        # container: none is paused (issue 29's pause would hand the message to the last one).
        m.sh("sed -i '/^# bench$/,$d' /etc/nanoclaw/config.toml && printf '# bench\\n[container]\\n"
             f"idle_timeout = {seconds}\\npaused_memory_mib = 0\\n' >> /etc/nanoclaw/config.toml "
             "&& systemctl restart nanoclaw.target")
        m.wait_active()
    idle_timeout(0.5)
    cold = []
    for i in range(runs):
        m.wait_for(idle, 60, "the last container gone")
        cold.append(timed(f"cold {i}"))
    idle_timeout(300.0)
    timed("warm up")
    warm = [timed(f"warm {i}") for i in range(runs)]
    return {"cold": cold, "warm": warm}


PSS_GOAL = 150  # MiB, all eight daemons idle (issue 29): memory has no floor, only a goal


def idle_pss(m: Machine) -> dict[str, float]:
    """Each nanoclaw daemon's PSS (MiB) under its unit, idle: its MainPID's smaps_rollup (PSS
    shares the interpreter's pages among the processes mapping them, so the figures add up)."""
    out = {}
    for unit in UNITS:
        if unit == "nanoclaw-podman":  # Podman's own API service, not a daemon of ours
            continue
        pid = m.show(f"{unit}.service", "MainPID")
        if pid in ("", "0"):
            continue
        rollup = m.sh(f"cat /proc/{pid}/smaps_rollup", check=False).stdout
        found = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
        if found:
            out[unit.removeprefix("nanoclaw-")] = int(found.group(1)) / 1024
    return out


def machine_floor(m: Machine, runs: int = 20) -> dict[str, float]:
    """In the machine, as the units run: an idle process woken through a socket and a SQLite
    commit of a row (WAL, synchronous=FULL) in the state directory: median seconds."""
    prog = ("import os, socket, sqlite3, statistics, time, json\n"
            "a, b = socket.socketpair()\n"
            "if os.fork() == 0:\n"
            "    a.close()\n"
            "    while b.recv(1): b.sendall(b'x')\n"
            "    os._exit(0)\n"
            "b.close(); wake, commit = [], []\n"
            "con = sqlite3.connect('/var/lib/nanoclaw/floor.db', isolation_level=None)\n"
            "con.execute('pragma journal_mode=wal'); con.execute('pragma synchronous=full')\n"
            "con.execute('create table if not exists t (x)')\n"
            f"for i in range({runs}):\n"
            "    time.sleep(0.05); t = time.monotonic(); a.sendall(b'x'); a.recv(1); wake.append(time.monotonic() - t)\n"
            "    t = time.monotonic(); con.execute('begin immediate'); con.execute('insert into t values (1)');"
            " con.execute('commit'); commit.append(time.monotonic() - t)\n"
            "con.close(); os.unlink('/var/lib/nanoclaw/floor.db')\n"
            "print(json.dumps({'wake': statistics.median(wake), 'commit': statistics.median(commit)}))")
    import json
    return json.loads(m.sh(f"python3 -c {shlex.quote(prog)}").stdout)


def cold_stages(m: Machine) -> dict[str, list[float]]:
    """Where the new containers' first turns spent their time (the queue's journal lines)."""
    sys.path.insert(0, str(ROOT / "bench"))
    from agent_latency import cold_stages as parse
    return parse(m.journal("-u", "nanoclaw-queue"))


def measure(firings: int = 12, gap: float = 2.0, security: bool = True, suite: str = "bookworm",
            runs: int = 0) -> dict:
    """Boot, install, (optionally) time the agent, fire ``firings`` timers; returns the figures."""
    t0 = time.time()
    m = booted_and_installed(suite, "sk-ant-api03-BENCH-" + "0" * 16)
    try:
        figures: dict = {"boot+install": time.time() - t0, "install": m.install_seconds}
        figures["pss"] = idle_pss(m)  # before any agent ran: the daemons as they idle after install
        figures["floor"] = machine_floor(m)
        if runs:
            figures["agent"] = agent_latency(m, runs)
            figures["stages"] = cold_stages(m)
        first = int(time.time()) + 10
        due = {}
        for i in range(firings):
            at = datetime.fromtimestamp(first + i * gap, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
            out = m.nanoclaw("tasks", "add", "main", "--isolated", "--tz", "UTC", "--at", at,
                             f"accuracy {i}").stdout
            due[int(out.split("task ")[1].split()[0])] = first + i * gap
        ids = ",".join(map(str, due))
        m.wait_for(lambda: m.query(f"print(TaskRun.select().where(TaskRun.task.in_([{ids}])).count())")
                   >= len(due), first - time.time() + firings * gap + 60, "every firing")
        fired = m.query(f"print(json.dumps({{r.task_id: r.fired_at for r in TaskRun.select()"
                        f".where(TaskRun.task.in_([{ids}]))}}))")
        figures["late"] = sorted(fired[str(t)] - due[t] for t in due)
        # The queue's log says when each firing's process started: the timer's and systemd's share.
        found = re.findall(r"fired \(\S+s after due; its process started (-?[0-9.]+)s after, "
                           r"Python ran (-?[0-9.]+)s after\)", m.journal("-u", "nanoclaw-queue"))
        figures["started"] = sorted(float(a) for a, _ in found)
        figures["python"] = sorted(float(b) for _, b in found)
        figures["security"] = {}
        if security:
            for unit in [f"{u}.service" for u in UNITS] + ["nanoclaw-timers.service"]:
                out = m.sh(f"systemd-analyze security --no-pager {unit} | tail -1", check=False).stdout
                figures["security"][unit] = out.split(":", 1)[-1].strip()
        return figures
    finally:
        m.remove()


def accuracy_line(late: list[float], started: list[float] | None = None, python: list[float] | None = None) -> str:
    line = (f"task timer accuracy (fire - due) over {len(late)} firings: median "
            f"{statistics.median(late) * 1000:+.0f} ms, max {max(late) * 1000:+.0f} ms, "
            f"min {min(late) * 1000:+.0f} ms")
    if started and statistics.median(started) > 0:  # the floor: systemd's timer and its start of the unit
        line += (f"; floor (the firing's process started) {statistics.median(started) * 1000:.0f} ms: "
                 f"{statistics.median(late) / statistics.median(started):.1f}x")
    if started:
        line += (f"\n  of which before the firing's process started (the timer elapsing, systemd starting the "
                 f"unit): median {statistics.median(started) * 1000:+.0f} ms, max {max(started) * 1000:+.0f} ms")
    if python:
        line += (f"\n  and before Python ran the fire module (the unit's sandbox set up, exec, the interpreter's "
                 f"start): median {statistics.median(python) * 1000:+.0f} ms, max {max(python) * 1000:+.0f} ms")
    return line


def agent_lines(f: dict) -> list[str]:
    """The real agent's figures under the units, and where a new container's time went. A new
    container's floor is its create and start (the runner's Podman calls, the same run's
    median); a warm turn's time is the CLI's and the (fake) model's, no floor of ours."""
    lines = []
    podman = statistics.median(f["stages"]["podman"]) if f.get("stages", {}).get("podman") else 0
    for kind, values in f.get("agent", {}).items():
        ms = sorted(v * 1000 for v in values)
        row = (f"real agent, rootless under the units, {kind:<4} send -> reply: p50 "
               f"{statistics.median(ms):6.0f} ms  p95 {ms[min(len(ms) - 1, round(0.95 * (len(ms) - 1)))]:6.0f} ms"
               f"  (n={len(ms)})")
        if kind == "cold" and podman:
            row += f"  floor (podman create + start) {podman:.0f} ms: {statistics.median(ms) / podman:.1f}x"
        lines.append(row)
    if f.get("stages"):
        from agent_latency import STAGE_NAMES
        lines.append("where a new container's first turn spends its time, rootless under the units (median ms):")
        for name, values in f["stages"].items():
            lines.append(f"  {STAGE_NAMES.get(name, name):<58} {statistics.median(values):7.0f} ms")
    return lines


def pss_lines(f: dict) -> list[str]:
    """The daemons' idle PSS under the units, against the goal (memory has no floor)."""
    if not f.get("pss"):
        return []
    total = sum(f["pss"].values())
    lines = ["idle PSS under the units: " + ", ".join(f"{k} {v:.1f} MiB" for k, v in f["pss"].items())
             + f"; total {total:.1f} MiB for {len(f['pss'])} (goal {PSS_GOAL} MiB for eight: {total / PSS_GOAL:.2f}x)"]
    if f.get("floor"):
        fl = f["floor"]
        lines.append(f"this machine's floor, in it: a wake-up {fl['wake'] * 1000:.2f} ms, "
                     f"a SQLite commit {fl['commit'] * 1000:.2f} ms")
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firings", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between due times")
    ap.add_argument("--suite", default="bookworm", help="Debian release of the machine (bookworm, trixie)")
    ap.add_argument("--runs", type=int, default=10, help="agent messages per latency figure (0: skip)")
    args = ap.parse_args()
    f = measure(args.firings, args.gap, suite=args.suite, runs=args.runs)
    print(f"install.sh as the README says (apt, debootstrap, wheels, image build) on {args.suite}: "
          f"{f['install']:.0f} s")
    for line in agent_lines(f) + pss_lines(f):
        print(line)
    print(accuracy_line(f["late"], f.get("started"), f.get("python")))
    print("systemd-analyze security (exposure, 0 = locked down, 10 = unprotected):")
    for unit, level in f["security"].items():
        print(f"  {unit:<28} {level}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
