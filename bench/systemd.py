"""Figures that need a real systemd: install time, task timer accuracy, unit exposure.

Boots the system-test machine (systemd as PID 1 in a privileged Podman
container), runs install.sh in it, then
  - schedules N one-off tasks a couple of seconds apart and reports, for each
    firing, fire time minus due time (median and max);
  - prints ``systemd-analyze security`` exposure for every nanoclaw unit.

    .venv/bin/python bench/systemd.py [--firings 12]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_test_agent_image  # noqa: E402
from system.machine import UNITS, Machine, host_container_options, workdir  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firings", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between due times")
    args = ap.parse_args()
    agent = build_test_agent_image()
    d = workdir()
    t0 = time.time()
    m = Machine.boot(d, host_container_options(), ["localhost/nanoclaw-base:bookworm", agent])
    try:
        booted = time.time() - t0
        t1 = time.time()
        m.install("--no-image", "--images", "/images")
        installed = time.time() - t1
        m.sh(f"sed -i 's#^\\[container\\]$#[container]\\nimage = \"{agent}\"#' /etc/nanoclaw/config.toml"
             " && systemctl restart nanoclaw.target")
        m.wait_for(lambda: all(m.state(u) == "active" for u in UNITS), 60, "units active")
        print(f"machine boot              {booted:6.1f} s")
        print(f"install.sh (no image)     {installed:6.1f} s")

        first = int(time.time()) + 10
        due = {}
        for i in range(args.firings):
            at = first + i * args.gap
            out = m.nanoclaw("tasks", "add", "main", "--isolated", "--tz", "UTC", "--at",
                             datetime.utcfromtimestamp(at).strftime("%Y-%m-%dT%H:%M:%S"), f"accuracy {i}").stdout
            due[int(out.split("task ")[1].split()[0])] = float(at)
        ids = ",".join(map(str, due))
        m.wait_for(lambda: m.query(f"print(TaskRun.select().where(TaskRun.task.in_([{ids}])).count())")
                   >= len(due), first - time.time() + args.firings * args.gap + 60, "every firing")
        fired = m.query(f"print(json.dumps({{r.task_id: r.fired_at for r in TaskRun.select()"
                        f".where(TaskRun.task.in_([{ids}]))}}))")
        late = sorted(fired[str(t)] - due[t] for t in due)
        print(f"timer accuracy (fire - due) over {len(late)} firings: median {statistics.median(late)*1000:+.0f} ms, "
              f"max {max(late)*1000:+.0f} ms, min {min(late)*1000:+.0f} ms")

        print("systemd-analyze security (exposure, 0 = locked down, 10 = unprotected):")
        units = [f"{u}.service" for u in UNITS] + ["nanoclaw-timers.service"]
        for unit in units:
            out = m.sh(f"systemd-analyze security --no-pager {unit} | tail -1", check=False).stdout.strip()
            print(f"  {unit:<28} {out.split('exposure level for')[-1].split(':', 1)[-1].strip() or out}")
    finally:
        m.remove()
    return 0


if __name__ == "__main__":
    sys.exit(main())
