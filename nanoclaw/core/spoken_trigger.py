"""Whether a voice note's transcript starts with the assistant's name: the spoken trigger.

A typed trigger is exact ("@Andy ..."). A spoken one goes through a recogniser, which writes
a name as it hears it: "Andy," "Andy." "andy", "Andi", often after a greeting ("Hey Andy,").
The rule, a pure function tested on recorded transcripts (``tests/core/test_spoken_trigger.py``):

* the first word, after at most one greeting (hey, hi, hello, ok, okay, oh), must be the name
  or one of its spellings: the name itself, its ending y/i/ie/ey/ee swapped ("Andi", "Andie"),
  and for names of five letters or more one letter changed, added or dropped;
* common words are never the name: "And what is ..." is how the small English model writes
  a synthetic "Andy. What is ...", and also how many sentences start, so it never triggers.

Measured (README, Voice notes): with the bundled tiny.en model and the initial prompt
"<Name> is the assistant's name." the transcriber is given (``runner/transcribe.py``), 5 of 7
espeak-ng notes starting with "Andy" triggered and 1 of 5 without it did ("Andrew is coming"
heard as "Andy is coming").
"""

from __future__ import annotations

import re

GREETINGS = frozenset({"hey", "hi", "hello", "ok", "okay", "oh"})
_WORD = re.compile(r"[^\s,.!?;:\"()\-]+")  # a word as spoken: punctuation around it is the recogniser's
_ENDINGS = ("y", "ie", "i", "ey", "ee")
# Words a recogniser writes for a name that are ordinary words: never taken for it.
COMMON = frozenset({"and", "an", "any", "end", "in", "on", "the", "a", "i"})


def initial_prompt(name: str) -> str:
    """What the transcriber is told first, so the name is spelled as the owner spells it."""
    return f"{name} is the assistant's name."


def spellings(name: str) -> set[str]:
    """The ways a recogniser may write ``name`` that count as it (lower case)."""
    n = name.strip().lstrip("@").lower()
    out = {n}
    for ending in _ENDINGS:
        if n.endswith(ending) and len(n) > len(ending) + 1:
            stem = n[: -len(ending)]
            out |= {stem + e for e in _ENDINGS}
    return out - COMMON


def _near(word: str, name: str) -> bool:
    """One letter changed, added or dropped (for longer names only)."""
    if len(name) < 5 or abs(len(word) - len(name)) > 1:
        return False
    if len(word) == len(name):
        return sum(a != b for a, b in zip(word, name)) == 1
    short, long_ = sorted((word, name), key=len)
    return any(long_[:i] + long_[i + 1:] == short for i in range(len(long_)))


def starts_with_name(transcript: str, names: list[str] | tuple[str, ...]) -> bool:
    """True when ``transcript`` starts with one of ``names`` (after at most one greeting)."""
    words = [w.lower() for w in _WORD.findall(transcript[:200])]
    if words and words[0] in GREETINGS:
        words = words[1:]
    if not words or words[0] in COMMON:
        return False
    first = words[0].removesuffix("'s").removesuffix("’s")
    for name in names:
        n = name.strip().lstrip("@").lower()
        if n and (first in spellings(n) or _near(first, n)):
            return True
    return False
