"""``[voice]``: voice notes transcribed on the server before the agent's turn.

Kept apart from ``config.py`` (which only holds the field; config_file.py reads the table
into this struct and calls :func:`check`), so the settings of one feature are in one place.
"""

from __future__ import annotations

import msgspec


class VoiceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True  # false: voice notes reach the agent as files, not transcribed
    image: str = "localhost/nanoclaw-transcribe:0.1.0"
    # "" : the bundled Whisper tiny.en (English only). Else a directory on the host holding a
    # CTranslate2 Whisper model (model.bin, config.json, tokenizer.json, vocabulary*): copied
    # into the image at `nanoclaw image build`, never mounted.
    model_dir: str = ""
    model_name: str = ""  # how the prompt names the model; "" : the directory's name
    language: str = ""  # e.g. "de"; "" : detected (an English-only model: "en")
    max_seconds: float = 600.0  # longer notes are not transcribed (the chat is told)
    timeout: float = 180.0  # one note's container is killed after this
    memory: str = "1g"  # the container's memory limit ("" where the host cannot limit)
    max_transcript_bytes: int = 16384  # what the agent is shown of a transcript, at most
    spoken_trigger: bool = True  # a transcript starting with the assistant's name wakes a trigger-only group
    max_running: int = 1  # transcriptions at once (each takes the CPU it can get)

    @property
    def wait(self) -> float:
        """How long the queue holds a voice note's turn for its transcript: the note's own
        time limit and time for its container to be made and started."""
        return self.timeout + 60.0


def check(cfg: VoiceConfig) -> None:
    """The ranges of ``[voice]``; raises ValueError with one line saying what to fix."""
    if not 0 < cfg.max_seconds <= 4 * 3600 or not 0 < cfg.timeout <= 3600:
        raise ValueError("[voice] max_seconds must be in (0, 14400] and timeout in (0, 3600] seconds")
    if not 256 <= cfg.max_transcript_bytes <= 262144 or cfg.max_running < 1:
        raise ValueError("[voice] max_transcript_bytes must be in [256, 262144], max_running at least 1")
