"""Figures that need a real systemd: install time, task timer accuracy, unit exposure.

Boots the system-test machine (systemd as PID 1 in a privileged Podman
container), runs install.sh in it, then
  - schedules N one-off tasks a couple of seconds apart and reports, for each
    firing, fire time minus due time (median and max);
  - prints ``systemd-analyze security`` exposure for every nanoclaw unit.

    .venv/bin/python bench/systemd.py [--firings 12]

``bench/pipeline.py`` calls :func:`measure` for its scheduler line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import build_test_agent_image  # noqa: E402
from system.machine import UNITS, Machine, workdir  # noqa: E402


def measure(firings: int = 12, gap: float = 2.0, security: bool = True) -> dict:
    """Boot, install, fire ``firings`` timers; returns the figures (seconds, exposure lines)."""
    agent = build_test_agent_image()
    t0 = time.time()
    m = Machine.boot(workdir(), ["localhost/nanoclaw-base:bookworm", agent])
    try:
        figures: dict = {"boot": time.time() - t0}
        t1 = time.time()
        m.install("--no-image", "--images", "/images")
        figures["install"] = time.time() - t1
        m.use_agent(agent)

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
        figures["security"] = {}
        if security:
            for unit in [f"{u}.service" for u in UNITS] + ["nanoclaw-timers.service"]:
                out = m.sh(f"systemd-analyze security --no-pager {unit} | tail -1", check=False).stdout
                figures["security"][unit] = out.split(":", 1)[-1].strip()
        return figures
    finally:
        m.remove()


def accuracy_line(late: list[float]) -> str:
    return (f"task timer accuracy (fire - due) over {len(late)} firings: median "
            f"{statistics.median(late) * 1000:+.0f} ms, max {max(late) * 1000:+.0f} ms, "
            f"min {min(late) * 1000:+.0f} ms")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--firings", type=int, default=12)
    ap.add_argument("--gap", type=float, default=2.0, help="seconds between due times")
    args = ap.parse_args()
    f = measure(args.firings, args.gap)
    print(f"machine boot              {f['boot']:6.1f} s")
    print(f"install.sh (no image)     {f['install']:6.1f} s")
    print(accuracy_line(f["late"]))
    print("systemd-analyze security (exposure, 0 = locked down, 10 = unprotected):")
    for unit, level in f["security"].items():
        print(f"  {unit:<28} {level}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
