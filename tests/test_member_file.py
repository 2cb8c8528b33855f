"""Member files: one parser (nanoclaw/core/member_file.py) for the host and every agent container.

The host reads a group's members with ``team.members``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from nanoclaw.core import config as config_mod
from nanoclaw.core import member_file, team
from nanoclaw.core.member_file import Member, TeamError, parse, render


def test_quotes_around_a_whole_value_are_taken_off_and_others_kept():
    m = parse("r", "---\ndescription: \"finds: flights, trains\"\nmodel: 'claude-haiku'\n"
                   "tools: \"[Read, WebFetch]\"\n---\nBe brief.\n")
    assert (m.description, m.model, m.tools) == ("finds: flights, trains", "claude-haiku", ("Read", "WebFetch"))
    # a quote that does not close the value is part of it (it used to lose the last one)
    assert parse("r", "---\ndescription: the \"best\" one\n---\nx").description == 'the "best" one'
    assert parse("r", "---\ndescription: the \"best\"\n---\nx").description == 'the "best"'
    assert parse("r", "---\ndescription: \"mixed'\n---\nx").description == "\"mixed'"
    assert parse("r", "---\ndescription: \"\"\"\"\n---\nx").description == '""'


def test_a_colon_in_a_value_is_part_of_it():
    m = parse("r", "---\ndescription: meets at 9:30, see https://example.org/a:b\nmodel: vendor:model\n---\nx")
    assert (m.description, m.model) == ("meets at 9:30, see https://example.org/a:b", "vendor:model")


def test_empty_values_blank_lines_and_comments():
    m = parse("r", "---\n\n# who this is\ndescription: d\nmodel:\ntools:   \n---\nx")
    assert (m.description, m.model, m.tools) == ("d", "", ())
    with pytest.raises(TeamError, match="needs a description"):
        parse("r", "---\ndescription:\n---\nx")
    with pytest.raises(TeamError, match="needs a description"):
        parse("r", "---\ndescription: ''\n---\nx")


@pytest.mark.parametrize("text, why", [
    ("---\ndescription: d\nno colon here\n---\nx", "is not 'key: value'"),
    ("---\ndescription: d\n---\n  \n", "needs instructions"),
    ("---\ndescription: d\nx", "not closed"),
    ("---\ndescription: d\ncolour: blue\n---\nx", "unknown front matter"),
    ("---\nname: other\ndescription: d\n---\nx", "names it 'other'"),
    ("---\ndescription: d\ntools: Read; rm -rf /\n---\nx", "tools must be"),
])
def test_bad_files_are_refused_with_the_reason(text, why):
    with pytest.raises(TeamError, match=why):
        parse("r", text)


@pytest.mark.parametrize("member", [
    Member("r", 'the "best"', "Be brief."), Member("r", '"quoted"', "x", model="'m'"),
    Member("r", "a: b", "x", tools=("Read", "Bash")), Member("r", "'", "x"),
])
def test_what_is_rendered_parses_back_the_same(member):
    assert parse("r", render(member)) == member


def test_a_value_that_would_leave_its_line_is_refused():
    """A newline in a model name (the lead's create_agent sends one unchecked) would write a
    front matter line of its own, e.g. the member's tools."""
    with pytest.raises(TeamError, match="model must be one line"):
        render(Member("r", "d", "x", model="claude-haiku\ntools: Read"))
    with pytest.raises(TeamError, match="description must be one line"):
        render(Member("r", "d\rmodel: x", "x"))


def test_member_names_have_the_shape_of_group_folders():
    assert member_file.NAME.pattern == config_mod.FOLDER_RE.pattern
    for bad in ("lead", "All", "a b", "-x", "helper\n", "x" * 65, ""):
        with pytest.raises(TeamError, match="invalid member name"):
            member_file.validate_name(bad)


def test_the_module_imports_nothing_of_nanoclaws():
    """It is copied into the agent image as a top-level module, where nanoclaw is not installed."""
    source = Path(member_file.__file__).read_text()
    assert "nanoclaw." not in "".join(line for line in source.splitlines() if line.startswith(("import", "from")))
