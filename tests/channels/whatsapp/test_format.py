"""Replies in WhatsApp's markup, and split into messages of a readable length (format.py)."""

from __future__ import annotations

import pytest

from nanoclaw.channels.whatsapp.format import split_message, to_whatsapp


@pytest.mark.parametrize("markdown,whatsapp", [
    ("**bold**", "*bold*"),
    ("*italic* and _italic_", "_italic_ and _italic_"),
    ("__strong__ too", "*strong* too"),
    ("a snake__case__name stays", "a snake__case__name stays"),
    ("~~gone~~", "~gone~"),
    ("**bold** then *it*", "*bold* then _it_"),
    ("# Title", "*Title*"),
    ("### **Already bold** heading", "*Already bold heading*"),
    ("[docs](https://example.org/x)", "docs (https://example.org/x)"),
    ("[https://a.b](https://a.b)", "https://a.b"),
    ("* one\n* two", "• one\n• two"),
    ("- one", "- one"),
    ("2*3*4 = 24", "2*3*4 = 24"),  # not emphasis: no spaces around
    ("`**kept**` but **this**", "`**kept**` but *this*"),
    ("```\n**kept** *kept* # kept\n[a](b)\n```", "```\n**kept** *kept* # kept\n[a](b)\n```"),
    ("before **b**\n```py\nx = a**2\n```\nafter *i*", "before *b*\n```py\nx = a**2\n```\nafter _i_"),
    ("plain text, nothing to do.", "plain text, nothing to do."),
])
def test_markdown_to_whatsapp(markdown, whatsapp):
    assert to_whatsapp(markdown) == whatsapp


@pytest.mark.parametrize("markdown,whatsapp", [
    ("***both***", "_*both*_"),  # the regex converter made this *_both*_
    ("**bold [link](http://e.org) inside**", "*bold link (http://e.org) inside*"),
    ("* a\n  * nested\n* b", "• a\n  • nested\n• b"),
    ("1. first\n2. second", "1. first\n2. second"),
    ("> quoted *text*", "> quoted _text_"),
    ("`a*b*c` and *d*", "`a*b*c` and _d_"),
])
def test_markdown_structure_is_parsed_not_pattern_matched(markdown, whatsapp):
    assert to_whatsapp(markdown) == whatsapp


def test_short_text_is_one_chunk():
    assert split_message("hello", 4000) == ["hello"]
    assert split_message("   ", 4000) == []


def test_chunks_split_at_paragraphs_under_the_limit_in_order():
    paras = [f"paragraph {i} " + "word " * 60 for i in range(40)]
    chunks = split_message("\n\n".join(paras), 1000)
    assert len(chunks) > 1 and all(len(c) <= 1000 for c in chunks)
    # nothing lost, nothing reordered, and every chunk ends at a paragraph boundary
    assert [p.strip() for c in chunks for p in c.split("\n\n")] == [p.strip() for p in paras]


def test_an_overlong_paragraph_splits_at_lines_then_words():
    line = "x" * 30
    text = "\n".join([line] * 100)  # one paragraph, 3099 chars
    chunks = split_message(text, 500)
    assert all(len(c) <= 500 for c in chunks)
    assert "\n".join(chunks).split("\n") == [line] * 100
    words = " ".join(["word"] * 400)  # one line
    chunks = split_message(words, 300)
    assert all(len(c) <= 300 for c in chunks) and " ".join(chunks).split() == ["word"] * 400
    hard = "y" * 1000  # no boundary at all: a hard cut, still in order
    assert "".join(split_message(hard, 300)) == hard


def test_code_blocks_are_not_split_when_avoidable():
    code = "```python\n" + "\n".join(f"line_{i} = {i}" for i in range(30)) + "\n```"
    text = "intro " * 100 + "\n\n" + code + "\n\noutro"
    chunks = split_message(text, 700)
    assert any(code in c for c in chunks) and all(len(c) <= 700 for c in chunks)  # whole
    assert chunks[-1].endswith("outro") and chunks[0].startswith("intro")
    # a blank line inside a code block is not a paragraph boundary
    spaced = "```\na\n\nb\n```"
    assert split_message("x " * 20 + "\n\n" + spaced, 45)[-1] == spaced


def test_a_code_block_longer_than_the_limit_is_fenced_again_per_piece():
    body = [f"value_{i} = {i} * 2" for i in range(200)]
    chunks = split_message("```python\n" + "\n".join(body) + "\n```", 500)
    assert len(chunks) > 1
    for c in chunks:
        assert len(c) <= 500 and c.startswith("```python\n") and c.endswith("\n```")
    assert [line for c in chunks for line in c.split("\n")[1:-1]] == body
