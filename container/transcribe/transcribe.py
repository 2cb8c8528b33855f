"""Inside the transcription container: one voice note in, one line of JSON out.

Runs as the command of ``nanoclaw-transcribe``, started by the runner for one note with no
network, a read-only root, the note alone mounted read-only at ``/in/note``, and memory and
time limits. It decodes the note (PyAV, inside faster-whisper: no system ffmpeg), refuses one
longer than ``NANOCLAW_VOICE_MAX_SECONDS``, transcribes it with the model in the image and
prints ``{"text", "language", "duration", "model", "engine"}``, or ``{"error"}`` with exit
status 2 for a note it cannot transcribe. The host treats whatever it prints as hostile text.

Environment: NANOCLAW_VOICE_MODEL (the model's directory), NANOCLAW_VOICE_MODEL_NAME,
NANOCLAW_VOICE_LANGUAGE ("" detects), NANOCLAW_VOICE_MAX_SECONDS, NANOCLAW_VOICE_PROMPT
(an initial prompt: the assistant's name, so that a spoken "Andy, ..." is written as such).
"""

import json
import os
import sys

SAMPLE_RATE = 16000


def say(obj: dict, code: int) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()
    sys.exit(code)


def main() -> None:
    path = sys.argv[1] if len(sys.argv) > 1 else "/in/note"
    max_seconds = float(os.environ.get("NANOCLAW_VOICE_MAX_SECONDS", "600"))
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        say({"error": f"the file cannot be read ({exc.strerror})"}, 2)
    if size == 0:
        say({"error": "the file is empty"}, 2)
    from faster_whisper import WhisperModel
    from faster_whisper.audio import decode_audio
    try:
        audio = decode_audio(path, sampling_rate=SAMPLE_RATE)
    except Exception as exc:  # PyAV's errors for what is not audio it can decode
        say({"error": f"it cannot be decoded as audio ({type(exc).__name__})"}, 2)
    duration = len(audio) / SAMPLE_RATE
    if duration <= 0.05:
        say({"error": "it holds no audio"}, 2)
    if duration > max_seconds:
        say({"error": f"it is {duration:.0f} s long, over the limit of {max_seconds:.0f} s"}, 2)
    language = os.environ.get("NANOCLAW_VOICE_LANGUAGE") or None
    model = WhisperModel(os.environ.get("NANOCLAW_VOICE_MODEL", "/opt/model"), device="cpu", compute_type="int8",
                         cpu_threads=int(os.environ.get("NANOCLAW_VOICE_THREADS", "2")), local_files_only=True)
    if not model.model.is_multilingual:
        language = "en"
    segments, info = model.transcribe(audio, language=language, beam_size=5, condition_on_previous_text=False,
                                      initial_prompt=os.environ.get("NANOCLAW_VOICE_PROMPT") or None)
    text = "".join(s.text for s in segments).strip()
    say({"text": text, "language": info.language, "duration": round(duration, 1), "engine": "faster-whisper",
         "model": os.environ.get("NANOCLAW_VOICE_MODEL_NAME", "")}, 0)


if __name__ == "__main__":
    main()
