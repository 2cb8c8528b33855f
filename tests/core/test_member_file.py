"""Member files: one parser (nanoclaw/core/member_file.py) for the host and every agent container.

The host reads a group's members with ``team.members``; the agent runner in the
real image reads the same folder with ``container/team.py``. The last test puts
one folder of awkward files (quotes, colons, empty values, bad lines, links) in
front of both and checks they accept the same members with the same values.
"""

from __future__ import annotations

import json
import os
import subprocess
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


# One folder, every kind of file: what each side must make of it.
AWKWARD = {
    "quoted.md": "---\ndescription: \"finds flights, trains\"\nmodel: 'claude-haiku'\ntools: \"[Read, WebFetch]\"\n"
                 "---\nBe brief.\n",
    "colons.md": "---\ndescription: meets at 9:30: see https://example.org/a:b\n---\nKeep time.\n",
    "empties.md": "---\n\n# optional ones left empty\ndescription: plans\nmodel:\ntools:\n---\nPlan.\n",
    "inner.md": "---\ndescription: the \"best\" one\n---\n--- keeps its dashes ---\n",
    "badline.md": "---\ndescription: d\nthis line has no colon\n---\nx\n",
    "nodesc.md": "---\ndescription: ''\n---\nx\n",
    "unclosed.md": "---\ndescription: d\nx\n",
    "unknown.md": "---\ndescription: d\ncolour: blue\n---\nx\n",
    "lead.md": "---\ndescription: a reserved name\n---\nx\n",
    "bad name.md": "---\ndescription: a space in the name\n---\nx\n",
    "notes.txt": "not a member file at all\n",
}


def _awkward_folder(groups: Path) -> Path:
    agents = groups / "main" / "agents"
    agents.mkdir(parents=True)
    for name, text in AWKWARD.items():
        (agents / name).write_text(text)
    (agents / "latin1.md").write_bytes(b"---\ndescription: caf\xe9\n---\nx\n")
    (agents / "big.md").write_text("---\ndescription: d\n---\n" + "x" * member_file.MAX_FILE)
    os.symlink("quoted.md", agents / "linked.md")
    for path in (groups, groups / "main", agents):
        path.chmod(0o755)
    return agents


EXPECTED = {
    "colons": ("meets at 9:30: see https://example.org/a:b", "Keep time.", "", []),
    "empties": ("plans", "Plan.", "", []),
    "inner": ('the "best" one', "--- keeps its dashes ---", "", []),
    "quoted": ("finds flights, trains", "Be brief.", "claude-haiku", ["Read", "WebFetch"]),
}

IN_THE_IMAGE = r"""
import json, sys
sys.path.insert(0, "/opt/nanoclaw")
import team
from context import Context
from settings import system_prompt

def row(m):
    return [m.description, m.instructions, m.model, list(m.tools)]

print(json.dumps({
    "members": {name: row(m) for name, m in team.members(Context.from_env({})).items()},
    "me": {name: (row(m) if (m := team.me(Context.from_env({"NANOCLAW_AGENT": name}))) else None)
           for name in ("quoted", "colons", "empties", "inner", "badline", "linked", "nobody")},
    "quoted_prompt": system_prompt(ctx := Context.from_env({"NANOCLAW_AGENT": "quoted"}), team.me(ctx)),
}))
"""


def test_the_host_and_the_container_read_the_same_members_the_same_way(real_agent_image, container_options,
                                                                       tmp_path):
    cfg = config_mod.Config(state_dir=tmp_path, team=config_mod.TeamConfig(max_members=20))
    agents = _awkward_folder(cfg.groups_dir)
    host = {m.name: [m.description, m.instructions, m.model, list(m.tools)] for m in team.members(cfg, "main")}
    assert host == {name: list(want) for name, want in EXPECTED.items()}

    from nanoclaw.admin.hostcheck import runtime_args
    opts = runtime_args(container_options["runtime"], tuple(container_options["ulimits"]), ())
    out = subprocess.run(["podman", "run", "--rm", "--network", "none", *opts,
                          "-v", f"{agents.parent}:/workspace/group:ro",
                          "--entrypoint", "/opt/venv/bin/python", real_agent_image, "-c", IN_THE_IMAGE],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    seen = json.loads(out.stdout.strip().splitlines()[-1])
    assert seen["members"] == host
    # the member's own file, read as the runner reads it for its prompt and tools
    assert seen["me"] == {**{name: host[name] for name in ("quoted", "colons", "empties", "inner")},
                          "badline": None, "linked": None, "nobody": None}
    assert ": finds flights, trains. The group's lead" in seen["quoted_prompt"]
    # each refusal was said, with the host's reason
    said = out.stderr.splitlines()
    for name, why in [("badline", "is not 'key: value'"), ("nodesc", "needs a description"),
                      ("unclosed", "not closed"), ("unknown", "unknown front matter"),
                      ("lead", "invalid member name"), ("bad name", "invalid member name"),
                      ("linked", "symbolic link"), ("big", "too large"), ("latin1", "can't decode")]:
        assert any(f"member file {name} refused: " in line and why in line for line in said), (name, said)
