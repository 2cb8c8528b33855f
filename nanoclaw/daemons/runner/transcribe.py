"""A voice note transcribed in a short-lived container of its own, never in this daemon.

SUMMARY
    The queue asks (``transcribe`` in ``spool/runner``: message, group, file, deadline). The
    runner copies the note out of the group's ``inbox/`` (opened without following a link)
    into a directory of its own, and runs ``nanoclaw-<folder>-voice-<message>`` from
    ``[voice] image``: no network at all, a read-only root, that copy alone mounted, read-only,
    at ``/in``, a small ``/tmp``, memory, pids and time limits (``[voice] timeout``), a
    size-capped log. What it printed is read up to a cap, checked, and reported to the queue
    (``transcript`` in ``spool/queue``).

    With ``[voice] engine = "api"`` the container only probes the note (decodable, not longer
    than ``max_seconds``: the decoders still parse hostile audio only there), then the runner
    asks the proxy (``transcribe`` on its host-side socket, naming the message) to send its
    copy to the API: the proxy holds the voice API's credential, this daemon never does.

SYNOPSIS
    Transcriber(daemon).take(envelope)    from the runner's pass; runs in a thread
    spec(cfg, body, probe) -> Spec;  verdict(code, error, out, cfg, probe) -> the report's fields
    api_verdict(reply, cfg, duration) -> the report's fields from the proxy's answer

HOSTILE INPUT
    The note (the agent can write the inbox: a link or FIFO planted there is refused; the
    audio is parsed only inside the container). The container's output: whatever a decoder
    parsing that audio printed. Read up to a cap; only ``text`` (cut), ``language`` (checked)
    and ``duration`` (a number) are taken from it; the engine and model are named from our
    configuration, never from its output; its error is cleaned to one short line. The proxy's
    answer carries the API's text: cut and cleaned again here as the container's is.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import threading
import time
from typing import TYPE_CHECKING

from podman.errors import APIError, NotFound
from requests.exceptions import ConnectionError as RequestsConnectionError

from nanoclaw.core import transcripts, voice_config
from nanoclaw.core.config import Config
from nanoclaw.core.log import log_fields
from nanoclaw.core.protocol import Envelope, nudge, request
from nanoclaw.core.safefs import Dir
from nanoclaw.core.spoken_trigger import initial_prompt
from nanoclaw.core.voice_config import WORK_DIR
from nanoclaw.daemons.runner import driver
from nanoclaw.daemons.runner.dirs import agent_identity
from nanoclaw.daemons.runner.spec import DEADLINE_LABEL, LABEL, TRANSCRIBE, VOICE_LABEL, Mount, Resources, Spec, \
    host_volumes, voice_name
from nanoclaw.daemons.runner.validate import SpecError, validate

if TYPE_CHECKING:
    from nanoclaw.daemons.runner import RunnerDaemon

ENGINE = "faster-whisper"
SCRATCH = "64m"
_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f]+")


def note_dir(cfg: Config, message: int):
    """Where the runner keeps its copy of one note: under the state directory, which no
    container sees, in a directory the validator pins to the note's own spec."""
    return cfg.state_dir / WORK_DIR / str(int(message))


def model_label(cfg: Config) -> str:
    try:
        return voice_config.model_name(cfg.voice)  # the name the image was built under
    except voice_config.ModelDirError:  # the model directory went away since the build
        return cfg.voice.model_name or "unknown"


def spec(cfg: Config, body: dict, probe: bool = False) -> Spec:
    v, c = cfg.voice, cfg.container
    user, userns = agent_identity(cfg)
    prompt = initial_prompt(cfg.assistant_name) if v.spoken_trigger else ""  # see core/spoken_trigger.py
    return Spec(
        role=TRANSCRIBE, name=voice_name(body["group"], body["message"]), image=v.image, group=body["group"],
        agent="", is_main=False, user=user, userns=userns,
        env={"HOME": "/tmp", "NANOCLAW_VOICE_LANGUAGE": v.language, "NANOCLAW_VOICE_MAX_SECONDS": str(v.max_seconds),
             "NANOCLAW_VOICE_PROMPT": prompt, "NANOCLAW_VOICE_MODEL_NAME": model_label(cfg)},
        mounts=(Mount("/in", str(note_dir(cfg, body["message"])), read_only=True), Mount("/tmp", size=SCRATCH),
                *(Mount(m.target, m.source, read_only=True) for m in host_volumes(c))),
        labels={LABEL: f"voice-{int(body['message'])}", "nanoclaw.group": body["group"],
                VOICE_LABEL: str(int(body["message"])), DEADLINE_LABEL: f"{time.time() + v.timeout:.0f}"},
        resources=Resources(v.memory if c.memory else "", 64, tuple(c.ulimits)), network="none",
        timeout=v.timeout, command=("/opt/venv/bin/python", "/opt/nanoclaw/transcribe.py", "/in/note",
                                    *(("--probe",) if probe else ())),
        workdir="/tmp", runtime=c.runtime, log_cap=max(65536, 4 * v.max_transcript_bytes))


def copy_note(cfg: Config, body: dict) -> None:
    """The note, out of the group's inbox into the runner's own directory. The inbox is the
    agent's to write: walked without following links, only a regular file taken, at most
    ``[whatsapp] max_media_bytes`` of it."""
    rel = body["file"]
    parts = rel.split("/")
    if len(parts) != 2 or parts[0] != "inbox" or parts[1] in ("", ".", ".."):
        raise ValueError(f"{rel!r} is not a file in the group's inbox")
    dest = note_dir(cfg, body["message"])
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True, mode=0o755)
    dest.chmod(0o755)  # the container's user reads it (rootful: another uid)
    limit = cfg.whatsapp.max_media_bytes
    with Dir.open(cfg.groups_dir / body["group"], "inbox") as inbox:
        fd = os.open(parts[1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=inbox.fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError("the note is not a regular file")
            if st.st_size > limit:
                raise ValueError(f"the note is {st.st_size} bytes, over the limit of {limit}")
            out = os.open(dest / "note", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
            try:
                left = limit + 1
                while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
                    os.write(out, chunk)
                    left -= len(chunk)
            finally:
                os.close(out)
        finally:
            os.close(fd)


def verdict(code: int, error: str, out: bytes, cfg: Config, probe: bool = False) -> dict:
    """The report's fields from what the container did: a transcript (a probe: the note's
    duration), or why not."""
    if error:  # the runner's own reason (the time limit)
        return {"ok": False, "error": f"it took longer than {cfg.voice.timeout:.0f} s" if "timed out" in error
                else _line(error)}
    last = out.decode(errors="replace").strip().splitlines()[-1:] or [""]
    try:
        said = json.loads(last[0])
    except ValueError:
        said = None
    if not isinstance(said, dict):
        return {"ok": False, "error": f"the transcriber failed (exit {code})" + (
            ", out of memory?" if code == 137 else "")}
    if code != 0 or "error" in said:
        return {"ok": False, "error": _line(str(said.get("error", f"the transcriber failed (exit {code})")))}
    if probe:
        return {"ok": True, "duration": _duration(said.get("duration"))}
    text = said.get("text")
    if not isinstance(text, str):
        return {"ok": False, "error": "the transcriber printed no text"}
    text, cut = _cut(text, cfg)
    return {"ok": True, "text": text, "cut": cut, "language": transcripts.language(said.get("language")),
            "duration": _duration(said.get("duration")), "engine": ENGINE, "model": model_label(cfg)}


def api_verdict(reply: dict, cfg: Config, duration: float | None) -> dict:
    """The report's fields from the proxy's answer: the API's transcript (engine and model
    named from our configuration), or why not."""
    if reply.get("ok") is not True:
        return {"ok": False, "error": _line(str(reply.get("error") or "the voice API failed"))}
    text = reply.get("text")
    if not isinstance(text, str):
        return {"ok": False, "error": "the voice API gave no text"}
    text, cut = _cut(text, cfg)
    return {"ok": True, "text": text, "cut": cut or reply.get("cut") is True,
            "language": transcripts.language(reply.get("language")) or transcripts.language(cfg.voice.language),
            "duration": duration, "engine": "api", "model": cfg.voice.api_model}


def _cut(text: str, cfg: Config) -> tuple[str, bool]:
    raw = text.encode(errors="ignore")
    cap = cfg.voice.max_transcript_bytes
    return raw[:cap].decode(errors="ignore"), len(raw) > cap


def _duration(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and 0 <= value < 86400 else None


def _line(text: str) -> str:
    return " ".join(_UNPRINTABLE.sub(" ", text).split())[:200]


class Transcriber:
    """The runner's transcriptions: at most ``[voice] max_running`` at once, each in a thread."""

    def __init__(self, daemon: RunnerDaemon) -> None:
        self.d = daemon
        self.slots = threading.BoundedSemaphore(daemon.cfg.voice.max_running)
        self.active: set[int] = set()  # messages being transcribed or waiting for a slot

    def take(self, env: Envelope) -> None:
        body = env.body
        try:
            msg, group, file, deadline = int(body["message"]), body["group"], body["file"], float(body["deadline"])
            if not isinstance(group, str) or not isinstance(file, str):
                raise TypeError("group and file must be strings")
        except (KeyError, TypeError, ValueError) as exc:
            self.d.spool.reject(env.path, f"a transcribe request without its fields: {exc}")
            return
        if msg in self.active:
            return
        self.active.add(msg)
        body = {"message": msg, "group": group, "file": file, "deadline": deadline, "job": f"voice-{msg}"}
        threading.Thread(target=self._run, args=(env, body), daemon=True).start()

    def _run(self, env: Envelope, body: dict) -> None:
        log = self.d.log
        fields = log_fields(group=body["group"], msg=str(body["message"]))
        try:
            with self.slots:
                if time.time() > body["deadline"]:
                    report = {"ok": False, "error": "it was not started in time"}
                else:
                    report = self._transcribe(body)
            self.d.queue_spool.put("transcript", {"message": body["message"], "group": body["group"], **report})
            nudge(self.d.cfg.socket("queue"))
            self.d.spool.done(env.path)
            if report["ok"]:
                log.info("voice note transcribed: %d bytes of text in %.2fs", len(report["text"].encode()),
                         report.get("took", 0.0), extra=fields)
            else:
                log.info("voice note not transcribed: %s", report["error"], extra=fields)
        except OSError as exc:  # the report could not be written: the request stays in cur/
            log.error("transcription report not written: %s", exc, extra=fields)
        finally:
            self.active.discard(body["message"])
            shutil.rmtree(note_dir(self.d.cfg, body["message"]), ignore_errors=True)

    def _transcribe(self, body: dict) -> dict:
        cfg, log = self.d.cfg, self.d.log
        api = cfg.voice.engine == "api"
        try:
            copy_note(cfg, body)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": _line(f"the file cannot be read: {getattr(exc, 'strerror', None) or exc}")}
        t0 = time.monotonic()
        try:
            with self.d.client(timeout=None) as client:
                try:  # one left by a runner that died while it ran: run it again from the start
                    client.containers.get(voice_name(body["group"], body["message"])).remove(force=True)
                except NotFound:
                    pass
                s = spec(cfg, body, probe=api)
                validate(s, cfg)
                ctr = driver.create(client, s, log, body)
                try:
                    ctr.start()
                    code, error = driver.wait(ctr, time.time() + s.timeout, s.timeout, "transcription", log, body)
                    out, _ = driver.read_logs(ctr, stdout=True, stderr=False, cap=s.log_cap)
                finally:
                    driver.remove(ctr)
        except SpecError as exc:
            return {"ok": False, "error": _line(f"the transcription container was refused: {exc}")}
        except (APIError, RequestsConnectionError) as exc:
            text = driver.start_failure(exc)
            if "image not known" in text:
                text = f"the transcription image {cfg.voice.image} is missing (build it: nanoclaw image build)"
            return {"ok": False, "error": _line(text)}
        report = verdict(code, error, out, cfg, probe=api)
        if api and report["ok"]:
            report = api_verdict(self._ask_proxy(body), cfg, report["duration"])
        report["took"] = round(time.monotonic() - t0, 2)
        return report

    def _ask_proxy(self, body: dict) -> dict:
        """The proxy sends the runner's copy of the note to the voice API: named by its message
        alone (the proxy opens it under this runner's voice directory itself)."""
        cfg = self.d.cfg
        try:
            return request(cfg.socket("proxy"), {"op": "transcribe", "message": body["message"], "group": body["group"],
                                                 "ext": body["file"].rpartition(".")[2].lower()},
                           timeout=cfg.voice.timeout + 15)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"the proxy did not answer ({type(exc).__name__}: {exc})"}
