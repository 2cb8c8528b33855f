"""Text made safe inside the agent's XML-ish prompt: below core/prompt.py and
core/transcripts.py, which both wrap hostile text (chat messages, pre-check output,
transcripts) in elements.

SYNOPSIS
    escape(text) -> str   ``&``, ``<``, ``>`` as entities
    clean(text) -> str    control characters (but tab, newline, carriage return) removed
    attr(value) -> str    an always double-quoted, fully escaped attribute value
"""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_XML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_XML_ATTR = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&apos;"})


def escape(text: str) -> str:
    """``&``, ``<`` and ``>`` as XML entities (what ``xml.sax.saxutils.escape`` does, without
    importing urllib and the email package into every daemon that builds a prompt)."""
    return text.translate(_XML)


def clean(text: str) -> str:
    return _CONTROL.sub("", text)


def attr(value: str) -> str:
    """An always double-quoted, fully escaped attribute value."""
    return '"' + clean(value).translate(_XML_ATTR) + '"'
