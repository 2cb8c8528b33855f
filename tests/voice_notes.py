"""What the voice tests share: real voice notes (espeak-ng speaks, opusenc makes Ogg/Opus as
WhatsApp sends it) and the transcription image, built once per session as `nanoclaw image
build` builds it (offline, from the debootstrap base and a cached wheelhouse)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BASE_IMAGE, WHEELS, need_podman


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


@pytest.fixture(scope="session")
def transcribe_image(container_options) -> str:
    """The transcription image, built by voice_image.build (cached by its sources' digest)."""
    need_podman()
    from nanoclaw.admin import voice_image
    from nanoclaw.core import config as config_mod
    cfg = config_mod.Config(container=config_mod.ContainerConfig(
        runtime=container_options["runtime"], ulimits=tuple(container_options["ulimits"]), base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-transcribe:test-{voice_image.source_digest(cfg)}"
    if not voice_image.current(cfg, tag):
        voice_image.build(cfg, tag=tag, wheels=WHEELS.parent / "wheels-voice",
                          progress=lambda line: print("image:", line), workdir=WHEELS.parent)
    return tag
