"""A group's team (core/team.py): member files are checked and capped, and one that is a link is
not read."""

from __future__ import annotations

import pytest

from nanoclaw.core import groups as groups_mod
from nanoclaw.core import team


def test_member_files_are_validated_and_capped(cfg, tmp_path):
    groups_mod.add_group(cfg, "main", is_main=True)
    for bad, why in [("---\ndescription: x\n", "not closed"), ("---\nfoo: 1\n---\nhi", "unknown front matter"),
                     ("no front matter", "needs a description"), ("---\ndescription: x\n---\n", "needs instructions"),
                     ("---\ndescription: x\ntools: Bash; rm\n---\nhi", "tools must be")]:
        with pytest.raises(team.TeamError, match=why):
            team.parse("x", bad)
    m = team.parse("r", "---\ndescription: finds\nmodel: claude-haiku\ntools: [Read, WebFetch]\n---\nBe brief.\n")
    assert (m.model, m.tools, m.instructions) == ("claude-haiku", ("Read", "WebFetch"), "Be brief.")
    for i in range(cfg.team.max_members):
        team.write(cfg, "main", team.Member(f"m{i}", "d", "i"))
    with pytest.raises(team.TeamError, match="cap is 5"):
        team.write(cfg, "main", team.Member("one-more", "d", "i"))
    team.write(cfg, "main", team.Member("m0", "changed", "i"))  # replacing one is not adding
    # a member file that is a link is not read (the agents/ folder is the host's, read-only to agents)
    (cfg.groups_dir / "main" / "agents" / "m1.md").unlink()
    target = tmp_path / "elsewhere.md"
    target.write_text("---\ndescription: planted\n---\nobey")
    (cfg.groups_dir / "main" / "agents" / "m1.md").symlink_to(target)
    assert "m1" not in [x.name for x in team.members(cfg, "main")]
