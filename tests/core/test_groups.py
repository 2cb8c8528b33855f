"""Groups (core/groups.py): folder names, sender allowlists that fail closed, templates found
where install.sh put them."""

from __future__ import annotations

import json

import pytest

from nanoclaw.core import groups as groups_mod


@pytest.mark.parametrize("folder,ok", [
    ("family", True), ("a", True), ("Work_2-x", True), ("x" * 64, True),
    ("x" * 65, False), ("global", False), ("Global", False), ("../etc", False), ("a/b", False),
    ("-lead", False), ("_lead", False), ("", False), ("dot.ted", False), ("sp ace", False),
])
def test_folder_validation(folder, ok):
    if ok:
        assert groups_mod.validate_folder(folder) == folder
    else:
        with pytest.raises(groups_mod.GroupError):
            groups_mod.validate_folder(folder)


def test_allowlist_absent_valid_and_fail_closed(cfg):
    assert groups_mod.allowed_senders(cfg, "fam") is None
    path = groups_mod.allowlist_path(cfg, "fam")
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"senders": ["a@x", "b@x"]}))
    assert groups_mod.allowed_senders(cfg, "fam") == {"a@x", "b@x"}
    for broken in ("{not json", '{"senders": "a@x"}', '{"people": []}', "[]", '{"senders": [1]}'):
        path.write_text(broken)
        assert groups_mod.allowed_senders(cfg, "fam") == set(), broken


def test_templates_are_found_under_the_install_prefix(tmp_path, monkeypatch):
    """The defect: `install.sh --prefix DIR` put them in DIR/share, but only the checkout and
    /opt/nanoclaw/share were looked at."""
    import sys

    from nanoclaw.admin import image
    share = tmp_path / "prefix" / "share"
    (share / "groups" / "main").mkdir(parents=True)
    (share / "groups" / "main" / "CLAUDE.md").write_text("installed\n")
    (share / "container").mkdir()
    (share / "container" / "Containerfile").write_text("FROM x\n")
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "prefix"))  # the venv install.sh made
    monkeypatch.setattr(groups_mod, "__file__", str(tmp_path / "nowhere" / "nanoclaw" / "core" / "groups.py"))
    assert groups_mod.template_dir() == share / "groups"
    assert image.container_dir() == share / "container"
