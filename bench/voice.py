#!/usr/bin/env python3
"""Voice notes: seconds of audio transcribed per second, and the latency a note adds before the
agent's turn, beside this machine's floor.

    python3 bench/voice.py [--runs 3]

Through the whole pipeline (daemons as processes, the scripted test agent, the transcription
image in its container as the runner starts it): a typed message and a voice note (espeak-ng,
Ogg/Opus; a short one and a ~30 s one) are each sent to the main chat, timed to the reply.
The note's added latency is its median minus the typed message's.

The floor is what the engine itself costs on this machine, measured in one warm process in
the same image (no container start, the model loaded once): model load, and seconds of audio
per second of transcription; and an empty container's start (`podman run ... true`).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from podman_harness import BASE_IMAGE, WHEELS, _podman, build_test_agent_image  # noqa: E402
from system_harness import System  # noqa: E402

from nanoclaw.admin import voice_image  # noqa: E402
from nanoclaw.admin.hostcheck import probe_container_options  # noqa: E402
from nanoclaw.core import config as config_mod  # noqa: E402

SHORT = "What is the weather like in Lisbon today?"
FLOOR = """
import sys, time
t = time.perf_counter()
from faster_whisper import WhisperModel
from faster_whisper.audio import decode_audio
m = WhisperModel('/opt/model', device='cpu', compute_type='int8', cpu_threads=2, local_files_only=True)
print('load', time.perf_counter() - t)
for path in sys.argv[1:]:
    audio = decode_audio(path)
    for _ in range(2):
        t = time.perf_counter()
        text = ''.join(s.text for s in m.transcribe(audio, language='en', beam_size=5)[0])
        print('run', len(audio) / 16000, time.perf_counter() - t)
"""


def note(dest: Path, phrase: str, repeat: int = 1) -> Path:
    wav = dest.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), " ".join([phrase] * repeat)], check=True)
    subprocess.run(["opusenc", "--quiet", str(wav), str(dest)], check=True)
    return dest


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    found, failures = probe_container_options(BASE_IMAGE)
    if found is None:
        print("no container options work here:", failures)
        return 1
    opts = ["--runtime", found.runtime] if found.runtime else []
    for u in found.ulimits:
        opts += ["--ulimit", u]
    cfg = config_mod.Config(container=config_mod.ContainerConfig(runtime=found.runtime, ulimits=tuple(found.ulimits),
                                                                 base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-transcribe:test-{voice_image.source_digest(cfg)}"
    if not voice_image.current(cfg, tag):
        voice_image.build(cfg, tag=tag, wheels=WHEELS.parent / "wheels-voice", workdir=WHEELS.parent)
    agent = build_test_agent_image()
    work = Path(tempfile.mkdtemp(prefix="nc-bench-voice-"))
    work.chmod(0o755)  # the image's user (1000) reads the notes and the floor's script
    short = note(work / "short.ogg", SHORT)
    long_ = note(work / "long.ogg", SHORT, repeat=10)

    # the floor: the engine in one warm process, and an empty container's start
    (work / "floor.py").write_text(FLOOR)
    for f in work.iterdir():
        f.chmod(0o644)
    out = subprocess.run(["podman", "run", "--rm", *opts, "--network", "none", "--read-only", "--tmpfs", "/tmp",
                          "-v", f"{work}:/w:ro", tag, "python", "/w/floor.py", "/w/short.ogg", "/w/long.ogg"],
                         check=True, capture_output=True, text=True).stdout
    load = float(re.search(r"load (\S+)", out)[1])
    runs = [(float(a), float(b)) for a, b in re.findall(r"run (\S+) (\S+)", out)]
    starts = []
    for _ in range(3):
        t = time.perf_counter()
        subprocess.run(["podman", "run", "--rm", *opts, "--network", "none", tag, "true"], check=True)
        starts.append(time.perf_counter() - t)

    sock = work / "podman.sock"  # the Podman API for the runner
    service = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                               stderr=subprocess.DEVNULL)
    while not sock.exists():
        time.sleep(0.05)
    s = System(work / "sys", {"timezone": "UTC", "scheduler": "crontab", "crontab_file": str(work / "crontab"),
                              "container": {"image": agent, "runtime": found.runtime, "ulimits": list(found.ulimits),
                                            "idle_timeout": 0.5, "timeout": 120.0, "podman_url": f"unix://{sock}"},
                              "voice": {"image": tag}})
    try:
        s.cli("groups", "add", "main", "--main")
        s.start()
        timings: dict[str, list[float]] = {"typed": [], "short": [], "long": []}
        for _ in range(args.runs):
            for name in timings:
                w = s.watch("main")
                t = time.perf_counter()
                if name == "typed":
                    s.send("main", "hello")
                else:
                    s.cli("send", "main", "--file", str(short if name == "short" else long_), "voice")
                w.reply(300)
                timings[name].append(time.perf_counter() - t)
                w.close()
                time.sleep(1.0)  # the container exits (idle 0.5 s): every turn starts cold
        took = [float(x) for e in s.journal.of("runner")
                for x in re.findall(r"text in (\S+)s", e.get("MESSAGE", ""))]
    finally:
        s.close()
        service.terminate()
        _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)

    med = {k: statistics.median(v) for k, v in timings.items()}
    print(f"voice notes on this machine ({args.runs} runs each; the bundled tiny.en, int8, 2 threads)")
    print("floor, the engine alone in a warm process:")
    print(f"  model load                       {load:6.2f} s")
    for secs, t in runs:
        print(f"  transcribe {secs:5.1f} s of audio        {t:6.2f} s   = {secs / t:5.1f} s of audio per second")
    print(f"  an empty container's start       {statistics.median(starts):6.2f} s (median of 3)")
    print("through the pipeline (sent -> reply, each turn a new agent container):")
    print(f"  typed message                    {med['typed']:6.2f} s")
    for name, secs in (("short", runs[0][0]), ("long", runs[-1][0])):
        print(f"  voice note, {secs:5.1f} s                {med[name]:6.2f} s   added before the turn: "
              f"{med[name] - med['typed']:5.2f} s")
    for label, secs, each in (("short", runs[0][0], took[0::2]), ("long", runs[-1][0], took[1::2])):
        if each:  # the runner's own timing of a note: copy, container start, model load, transcription
            t = statistics.median(each)
            print(f"  its container, {label:5} note          {t:6.2f} s   = {secs / t:5.1f} s of audio per second")
    return 0


if __name__ == "__main__":
    sys.exit(main())
