"""voice: the voice API (``[voice] engine = "api"``), the one place its credential is used.

SUMMARY
    The runner asks ``transcribe`` on the proxy's own socket (``<runtime>/proxy.sock``, which
    no container mounts) for one message, after its container decoded the note and checked
    its length. The proxy opens the runner's copy of that note itself (``<state>/voice/
    <message>/note``: walked without following links, a regular file, at most ``[whatsapp]
    max_media_bytes``) and POSTs it as multipart to ``api_url``'s
    ``/v1/audio/transcriptions``: the file, ``[voice] api_model``, the language when one is
    set and the assistant's name as the prompt (as the local engine is told it), with
    ``Authorization: Bearer`` the voice credential. No redirect is followed; the answer is
    read up to a cap under ``[voice] timeout``; only its ``text`` is taken, cleaned of control
    characters and cut at ``max_transcript_bytes``.

SYNOPSIS
    VoiceApi(daemon).load() -> '' or why none;  await VoiceApi.transcribe(request) -> reply

HOSTILE INPUT
    The request names a message number and a group folder, both checked; no path is taken
    from it. The API's answer (whatever a remote server sends): read up to MAX_ANSWER bytes,
    parsed once; its error words never reach the chat (a 401 may quote part of the key), only
    its status.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import aiohttp

from nanoclaw.core.config import FOLDER_RE
from nanoclaw.core.credentials import VOICE_CREDENTIAL_NAME, Credential, CredentialError, credential_path, \
    load_voice_credential
from nanoclaw.core.log import log_fields
from nanoclaw.core.prompt import _clean as clean
from nanoclaw.core.protocol import MAX_LINE
from nanoclaw.core.safefs import Dir
from nanoclaw.core.spoken_trigger import initial_prompt
from nanoclaw.core.voice_config import WORK_DIR, api_endpoint

if TYPE_CHECKING:
    from nanoclaw.daemons.proxy import ProxyDaemon

MAX_ANSWER = 1 << 20  # the API's JSON answer, at most (a transcript is a few KB)
# The reply to the runner is one socket line: the text, JSON-escaped, must fit in it.
LINE_TEXT = MAX_LINE // 2 - 4096
AUDIO_TYPES = {"ogg": "audio/ogg", "oga": "audio/ogg", "opus": "audio/ogg", "mp3": "audio/mpeg",
               "mpeg": "audio/mpeg", "mpga": "audio/mpeg", "m4a": "audio/mp4", "mp4": "audio/mp4",
               "wav": "audio/wav", "webm": "audio/webm", "flac": "audio/flac"}


class VoiceApi:
    def __init__(self, daemon: ProxyDaemon) -> None:
        self.d = daemon
        self.credential: Credential | None = None
        self.session: aiohttp.ClientSession | None = None
        self.sent = 0

    @property
    def on(self) -> bool:
        return self.d.cfg.voice.enabled and self.d.cfg.voice.engine == "api"

    def load(self) -> str:
        """(Re-)read the voice credential; '' or why there is none (only said when it is used)."""
        try:
            self.credential = load_voice_credential(self.d.cfg)
        except CredentialError as exc:
            self.credential = None
            if self.on:
                self.d.log.error("%s", exc)
            return str(exc)
        self.d.log.info("voice API credential loaded from %s", credential_path(self.d.cfg, VOICE_CREDENTIAL_NAME))
        return ""

    def status(self) -> str:
        if not self.on:
            return ""
        return f", voice API: {'credential set' if self.credential else 'NO VOICE CREDENTIAL'}, {self.sent} sent"

    async def transcribe(self, req: dict) -> dict:
        cfg = self.d.cfg
        message, group, ext = req.get("message"), req.get("group"), req.get("ext", "ogg")
        if type(message) is not int or message <= 0 or not isinstance(group, str) or not FOLDER_RE.fullmatch(group):
            return {"ok": False, "error": "a transcribe request names a message number and a group folder"}
        if not self.on:
            return {"ok": False, "error": 'the voice API is not the engine ([voice] engine = "api")'}
        if self.credential is None and self.load():
            return {"ok": False, "error": "the proxy holds no voice API credential (nanoclaw credential set --voice)"}
        assert self.credential is not None
        try:
            audio = await asyncio.to_thread(_read_note, cfg.state_dir, message, cfg.whatsapp.max_media_bytes)
        except (OSError, ValueError) as exc:
            return {"ok": False, "error": f"the note cannot be read: {getattr(exc, 'strerror', None) or exc}"}
        ext = ext if isinstance(ext, str) and ext in AUDIO_TYPES else "ogg"
        url = api_endpoint(cfg.voice)  # checked when the configuration was read; rebuilt from its parts
        host = urlsplit(url).netloc
        form = aiohttp.FormData()
        form.add_field("model", cfg.voice.api_model)
        form.add_field("response_format", "json")
        if cfg.voice.language:
            form.add_field("language", cfg.voice.language)
        if cfg.voice.spoken_trigger:
            form.add_field("prompt", initial_prompt(cfg.assistant_name))
        form.add_field("file", audio, filename=f"note.{ext}", content_type=AUDIO_TYPES[ext])
        fields = log_fields(group=group, msg=str(message), host=host)
        t0 = time.monotonic()
        timeout = cfg.voice.timeout
        try:
            async with self._session().post(url, data=form, headers=dict(self.credential.headers()),
                                            allow_redirects=False,
                                            timeout=aiohttp.ClientTimeout(total=timeout)) as resp:
                status, raw = resp.status, await _read_capped(resp, MAX_ANSWER)
        except asyncio.TimeoutError:
            self.d.log.warning("voice API did not answer within %.0f s", timeout, extra=fields)
            return {"ok": False, "error": f"the voice API did not answer within {timeout:.0f} s"}
        except (aiohttp.ClientError, OSError) as exc:
            self.d.log.warning("voice API not reached: %s", type(exc).__name__, extra=fields)
            return {"ok": False, "error": f"the voice API at {host} cannot be reached ({type(exc).__name__})"}
        except ValueError as exc:  # over the cap
            self.d.log.warning("voice API answer refused: %s", exc, extra=fields)
            return {"ok": False, "error": f"the voice API's answer was refused: {exc}"}
        self.sent += 1
        self.d.log.info("voice note sent to the voice API: %d bytes, answer %d (%d bytes) in %.2fs", len(audio),
                        status, len(raw), time.monotonic() - t0, extra=fields)
        if status != 200:
            hint = " (check the voice credential: nanoclaw credential set --voice)" if status in (401, 403) else ""
            return {"ok": False, "error": f"the voice API answered {status}{hint}"}
        try:
            said = json.loads(raw)
        except ValueError:
            said = None
        text = said.get("text") if isinstance(said, dict) else None
        if not isinstance(text, str):
            return {"ok": False, "error": "the voice API's answer holds no text"}
        data = clean(text).strip().encode()
        cap = min(cfg.voice.max_transcript_bytes, LINE_TEXT)
        return {"ok": True, "text": data[:cap].decode(errors="ignore"), "cut": len(data) > cap}

    def _session(self) -> aiohttp.ClientSession:
        if self.session is None:  # no cookies, no proxy from the environment, nothing the API set kept
            self.session = aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar(), trust_env=False)
        return self.session

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()


def _read_note(state_dir, message: int, limit: int) -> bytes:
    """The runner's copy of one note: walked from the state directory without following a
    link, a regular file only, at most ``limit`` bytes."""
    with Dir.open(state_dir, f"{WORK_DIR}/{message}") as d:
        fd = os.open("note", os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=d.fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError("not a regular file")
        if not 0 < st.st_size <= limit:
            raise ValueError(f"it is {st.st_size} bytes (at most {limit})")
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read(limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise ValueError(f"it grew over {limit} bytes")
    return data


async def _read_capped(resp: aiohttp.ClientResponse, cap: int) -> bytes:
    buf = bytearray()
    while chunk := await resp.content.read(65536):
        buf += chunk
        if len(buf) > cap:
            raise ValueError(f"over {cap} bytes")
    return bytes(buf)
