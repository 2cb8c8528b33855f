"""Podman for the tests: skip (or, in CI, fail) where it is missing, run a podman command, and
build the scripted test agent image from the debootstrap base."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from system_harness import ROOT

AGENT_DIR = ROOT / "tests" / "agent"
WHEELS = Path(os.environ.get("NANOCLAW_TEST_WHEELS", Path.home() / ".cache" / "nanoclaw-test" / "wheels"))
BASE_IMAGE = os.environ.get("NANOCLAW_TEST_BASE", "localhost/nanoclaw-base:bookworm-2")


def need_podman() -> None:
    """Skip a test that needs Podman where it is missing, except in CI: there a missing
    Podman is a broken machine, and a skipped suite would pass without testing anything."""
    if shutil.which("podman") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("podman is not installed (CI=true: tests that need it fail rather than skip)")
        pytest.skip("podman is not installed")


def _podman(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], check=check, capture_output=True, text=True, **kw)


# The debootstrap base's Python (bookworm's), for the wheel the scripted agent needs.
BASE_PYTHON = os.environ.get("NANOCLAW_TEST_BASE_PYTHON", "3.11")


def msgspec_wheel() -> Path:
    """The msgspec wheel the agent image pins (container/requirements.txt), for the base's
    Python: protocol.py reads spool messages with it. Fetched once into the test wheel cache."""
    import platform
    from nanoclaw.admin.image import PLATFORMS
    pin = next(line.split("#")[0].strip() for line in (ROOT / "container" / "requirements.txt").read_text().splitlines()
               if line.startswith("msgspec=="))
    version = pin.split("==")[1]
    tag = "cp" + BASE_PYTHON.replace(".", "")
    dest = WHEELS
    found = sorted(dest.glob(f"msgspec-{version}-{tag}-*.whl")) if dest.exists() else []
    if not found:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--quiet", "--no-deps",
               "--dest", str(dest), "--only-binary=:all:", "--python-version", BASE_PYTHON, pin]
        for p in PLATFORMS:
            cmd += ["--platform", f"{p}_{platform.machine()}"]
        subprocess.run(cmd, check=True)
        found = sorted(dest.glob(f"msgspec-{version}-{tag}-*.whl"))
    return found[0]


def build_test_agent_image() -> str:
    """Build (once per content) the scripted test agent image from the debootstrap base."""
    ctx = Path(tempfile.mkdtemp(prefix="nc-agent-ctx-"))
    shutil.copy(AGENT_DIR / "Containerfile", ctx)
    shutil.copy(AGENT_DIR / "scripted_agent.py", ctx)
    import inotify_simple  # one pure-Python module: copied beside protocol.py, no wheel needed
    shutil.copy(inotify_simple.__file__, ctx)
    from nanoclaw.admin.image import SHARED_MODULES
    for module in SHARED_MODULES:
        shutil.copy(module, ctx)
    shutil.copy(msgspec_wheel(), ctx)
    subprocess.run([str(ROOT / "container" / "build-base.sh"), BASE_IMAGE], check=True)
    base_id = _podman("image", "inspect", "--format", "{{.Id}}", BASE_IMAGE).stdout.strip()
    # A rebuilt base makes a new tag too, so no image outlives the base it was built on.
    digest = hashlib.sha256(base_id.encode() + b"".join((ctx / f).read_bytes()
                                                        for f in sorted(os.listdir(ctx)))).hexdigest()[:12]
    tag = f"localhost/nanoclaw-testagent:{digest}"
    if _podman("image", "exists", tag, check=False).returncode != 0:
        _podman("build", "--network", "none", "--build-arg", f"BASE={BASE_IMAGE}", "-t", tag, str(ctx))
    shutil.rmtree(ctx)
    return tag
