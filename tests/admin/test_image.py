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
