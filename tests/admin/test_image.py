"""The agent image's sources (nanoclaw/admin/image.py): what goes in, and what tells a stale image."""

from __future__ import annotations

import sys
from pathlib import Path

from nanoclaw.admin.image import RUNNER_FILES, SHARED_MODULES, container_dir


def test_the_image_digest_covers_every_module_of_the_runner():
    """The Containerfile copies every container/*.py; a module left out of RUNNER_FILES would be
    in the image but not in its digest, so an image without its latest change would pass as current."""
    assert sorted(RUNNER_FILES) == sorted(p.name for p in container_dir().glob("*.py"))


def test_the_runners_modules_and_the_shared_ones_have_names_of_their_own():
    """All are top-level modules in /opt/nanoclaw, first on the runner's sys.path: a name taken
    twice, or a standard library module's name, would hide the other."""
    names = [Path(f).stem for f in RUNNER_FILES] + [m.stem for m in SHARED_MODULES]
    assert len(set(names)) == len(names), names
    assert not set(names) & sys.stdlib_module_names


def test_a_model_dir_that_holds_no_model_is_one_line_before_any_build(make_cfg, tmp_path):
    """``[voice] model_dir`` naming a directory without a CTranslate2 model: `nanoclaw image
    build` fails at once (before the base image or any download) with the line that says how to fix
    it (an ImageError), and the runner's label
    falls back to the configured name instead of failing the note."""
    import pytest

    from nanoclaw.admin import voice_image
    from nanoclaw.admin.image import ImageError
    from nanoclaw.daemons.runner.transcribe import model_label

    empty = tmp_path / "not-a-model"
    empty.mkdir()
    cfg = make_cfg(f'[voice]\nmodel_dir = "{empty}"\n')
    with pytest.raises(ImageError, match=r"is not a CTranslate2 Whisper model \(no model.bin, config.json\)"):
        voice_image.build(cfg, tag="localhost/nanoclaw-transcribe:never-built", force=True,
                          progress=lambda line: None)
    assert model_label(cfg) == "unknown"
    (empty / "model.bin").write_bytes(b"x")
    (empty / "config.json").write_text("{}")
    assert model_label(cfg) == "not-a-model"  # the directory's name, as the image is labelled
