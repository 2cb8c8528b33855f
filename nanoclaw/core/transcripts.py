"""A voice note's transcript: where it is kept, when a turn waits for it, how the agent sees it.

A voice note (or an audio file) saved in a group's ``inbox/`` is transcribed before the
agent's turn (the queue asks, ``daemons/queue/voice.py``; the runner transcribes in a
container, ``daemons/runner/transcribe.py``). Its state is kept in the message's attachment
description (``Message.media``), under ``transcript``, written by the queue alone:

    {"state": "asked", "at": epoch}                       the runner was asked
    {"state": "done", "text", "language", "duration", "engine", "model", "trigger": bool}
    {"state": "failed", "error": "one line"}             the chat was told, the agent gets the file

No socket client can set it: ``attachments.valid`` refuses any key it does not know.

Everything here is pure (no database, no clock): the queue's ``plan()`` calls it.

HOSTILE INPUT
    ``text`` is what a recogniser made of someone's audio: escaped into the prompt like a chat
    message, never a journal field; ``error`` and ``language`` were checked by the runner.
"""

from __future__ import annotations

import json
import re

from nanoclaw.core.xml_text import attr, clean, escape

AUDIO_KINDS = ("voice note", "audio")
ASKED, DONE, FAILED = "asked", "done", "failed"
FAILED_LINE = "could not transcribe the voice note: "
_LANGUAGE = re.compile(r"[a-z]{2,3}")


def as_dict(media: str | dict | None) -> dict | None:
    if isinstance(media, str):
        try:
            media = json.loads(media)
        except ValueError:
            return None
    return media if isinstance(media, dict) else None


def wanted(media: str | dict | None) -> bool:
    """Whether this attachment is audio that was saved and has no transcript state yet."""
    d = as_dict(media)
    return d is not None and d.get("kind") in AUDIO_KINDS and bool(d.get("file")) and "transcript" not in d


def state(media: str | dict | None) -> dict | None:
    d = as_dict(media)
    t = d.get("transcript") if d is not None else None
    return t if isinstance(t, dict) else None


def waiting_until(media: str | dict | None, sent_at: float, wait: float) -> float | None:
    """Until when a turn must wait for this message's transcript (None: it need not). A note
    that was never asked for (the queue could not ask) waits from when it was sent."""
    if wait <= 0:
        return None
    t = state(media)
    if t is None:
        return sent_at + wait if wanted(media) else None
    if t.get("state") == ASKED:
        return float(t.get("at", sent_at)) + wait
    return None


def wakes(media: str | dict | None) -> bool:
    """Whether the transcript counts as the trigger (it starts with the assistant's name)."""
    t = state(media)
    return t is not None and t.get("state") == DONE and t.get("trigger") is True


def language(value: object) -> str:
    return value if isinstance(value, str) and _LANGUAGE.fullmatch(value) else ""


def element(media: dict) -> str:
    """The transcript as the agent is shown it, after the ``<attachment/>``: labelled as an
    automatic transcript that may contain errors, its text escaped."""
    t = state(media)
    if t is None:
        return ""
    if t.get("state") == DONE:
        attrs = [f"engine={attr(str(t.get('engine', '')))}", f"model={attr(str(t.get('model', '')))}",
                 f"language={attr(language(t.get('language')) or 'unknown')}",
                 f"duration={attr(_seconds(t.get('duration')))}",
                 f"note={attr('automatic transcription of the voice note above; it may contain errors')}"]
        return f"<transcript {' '.join(attrs)}>{escape(clean(str(t.get('text', ''))))}</transcript>"
    if t.get("state") == FAILED:
        return f"<transcript failed={attr(FAILED_LINE + str(t.get('error', '')))}/>"
    return f"<transcript failed={attr(FAILED_LINE + 'it was not ready in time')}/>"


def _seconds(value: object) -> str:
    try:
        return f"{float(value):.1f} s"  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "unknown"
