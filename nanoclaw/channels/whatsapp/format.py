"""Replies as WhatsApp shows them: its markup, and messages of a readable length.

WhatsApp has its own light markup (*bold*, _italic_, ~strike~, ```mono```) and
no headings or links. Agents write Markdown, so replies are translated, except
inside code, where every character is meant literally. The length of one
message is ``[whatsapp] max_message_chars`` (WhatsApp allows ~65k, but long
bubbles are unreadable on a phone).
"""

from __future__ import annotations

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

_MD = MarkdownIt("commonmark", {"html": True}).enable("strikethrough")


def to_whatsapp(text: str) -> str:
    """Markdown to WhatsApp markup, by walking markdown-it's syntax tree.

    Bold ``*x*``, italic ``_x_`` (nested as written), strike ``~x~``, code
    kept in backticks, headings as bold lines, links as ``text (url)``,
    quotes as ``> ``. Lists keep a dash; a ``*`` or ``+`` bullet becomes
    ``•``, since a line-leading star reads as bold. The blank lines between
    blocks are kept as written. Intraword ``*`` emphasis (``2*3*4``) is left
    literal: in a chat it is nearly always arithmetic.
    """
    root = SyntaxTreeNode(_MD.parse(text))
    return _join(root.children, "").rstrip("\n")


def _join(nodes: list[SyntaxTreeNode], indent: str) -> str:
    """Render blocks, separated by as many blank lines as the source had between them."""
    out, last_end = [], None
    for node in nodes:
        rendered = _block(node, indent)
        if out:
            gap = node.map[0] - last_end if node.map and last_end is not None else 1
            out.append("\n" * (1 + max(0, gap)))
        out.append(rendered)
        last_end = node.map[1] if node.map else last_end
    return "".join(out)


def _block(node: SyntaxTreeNode, indent: str) -> str:
    kind = node.type
    if kind == "paragraph":
        return _inline(node.children[0]) if node.children else ""
    if kind == "heading":
        return "*" + _inline(node.children[0], plain=True).strip() + "*"
    if kind in ("fence", "code_block"):
        body = node.content if node.content.endswith("\n") else node.content + "\n"
        return f"```{node.info.strip() if kind == 'fence' else ''}\n{body}```"
    if kind in ("bullet_list", "ordered_list"):
        items = []
        for i, item in enumerate(node.children):
            if kind == "ordered_list":
                marker = f"{item.info or i + int(node.attrs.get('start', 1))}{item.markup} "
            else:
                marker = "- " if item.markup == "-" else "• "
            body = _join(item.children, "")
            lines = body.split("\n")
            items.append("\n".join([indent + marker + lines[0]]
                                   + [indent + " " * len(marker) + line if line else "" for line in lines[1:]]))
        return "\n".join(items)
    if kind == "blockquote":
        return "\n".join("> " + line if line else ">" for line in _join(node.children, "").split("\n"))
    if kind == "hr":
        return "———"
    if kind == "html_block":
        return node.content.rstrip("\n")
    return node.content.rstrip("\n") if node.content else _join(node.children, indent)


def _inline(node: SyntaxTreeNode, plain: bool = False) -> str:
    """An inline run; ``plain`` drops emphasis markers (a heading is bold as a whole)."""
    parts: list[str] = []
    children = node.children
    for i, child in enumerate(children):
        kind = child.type
        if kind == "text":
            parts.append(child.content)
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "code_inline":
            parts.append(f"`{child.content}`")
        elif kind in ("strong", "em", "s"):
            inner = _inline(child, plain)
            before = children[i - 1].content[-1:] if i and children[i - 1].type == "text" else ""
            after = children[i + 1].content[:1] if i + 1 < len(children) and children[i + 1].type == "text" else ""
            if child.markup.startswith("*") and before.isalnum() and after.isalnum():
                parts.append(f"{child.markup}{inner}{child.markup}")  # 2*3*4: arithmetic, not emphasis
            elif plain:
                parts.append(inner)
            else:
                mark = {"strong": "*", "em": "_", "s": "~"}[kind]
                parts.append(f"{mark}{inner}{mark}")
        elif kind == "link":
            label, href = _inline(child, plain), str(child.attrs.get("href", ""))
            parts.append(href if label in (href, href.removeprefix("mailto:")) else f"{label} ({href})")
        elif kind == "image":
            alt, src = _inline(child, True) or child.content, str(child.attrs.get("src", ""))
            parts.append(f"{alt} ({src})" if alt else src)
        else:  # html_inline and anything else: as written
            parts.append(child.content or _inline(child, plain))
    return "".join(parts)


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


def split_message(text: str, limit: int) -> list[str]:
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
