#!/usr/bin/env python3
"""Message-in → reply-out latency with the real agent image against the fake Messages API.

    python3 bench/agent_latency.py [--runs 20] [--no-paused]

Cold: every message starts a new container (the previous one has exited;
``[container] paused_memory_mib = 0``).
Paused: every message is a new job for a container paused after its idle time
(issue 29: the default), unpaused and handed the job.
Warm: follow-ups delivered into a live container. All go through all the
daemons, the credential proxy and the real claude CLI; only the model is fake.

Beside message -> reply, each new conversation's message -> first API request
(when the fake API got it) is printed beside this machine's floor measured in
the same run: Podman's create and start of a container of the same image
(through the same API service, nothing run in it but ``true``).
A paused container's memory is read from /proc (PSS and RSS of its processes).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from fake_anthropic import FakeAnthropic  # noqa: E402
from podman_harness import BASE_IMAGE, WHEELS, _podman  # noqa: E402
from system_harness import SECRET, System  # noqa: E402

from nanoclaw.admin import image  # noqa: E402
from nanoclaw.admin.hostcheck import probe_container_options  # noqa: E402
from nanoclaw.core import config as config_mod  # noqa: E402
from nanoclaw.daemons.runner import pause  # noqa: E402


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def summary(name: str, values: list[float]) -> str:
    return (f"{name:<28} n={len(values):<3} median={statistics.median(values) * 1000:7.0f} ms   "
            f"p95={pct(values, 95) * 1000:7.0f} ms   min={min(values) * 1000:6.0f} ms   "
            f"max={max(values) * 1000:6.0f} ms")


def make(base: Path, api: FakeAnthropic, tag: str, opts: dict, podman_url: str, idle: float,
         members: tuple[tuple[str, str, str], ...] = ()) -> System:
    """A running nanoclaw with the main group (and its team ``members``: name, description,
    instructions) whose proxy talks to ``api``."""
    s = System(base, {"timezone": "UTC", "proxy_upstream": api.url, "container": {
        "image": tag, "podman_url": podman_url, "idle_timeout": idle, **opts}})
    s.set_credential(SECRET)
    s.cli("groups", "add", "main", "--main")
    for name, description, instructions in members:
        s.cli("agents", "add", "main", name, "--description", description, "--instructions", instructions)
    s.start()
    return s


def real_agent(prefix: str) -> tuple[str, dict, Path, subprocess.Popen]:
    """The real agent image (built if missing), the detected container options, a work dir
    and a Podman API service on a socket in it: what a bench with the real image needs."""
    found, failures = probe_container_options(BASE_IMAGE)
    if found is None:
        raise SystemExit(f"no working container runtime options: {[f.error for f in failures]}")
    opts = {"runtime": found.runtime, "ulimits": list(found.ulimits)}
    cfg = config_mod.Config(container=config_mod.ContainerConfig(runtime=found.runtime, ulimits=found.ulimits,
                                                                 base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-agent:test-{image.source_digest()}"
    if not image.image_exists(tag):
        image.build(cfg, tag=tag, wheels=WHEELS, progress=lambda m: print("image:", m), workdir=WHEELS.parent)
    work = Path(tempfile.mkdtemp(prefix=prefix))
    sock = work / "podman.sock"
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"])
    while not sock.exists():
        time.sleep(0.05)
    return tag, opts, work, service


def first_request(api: FakeAnthropic, text: str, since: float) -> float:
    """Seconds from ``since`` (wall clock) to the fake API's first request carrying ``text``."""
    return min(r["time"] for r in api.message_requests() if text in json.dumps(r["body"])) - since


def podman_floor(url: str, tag: str, opts: dict, runs: int) -> list[float]:
    """Podman's create and start of a container of ``tag`` (running ``true``), with the runtime
    options the agents get, through the same API service: the floor a new container stands on."""
    from podman import PodmanClient
    out = []
    with PodmanClient(base_url=url) as client:
        for i in range(runs):
            t0 = time.monotonic()
            ctr = client.containers.create(tag, command=["true"], name=f"nc-bench-floor-{i}", network_mode="none",
                                           runtime=opts["runtime"] or None, labels={"nanoclaw.bench": "1"},
                                           ulimits=[{"Name": n, "Soft": int(v.split(":")[0]),
                                                     "Hard": int(v.split(":")[-1])}
                                                    for n, _, v in (u.partition("=") for u in opts["ulimits"])])
            ctr.start()
            out.append(time.monotonic() - t0)
            ctr.wait(condition=["exited"])
            ctr.remove(force=True)
    return out


def memory(name: str) -> tuple[int, int]:
    """PSS and RSS (bytes) of the processes of the container ``name`` (paused or not)."""
    pid = int(_podman("inspect", "--format", "{{.State.Pid}}", name).stdout)
    pss = rss = 0
    for p in pause._processes(pid):
        for line in Path(f"/proc/{p}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
    return pss, rss


def idle(s: System) -> bool:
    with s.db() as con:
        return con.execute("select count(*) from job where status in ('queued','running')").fetchone()[0] == 0


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--no-paused", action="store_true", help="leave out the paused row")
    args = ap.parse_args()
    tag, opts, work, service = real_agent("nc-bench-")
    sock = work / "podman.sock"
    api = FakeAnthropic().start()
    results, first, mem = {}, {}, []
    try:
        floor = podman_floor(f"unix://{sock}", tag, opts, args.runs)
        s = make(work / "cold", api, tag, {**opts, "paused_memory_mib": 0}, f"unix://{sock}", idle=0.2)
        w = s.watch("main")
        cold, cold_first = [], []
        for i in range(args.runs):
            t0, wall = time.monotonic(), time.time()
            s.send("main", f"cold {i}")
            assert w.reply(120) == f"echo: cold {i}"
            cold.append(time.monotonic() - t0)
            cold_first.append(first_request(api, f"cold {i}", wall))
            s.wait_for(lambda s=s: idle(s), 60)
        stages = cold_stages(s.log("queue"))
        stages["podman"] = [float(m) * 1000 for m in re.findall(r" started \S+ in ([0-9.]+)s", s.log("runner"))]
        s.close()
        results["cold container"], first["cold container"] = cold, cold_first
        if not args.no_paused:
            s = make(work / "paused", api, tag, {**opts, "paused_memory_mib": 4096}, f"unix://{sock}", idle=0.2)
            w = s.watch("main")
            s.send("main", "paused warm-up")  # the one cold start: its container is paused after it
            w.reply(120)
            paused, paused_first = [], []
            for i in range(args.runs):
                s.wait_for(lambda s=s: idle(s) and "paused" in _podman(
                    "ps", "-a", "--filter", "label=nanoclaw.job", "--format", "{{.State}}").stdout.lower(), 60)
                if i == 0:
                    name = _podman("ps", "-a", "--filter", "label=nanoclaw.job", "--format", "{{.Names}}").stdout.split()[0]
                    mem.append(memory(name))
                t0, wall = time.monotonic(), time.time()
                s.send("main", f"paused {i}")
                assert w.reply(120) == f"echo: paused {i}"
                paused.append(time.monotonic() - t0)
                paused_first.append(first_request(api, f"paused {i}", wall))
            unpause = [float(m) * 1000 for m in re.findall(r" unpaused \S+ as \S+ in ([0-9.]+)s", s.log("runner"))]
            s.close()
            results["paused container"], first["paused container"] = paused, paused_first
        s = make(work / "warm", api, tag, opts, f"unix://{sock}", idle=600)
        w = s.watch("main")
        s.send("main", "warm up")
        w.reply(120)
        warm = []
        for i in range(args.runs):
            t0 = time.monotonic()
            s.send("main", f"warm {i}")
            assert w.reply(60) == f"echo: warm {i}"
            warm.append(time.monotonic() - t0)
        s.close()
        results["warm follow-up"] = warm
    finally:
        api.stop()
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)
        service.terminate()
    print(f"\nagent latency, message stored -> reply delivered ({args.runs} runs each, fake model)")
    for name, values in results.items():
        print(summary(name, values))
    base = statistics.median(floor)
    print(f"new conversation, message stored -> first API request; floor: podman create + start "
          f"{base * 1000:.0f} ms (median of {len(floor)}, this run)")
    for name, values in first.items():
        med = statistics.median(values)
        print(summary(name, values) + f"   = podman start {'+' if med >= base else '-'} "
                                      f"{abs(med - base) * 1000:.0f} ms ({med / base:.1f}x)")
    if mem:
        pss, rss = mem[0]
        print(f"a paused agent container's memory: PSS {pss / 2**20:.0f} MiB, RSS {rss / 2**20:.0f} MiB"
              + (f"; unpause and hand-over in the runner {statistics.median(unpause):.0f} ms" if unpause else ""))
    print("where a new container's first turn spends its time (median of each stage, from the job's creation):")
    for name, values in stages.items():
        print(f"  {STAGE_NAMES.get(name, name):<58} {statistics.median(values):7.0f} ms")
    return 0


# The agent runner's clock readings (container/agent_runner.py main() and session.py), each the end of a stage.
STAGE_NAMES = {
    "process": "queue -> runner -> podman create and start (to the process)",
    "podman": "  of which the runner's create and start calls",
    "python": "Python start (interpreter and our imports)",
    "cli_spawn": "forwarders up, inbox read, CLI started (early_cli.py)",
    "sdk_imported": "claude-agent-sdk import (the CLI starts meanwhile)",
    "cli_restart": "the early CLI did not match: the SDK starts its own",
    "cli_ready": "the rest of the CLI's start, initialize, MCP server listed",
    "query": "prompt handed to the CLI",
    "first_answer": "CLI -> proxy -> (fake) API -> first answer back",
    "result": "turn finished (result message)",
}


def cold_stages(queue_log: str) -> dict[str, list[float]]:
    """Each stage's durations (ms) from the queue's ``new container's first turn`` lines."""
    out: dict[str, list[float]] = {}
    for row in queue_log.splitlines():
        if "new container's first turn:" in row:
            for part in row.split("first turn:", 1)[1].split():
                name, _, ms = part.partition("+")
                out.setdefault(name, []).append(float(ms.removesuffix("ms")))
    return out


if __name__ == "__main__":
    sys.exit(main())
