"""What the voice tests share: real voice notes (espeak-ng speaks, opusenc makes Ogg/Opus as
WhatsApp sends it). The transcription image is conftest's ``transcribe_image`` fixture."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def need_tools() -> None:
    missing = [t for t in ("espeak-ng", "opusenc") if shutil.which(t) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed (apt install espeak-ng opus-tools)"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


def make_note(dest: Path, phrase: str, *, repeat: int = 1) -> Path:
    """A voice note saying ``phrase`` (``repeat`` times), as Ogg/Opus."""
    need_tools()
    wav = dest.with_suffix(".wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), " ".join([phrase] * repeat)],
                   check=True, capture_output=True)
    subprocess.run(["opusenc", "--quiet", str(wav), str(dest)], check=True, capture_output=True)
    wav.unlink()
    return dest
