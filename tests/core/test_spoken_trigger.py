"""The spoken trigger's rule (core/spoken_trigger.py), on transcripts recorded from the bundled
tiny.en model (faster-whisper 1.2.1, int8, 2 cores) of espeak-ng voice notes, and on the
spellings recognisers use. Each row: what was said, what came back, whether it wakes "Andy"."""

import pytest

from nanoclaw.core.spoken_trigger import initial_prompt, spellings, starts_with_name

# (what was spoken, the transcript, wakes?): recorded 2026-12-03 with the initial prompt the
# runner gives ("Andy is the assistant's name."), then without it (the issue's own findings).
RECORDED = [
    ("Andy, remind me to buy milk and bread tomorrow morning.",
     " And it reminds me to my milk and read tomorrow morning.", False),  # missed: heard as "And it"
    ("Andy. What is the weather like in Lisbon today?", " Andy, what is the weather like enlistment today?", True),
    ("Andy, what time is it in Tokyo?", " Andy, what time is it in Tokyo?", True),
    ("Hey Andy, can you summarise the news?", " Hey Andy, can you summarize the news?", True),
    ("Andy please check my calendar for Friday.", " And please check my calendar for Friday.", False),  # missed
    ("And then we went to the beach and had lunch.", " And then we went to the beach and had lunch.", False),
    ("Remind me to call the plumber at five.", " Remind me to call the plumber at five.", False),
    ("What is the weather like in Lisbon today?", " What is the weather like in Lisbon today?", False),
    ("Andrew is coming to dinner tonight.", " Andy is coming to dinner tonight.", True),  # a false trigger
    ("Handy tools are in the garage.", " Handy tool are in the garage.", False),
    ("Andy, add eggs to the shopping list.", " Andy, and eggs to the shopping list.", True),
    ("Andy what is seven times eight?", " Andy, what is seven times eight?", True),
    # without the initial prompt (the transcripts and ours): the name is lost, nothing wakes
    ("Andy, remind me to buy milk and bread tomorrow morning.",
     " and it reminds me to my milk and read tomorrow morning.", False),
    ("Andy. What is the weather like in Lisbon today?", " And what is the weather like in Lisbon today?", False),
    ("Andy, add eggs to the shopping list.", " and add eggs to the shopping list.", False),
]

SPELLINGS = [
    ("Andy, what's up", True), ("Andy. Hi", True), ("andy do this", True), ("ANDY!", True),
    ("Andi, tell me", True), ("Andie, tell me", True), ("Andey tell me", True),
    ("Hi Andy, how are you", True), ("Okay Andy, go", True), ("Hey, Andy, go", True),
    ("Andy's list: eggs", True),
    ("And what now", False), ("and", False), ("Any news?", False), ("Handy work", False),
    ("Andrew, hi", False), ("Sandy, hi", False), ("Well Andy, hi", False), ("Hey hey Andy", False),
    ("", False), ("   ...  ", False), ("1 2 3 Andy", False),
]


@pytest.mark.parametrize("spoken,heard,wakes", RECORDED)
def test_recorded_transcripts(spoken, heard, wakes):
    assert starts_with_name(heard, ["@Andy", "Andy"]) is wakes, (spoken, heard)


@pytest.mark.parametrize("heard,wakes", SPELLINGS)
def test_spellings(heard, wakes):
    assert starts_with_name(heard, ["Andy"]) is wakes


def test_longer_names_allow_one_letter_off_and_short_common_words_never_pass():
    assert starts_with_name("Clawdia, help", ["Claudia"]) and starts_with_name("Claudio, help", ["Claudia"])
    assert not starts_with_name("Clara, help", ["Claudia"])
    assert "and" not in spellings("Andy") and "andi" in spellings("@Andy")
    assert not starts_with_name("An apple", ["Ann"])  # "an" is a word, not the name
    assert initial_prompt("Andy") == "Andy is the assistant's name."


def test_the_measured_rate():
    """What the README states: 5 of 7 notes naming Andy woke it, 1 of 5 others did."""
    with_prompt = RECORDED[:12]
    named = [r for r in with_prompt if r[0].startswith(("Andy", "Hey Andy"))]
    others = [r for r in with_prompt if r not in named]
    assert (sum(starts_with_name(r[1], ["Andy"]) for r in named), len(named)) == (5, 7)
    assert (sum(starts_with_name(r[1], ["Andy"]) for r in others), len(others)) == (1, 5)
