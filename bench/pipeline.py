#!/usr/bin/env python3
"""The figures nanoclaw's promises are judged by, in one run.

    python3 bench/pipeline.py [--runs 30] [--ingest 2000] [--no-baseline] [--no-systemd]

- pipeline overhead: message stored -> prompt picked up by a warm container,
  and by a newly started one; agent's reply emitted -> sent by the channel
  (p50/p95/p99). The agent is the scripted test agent in real containers, so
  this is our overhead, not a model's.
- sustained ingest: messages acknowledged per second through the channel socket
  from 4 and 16 concurrent clients, and from one client pipelining (all its lines
  written before it reads the answers); exactly ``--ingest`` messages each time.
  "Lost" is a message acknowledged and not stored (each client counts its
  acknowledgements), nothing else; refusals are counted apart.
- idle RSS of each daemon and their total.
- the same latencies under a **polling baseline** (the queue polls for
  messages every 2 s, the ipc daemon polls containers' output every 1 s, as a
  polling design would), and the ratio.

- under a real systemd (PID 1 in a privileged Podman container, installed as
  the README says, see bench/systemd.py): task timer accuracy, and the real
  agent image rootless under the units, cold and warm, with the cold stages
  (``bench/agent_latency.py`` gives the same rootful on the host);
  ``--no-systemd`` skips it.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from podman_harness import BASE_IMAGE, _podman, build_test_agent_image  # noqa: E402
from system_harness import System  # noqa: E402

from nanoclaw.admin.hostcheck import probe_container_options  # noqa: E402

POLL = "queue=2,ipc=1"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def line(name: str, values: list[float], floor: float | None = None) -> str:
    """A figure's percentiles; with ``floor`` (seconds: this machine's cost of the steps it is
    made of, measured in the same run), the floor and the p50's ratio to it."""
    ms = [v * 1000 for v in values]
    out = (f"  {name:<40} n={len(ms):<4} p50={pct(ms, 50):8.1f} ms  p95={pct(ms, 95):8.1f} ms  "
           f"p99={pct(ms, 99):8.1f} ms")
    if floor:
        out += f"  floor {floor * 1000:6.1f} ms  {pct(ms, 50) / (floor * 1000):5.1f}x"
    return out


def floors(floor: dict[str, list[float]]) -> dict[str, tuple[float, str]]:
    """Each figure's floor from the machine's own steps (p50s of ``machine_floor``), and what it
    is made of: the steps the path must take by its promises, counted from the code.

    Warm pickup: the message's commit, the nudge waking the queue, the turn's commit, the
    container woken by inotify (its prompt file is written without a sync: see Spool.put).
    Delivery: ipc woken by inotify, the result durably in spool/queue, the queue nudged, the
    reply durably in spool/router and the turn's commit, the router nudged, its outbox row
    committed, the channel woken by its deliver (the bot message is stamped before its commit).
    A new container: the warm pickup's floor and a container created and started."""
    p = {k: statistics.median(v) for k, v in floor.items()}
    wake, spool, commit = p[WAKE], p[SPOOL], p[COMMIT]
    out = {"pickup": (2 * wake + 2 * commit, "2 wake-ups + 2 commits"),
           "delivery": (4 * wake + 2 * spool + 2 * commit, "4 wake-ups + 2 spool writes + 2 commits")}
    if CONTAINER in p:
        out["new"] = (out["pickup"][0] + p[CONTAINER], "the warm floor + a container's create and start")
    return out


def ingest_floor(floor: dict[str, list[float]], clients: int, pipelined: bool) -> tuple[float, str]:
    """The rate this machine allows for ``clients`` clients each waiting for its answer (or one
    pipelining): every commit carries one message per client waiting (``PIPELINE`` for a
    pipelined client) and costs a commit of that many rows and a wake-up."""
    rows = PIPELINE if pipelined else clients
    key = f"{COMMIT_N} ({rows} rows)"
    per_commit = statistics.median(floor[WAKE]) + statistics.median(floor[key])
    return rows / per_commit, f"{rows} rows per commit + a wake-up"


def make(base: Path, image: str, opts: dict, podman_url: str, idle: float, poll: bool) -> System:
    s = System(base, {"timezone": "UTC", "scheduler": "crontab", "crontab_file": str(base / "crontab"),
                      "container": {"image": image, "podman_url": podman_url, "idle_timeout": idle, **opts}})
    if poll:
        s.env["NANOCLAW_BENCH_POLL"] = POLL
    s.cli("groups", "add", "main", "--main")
    s.start()
    return s


def latencies(s: System, runs: int, cold: bool) -> dict[str, list[float]]:
    """Per message: stored -> picked up by the agent, emitted -> sent, and their stages.

    Stages, from what the pieces record: ``message.timestamp`` (the channel, before its
    commit), ``turn.sent_at`` (the queue, deciding a turn, before it writes the prompt),
    the prompt's copy in the group folder (the agent, when it read the prompt), the
    agent's ``emitted.log``, ``turn.done_at`` (the queue, taking the result from ipc) and
    the bot message's ``timestamp`` (the channel, having sent it)."""
    w = s.watch("main")
    rng = random.Random(runs)
    for i in range(runs):
        if cold:  # the previous container must be gone
            s.wait_for(lambda: s.db().execute("select count(*) from job where status in ('queued','running')")
                       .fetchone()[0] == 0, 60)
        # a random moment, so a polling design is not always caught right after a poll
        time.sleep(rng.uniform(0, 2.0))
        s.send("main", f"bench {i}")
        w.reply(60)
    w.close()
    time.sleep(0.5)
    folder = s.state / "groups" / "main"
    emitted = {}
    for row in (folder / "emitted.log").read_text().split("\n"):
        if row:
            job, turn, t = row.split()
            emitted[(int(job), int(turn))] = float(t)
    with s.db() as con:
        turns = con.execute("select job_id, seq, first_message_id, sent_at, done_at from turn order by id").fetchall()
        stored = dict(con.execute("select id, timestamp from message where is_bot = 0").fetchall())
        sent = [r[0] for r in con.execute("select timestamp from message where is_bot = 1 order by id")]
    out: dict[str, list[float]] = {k: [] for k in ("pickup", "delivery", "stored -> turn decided",
                                                    "turn decided -> agent read it", "emitted -> result taken",
                                                    "result taken -> sent")}
    for (job, seq, first, decided, taken), sent_at in zip(turns, sent, strict=False):
        prompt_file = folder / "prompts" / f"{job}-{seq}.txt"
        if (cold and seq != 0) or (not cold and job == turns[0][0] and seq == 0):
            continue  # the warm run's first turn started its container
        read = prompt_file.stat().st_mtime
        out["pickup"].append(read - stored[first])
        out["delivery"].append(sent_at - emitted[(job, seq)])
        out["stored -> turn decided"].append(decided - stored[first])
        out["turn decided -> agent read it"].append(read - decided)
        out["emitted -> result taken"].append(taken - emitted[(job, seq)])
        out["result taken -> sent"].append(sent_at - taken)
    return out


def ingest(base: Path, total: int, clients: int = 4, pipelined: bool = False) -> dict:
    """``total`` messages (exactly: the remainder is spread over the first clients) from
    ``clients`` connections to the channel socket. Each client sends one line and waits for
    its answer, or (``pipelined``) writes all its lines before reading the answers. Returns
    the rate (acknowledged per second), how many were acknowledged, refused (answered not
    ok, or never answered), stored, lost (acknowledged and not stored: nothing else) and the
    channel's commits (messages arriving together share one)."""
    s = System(base, {"timezone": "UTC", "scheduler": "crontab", "crontab_file": str(base / "crontab")})
    for g in range(clients):
        s.cli("groups", "add", f"in{g}")  # trigger required: messages are stored, no agent runs
    s.start("channel", "queue")
    acked: list[list[str]] = [[] for _ in range(clients)]
    refused = [0] * clients
    counts = [total // clients + (1 if g < total % clients else 0) for g in range(clients)]

    def client(g: int) -> None:
        ids = [f"{g}-{i}" for i in range(counts[g])]
        lines = [json.dumps({"op": "inbound", "group": f"in{g}", "text": f"m{i}", "id": i}).encode() + b"\n"
                 for i in ids]
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
            c.connect(str(s.run / "channel.sock"))
            f = c.makefile("rb")
            if pipelined:  # everything written at once (by a thread: the answers must be read meanwhile)
                writer = threading.Thread(target=c.sendall, args=(b"".join(lines),))
                writer.start()
            for i, line in zip(ids, lines, strict=True):
                if not pipelined:
                    c.sendall(line)
                answer = f.readline()
                if answer and json.loads(answer).get("ok"):
                    acked[g].append(i)
                else:
                    refused[g] += 1
            if pipelined:
                writer.join()

    t0 = time.monotonic()
    threads = [threading.Thread(target=client, args=(g,)) for g in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - t0
    with s.db() as con:
        stored = {row[0] for row in con.execute("select channel_id from message where is_bot = 0")}
    status = s.request("channel", {"op": "status"}).get("status", "")
    commits = int(status.rsplit(" in ", 1)[1].split()[0])
    s.close()
    ok = [i for ids in acked for i in ids]
    return {"rate": len(ok) / took, "acked": len(ok), "refused": sum(refused), "stored": len(stored),
            "lost": len(set(ok) - stored), "commits": commits, "clients": clients, "total": total,
            "pipelined": pipelined}


def ingest_line(r: dict) -> str:
    how = "1 client, pipelined" if r["pipelined"] else f"{r['clients']} clients"
    return (f"  {how:<22} {r['rate']:8,.0f} messages/s; {r['total']} sent, {r['acked']} acknowledged, "
            f"{r['refused']} refused, {r['stored']} stored, {r['lost']} lost, in {r['commits']} commits")


WAKE = "idle process woken through a socket"
SPOOL = "durable spool write (2 fsyncs)"
COMMIT = "SQLite commit of a row (WAL, FULL)"
COMMIT_N = "SQLite commit"
CONTAINER = "container create + start (Podman API)"
PSS_GOAL = 150  # MiB, all eight daemons idle (issue 29): memory has no floor, only a goal
PIPELINE = 64  # the rows a pipelined client's commit may carry, for its floor


def machine_floor(where: Path, runs: int, container: tuple | None = None) -> dict[str, list[float]]:
    """What this machine charges for the steps nanoclaw's paths are made of, after the same
    random idle gaps as the latency runs: one idle process woken by another through a Unix
    socket (a nudge; the container's inotify wake-up is the same kind of step), one durable
    small spool file (write, fsync, rename, fsync the directory), one SQLite commit of a small
    row as the daemons' database commits (WAL, synchronous=FULL), commits of 4, 16 and 64 rows
    (for ingest), and, given ``container`` (a Podman client, image, options), a container of
    the test image created and started."""
    import multiprocessing
    import os
    import sqlite3

    parent, child = socket.socketpair()

    def echo(sock: socket.socket) -> None:
        parent.close()  # the forked copy: else the end never sees the parent close its side
        while sock.recv(1):
            sock.sendall(str(time.monotonic()).encode())

    proc = multiprocessing.get_context("fork").Process(target=echo, args=(child,))
    proc.start()
    child.close()
    rng = random.Random(7)
    out: dict[str, list[float]] = {WAKE: [], SPOOL: [], COMMIT: []}
    sizes = (4, 16, PIPELINE)
    for n in sizes:
        out[f"{COMMIT_N} ({n} rows)"] = []
    con = sqlite3.connect(where / "floor.db", isolation_level=None)
    con.execute("pragma journal_mode=wal")
    con.execute("pragma synchronous=full")
    con.execute("create table m (id integer primary key, chat text, channel_id text, text text, ts real,"
                " unique (chat, channel_id))")
    d = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(runs):
            time.sleep(rng.uniform(0, 2.0))
            t0 = time.monotonic()
            parent.sendall(b"x")
            out[WAKE].append(float(parent.recv(64)) - t0)
            t0 = time.monotonic()
            fd = os.open(where / "tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.write(fd, b"x" * 300)
            os.fsync(fd)
            os.close(fd)
            os.rename(where / "tmp", where / f"f{i}")
            os.fsync(d)
            out[SPOOL].append(time.monotonic() - t0)
            for n, key in ((1, COMMIT), *((n, f"{COMMIT_N} ({n} rows)") for n in sizes)):
                t0 = time.monotonic()
                con.execute("begin immediate")
                con.executemany("insert into m (chat, channel_id, text, ts) values (?, ?, ?, ?)",
                                [("c", f"{i}-{n}-{j}", "m" * 40, time.time()) for j in range(n)])
                con.execute("commit")
                out[key].append(time.monotonic() - t0)
        if container is not None:
            client, image, opts = container
            for i in range(max(10, runs // 2)):
                time.sleep(rng.uniform(0, 0.5))
                t0 = time.monotonic()
                ctr = client.containers.create(image, command=["true"], read_only=True, cap_drop=["ALL"],
                                               labels={"nanoclaw.bench": "floor"}, **opts)
                ctr.start()
                out.setdefault(CONTAINER, []).append(time.monotonic() - t0)
                ctr.remove(force=True)
    finally:
        os.close(d)
        con.close()
        parent.close()
        proc.join(5)
    return out


def memory_of(s: System) -> dict[str, dict[str, int]]:
    """Each daemon's RSS, PSS and USS in KiB. RSS counts the interpreter's and libssl's pages,
    shared by all seven, once per process; PSS divides shared pages among their sharers, so
    the seven PSS figures add up to the memory they really take; USS is each one's own."""
    out = {}
    for name, proc in s.procs.items():
        fields = {}
        for row in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines()[1:]:
            key, _, value = row.partition(":")
            fields[key] = int(value.split()[0])
        out[name] = {"rss": fields["Rss"], "pss": fields["Pss"],
                     "uss": fields["Private_Clean"] + fields["Private_Dirty"]}
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--ingest", type=int, default=2000)
    ap.add_argument("--no-baseline", action="store_true")
    ap.add_argument("--no-systemd", action="store_true",
                    help="skip what needs a real systemd: task timer accuracy, the real agent under the units")
    ap.add_argument("--agent-runs", type=int, default=6,
                    help="real agent messages (cold, then warm) under the installed units; 0: none")
    args = ap.parse_args()
    import subprocess
    found, failures = probe_container_options(BASE_IMAGE) if _podman(
        "image", "exists", BASE_IMAGE, check=False).returncode == 0 else (None, [])
    if found is None:
        subprocess.run([str(ROOT / "container" / "build-base.sh"), BASE_IMAGE], check=True)
        found, failures = probe_container_options(BASE_IMAGE)
    opts = {"runtime": found.runtime, "ulimits": list(found.ulimits)}
    image = build_test_agent_image()
    work = Path(tempfile.mkdtemp(prefix="nc-bench-"))
    sock = work / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"])
    while not sock.exists():
        time.sleep(0.05)
    url = f"unix://{sock}"
    report: dict[str, dict[str, list[float]]] = {}
    stages: dict[str, dict[str, list[float]]] = {}
    memory: dict[str, dict[str, int]] = {}
    try:
        for mode in (["event"] if args.no_baseline else ["event", "polling baseline"]):
            poll = mode != "event"
            s = make(work / f"{mode[:4]}-warm", image, opts, url, idle=120, poll=poll)
            warm = latencies(s, args.runs, cold=False)
            if not poll:
                time.sleep(2)
                memory = memory_of(s)
            s.close()
            _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
            # a new container each time: none kept paused (bench/agent_latency.py times those)
            s = make(work / f"{mode[:4]}-cold", image, {**opts, "paused_memory_mib": 0}, url, idle=0.2, poll=poll)
            cold = latencies(s, max(10, args.runs // 2), cold=True)
            s.close()
            report[mode] = {"stored -> prompt in warm container": warm["pickup"],
                            "stored -> prompt in new container": cold["pickup"],
                            "reply emitted -> sent by channel": warm["delivery"] + cold["delivery"]}
            stages[mode] = {name: warm[name] for name in ("stored -> turn decided", "turn decided -> agent read it",
                                                          "emitted -> result taken", "result taken -> sent")}
        ingests = [ingest(work / "ingest", args.ingest), ingest(work / "ingest16", args.ingest, clients=16),
                   ingest(work / "ingest1p", args.ingest, clients=1, pipelined=True)]
        (work / "floor").mkdir()
        from podman import PodmanClient
        with PodmanClient(base_url=url) as client:
            ctr_opts = {"ulimits": [{"Name": u.partition("=")[0], "Soft": int(u.partition("=")[2].split(":")[0]),
                                     "Hard": int(u.partition("=")[2].split(":")[-1])} for u in found.ulimits]}
            if found.runtime:
                ctr_opts["runtime"] = found.runtime
            floor = machine_floor(work / "floor", args.runs, (client, image, ctr_opts))
    finally:
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
        service.terminate()
    goal = floors(floor)
    row_floor = {"stored -> prompt in warm container": goal["pickup"][0],
                 "stored -> prompt in new container": goal["new"][0],
                 "reply emitted -> sent by channel": goal["delivery"][0]}
    print("\nnanoclaw pipeline benchmark (scripted agent in real containers; 2 cores)")
    print("each figure beside its floor (this machine's cost of the steps it is made of, measured in this run)"
          " and its p50's ratio to it")
    for mode, rows in report.items():
        print(f"{mode}{' (' + POLL + ')' if mode != 'event' else ''}:")
        for name, values in rows.items():
            print(line(name, values, row_floor[name]))
    print("  floors: warm pickup " + goal["pickup"][1] + "; delivery " + goal["delivery"][1]
          + "; new container " + goal["new"][1])
    for mode, rows in stages.items():
        print(f"where the warm path's time goes ({mode}):")
        for name, values in rows.items():
            print(line("  " + name, values))
    print("this machine's own cost of those steps (the floors' parts):")
    for name, values in floor.items():
        print(line("  " + name, values))
    if "polling baseline" in report:
        print("ratio, polling baseline / event-driven (p50):")
        for name in report["event"]:
            ev, po = statistics.median(report["event"][name]), statistics.median(report["polling baseline"][name])
            print(f"  {name:<40} {po / ev:6.1f}x")
    print("sustained ingest through the channel socket (lost: acknowledged and not stored; floor: the rate "
          "this machine's commits allow):")
    for r in ingests:
        ceiling, how = ingest_floor(floor, r["clients"], r["pipelined"])
        print(ingest_line(r) + f"\n  {'':<22} floor {ceiling:8,.0f} messages/s ({how}): {ceiling / r['rate']:.1f}x")
    for kind in ("rss", "pss", "uss"):
        total = sum(v[kind] for v in memory.values()) / 1024
        against = f" (goal {PSS_GOAL} MiB for eight: {total / PSS_GOAL:.2f}x)" if kind == "pss" else ""
        print(f"idle {kind.upper()}: " + ", ".join(f"{k} {v[kind] / 1024:.1f} MiB" for k, v in memory.items())
              + f"; total {total:.1f} MiB for {len(memory)}{against}")
    if not args.no_systemd:
        import importlib.util
        spec = importlib.util.spec_from_file_location("bench_systemd", Path(__file__).with_name("systemd.py"))
        systemd_bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(systemd_bench)
        machine = systemd_bench.measure(firings=12, security=False, runs=args.agent_runs)
        for row in systemd_bench.agent_lines(machine) + systemd_bench.pss_lines(machine):
            print(row)
        print(systemd_bench.accuracy_line(machine["late"], machine.get("started"), machine.get("python")))
    return 0 if all(r["lost"] == 0 and r["refused"] == 0 for r in ingests) else 1


if __name__ == "__main__":
    sys.exit(main())
