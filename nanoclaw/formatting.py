"""Outbound text as the chat should see it."""

from __future__ import annotations

import re

_INTERNAL = re.compile(r"<internal>.*?(?:</internal>|$)", re.DOTALL | re.IGNORECASE)

def strip_internal(text: str) -> str:
    """Remove the agent's ``<internal>…</internal>`` notes (an unclosed one runs to the end)."""
    return _INTERNAL.sub("", text).strip()


# -- WhatsApp ------------------------------------------------------------------
# WhatsApp has its own light markup (*bold*, _italic_, ~strike~, ```mono```) and
# no headings or links. Agents write Markdown, so replies are translated, except
# inside code, where every character is meant literally.

WHATSAPP_LIMIT = 4000  # WhatsApp allows ~65k, but long bubbles are unreadable on a phone

_FENCE = re.compile(r"```.*?(?:```|\Z)", re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_BOLD = "\x00"  # placeholder: bold must not be re-read as italic
_MD_RULES: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^[ \t]*#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", re.MULTILINE),
     lambda m: _BOLD + m.group(1).replace("**", "").replace("__", "").strip() + _BOLD),
    (re.compile(r"^([ \t]*)[*+][ \t]+", re.MULTILINE), r"\1• "),  # bullets, before *italic*
    (re.compile(r"\[([^\]\n]+)\]\(([^)\s]+)\)"),
     lambda m: m.group(2) if m.group(1) == m.group(2) else f"{m.group(1)} ({m.group(2)})"),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*", re.DOTALL), _BOLD + r"\1" + _BOLD),
    # Markdown's __strong__ is bold too (not italic); inside a word (snake__case) it is left alone
    (re.compile(r"(?<!\w)__(?=\S)(.+?)(?<=\S)__(?!\w)", re.DOTALL), _BOLD + r"\1" + _BOLD),
    (re.compile(r"(?<![\w*])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![\w*])"), r"_\1_"),
    (re.compile(r"~~(?=\S)(.+?)(?<=\S)~~", re.DOTALL), r"~\1~"),
]


def _markdown_prose(text: str) -> str:
    """Translate Markdown outside code: the rules apply in order, bold last."""
    parts = []
    last = 0
    for m in _INLINE_CODE.finditer(text):  # inline code is kept as it is
        parts.append(_apply_rules(text[last:m.start()]))
        parts.append(m.group(0))
        last = m.end()
    parts.append(_apply_rules(text[last:]))
    return "".join(parts)


def _apply_rules(text: str) -> str:
    for pattern, repl in _MD_RULES:
        text = pattern.sub(repl, text)
    return text.replace(_BOLD, "*")


def to_whatsapp(text: str) -> str:
    """Markdown to WhatsApp markup; fenced code blocks and `inline code` untouched."""
    out = []
    last = 0
    for m in _FENCE.finditer(text):
        out.append(_markdown_prose(text[last:m.start()]))
        out.append(m.group(0))
        last = m.end()
    out.append(_markdown_prose(text[last:]))
    return "".join(out)


def _blocks(text: str) -> list[str]:
    """Paragraphs (split at blank lines), with each fenced code block kept whole."""
    blocks: list[str] = []
    current: list[str] = []
    in_code = False
    for line in text.split("\n"):
        if line.lstrip().startswith("```"):
            if not in_code and current:  # a fence starts its own block
                blocks.append("\n".join(current))
                current = []
            current.append(line)
            # a line holding both fences (```x```) opens and closes at once
            if line.strip().count("```") % 2 == 1:
                in_code = not in_code
            if not in_code:
                blocks.append("\n".join(current))
                current = []
            continue
        if not in_code and not line.strip():
            if current:
                blocks.append("\n".join(current))
                current = []
            continue
        current.append(line)
    if current:
        blocks.append("\n".join(current))
    return blocks


def _cut(text: str, limit: int, seps: tuple[str, ...] = ("\n", " ")) -> list[str]:
    """Split one over-long piece at the last separator that fits (hard cut if none)."""
    pieces = []
    while len(text) > limit:
        at = -1
        for sep in seps:
            at = text.rfind(sep, 0, limit + 1)
            if at > 0:
                break
        if at <= 0:
            pieces.append(text[:limit])
            text = text[limit:]
        else:
            pieces.append(text[:at].rstrip())
            text = text[at + 1:]
    if text.strip():
        pieces.append(text)
    return pieces


def _split_block(block: str, limit: int) -> list[str]:
    """An over-long block: prose at line/word boundaries; code re-fenced per piece."""
    lines = block.split("\n")
    if lines[0].lstrip().startswith("```") and len(lines) > 1:
        opener = lines[0].strip()
        closed = lines[-1].strip() == "```"
        body = "\n".join(lines[1:-1] if closed else lines[1:])
        room = limit - len(opener) - len("\n\n```")
        if room < 20:  # absurdly small limit: treat as prose
            return _cut(block, limit)
        return [f"{opener}\n{piece}\n```" for piece in _cut(body, room, ("\n",))]
    return _cut(block, limit)


def split_message(text: str, limit: int = WHATSAPP_LIMIT) -> list[str]:
    """Split a reply into chunks of at most ``limit`` characters, in order.

    Chunks end at paragraph boundaries where possible, else at line then word
    boundaries; a code block is only split when it alone exceeds the limit,
    and then each piece is fenced again so it still renders as code.
    """
    if limit < 1:
        raise ValueError("limit must be positive")
    text = text.strip()
    if len(text) <= limit:
        return [text] if text else []
    chunks: list[str] = []
    current = ""
    for block in _blocks(text):
        pieces = [block] if len(block) <= limit else _split_block(block, limit)
        for piece in pieces:
            if current and len(current) + 2 + len(piece) <= limit:
                current += "\n\n" + piece
            else:
                if current:
                    chunks.append(current)
                current = piece
    if current:
        chunks.append(current)
    return chunks
