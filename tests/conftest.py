"""The tests' fixtures: real daemons as OS processes (system_harness.py), a real Podman API, real
containers (podman_harness.py), the previous release's code (old_release.py)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
from old_release import PREVIOUS_RELEASE, release_tree
from podman_harness import BASE_IMAGE, WHEELS, _podman, build_test_agent_image, need_podman
from system_harness import SECRET, System


@pytest.fixture(scope="session")
def previous_release(tmp_path_factory) -> Path:
    """A directory whose ``nanoclaw`` package is the previous release's code."""
    return release_tree(PREVIOUS_RELEASE, tmp_path_factory.mktemp("release"))


@pytest.fixture(scope="session")
def agent_image() -> str:
    """The scripted test agent image, built offline from the debootstrap base."""
    need_podman()
    return build_test_agent_image()


@pytest.fixture(scope="session")
def container_options(agent_image) -> dict:
    """Runtime options this host needs, found by trying (as install.sh does)."""
    from nanoclaw.admin.hostcheck import probe_container_options
    found, failures = probe_container_options(agent_image)
    if found is None:
        pytest.fail("no container runtime options work here: " + "; ".join(f.error for f in failures))
    return {"runtime": found.runtime, "ulimits": list(found.ulimits)}


@pytest.fixture(scope="session")
def transcribe_image(container_options) -> str:
    """The voice notes' transcription image, built by voice_image.build (cached by its sources' digest)."""
    need_podman()
    from nanoclaw.admin import voice_image
    from nanoclaw.core import config as config_mod
    cfg = config_mod.Config(container=config_mod.ContainerConfig(
        runtime=container_options["runtime"], ulimits=tuple(container_options["ulimits"]), base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-transcribe:test-{voice_image.source_digest(cfg)}"
    if not voice_image.current(cfg, tag):
        voice_image.build(cfg, tag=tag, wheels=WHEELS.parent / "wheels-voice",
                          progress=lambda line: print("image:", line), workdir=WHEELS.parent)
    return tag


@pytest.fixture(scope="session")
def podman_service():
    """A Podman API socket served by ``podman system service`` for the whole session."""
    need_podman()
    d = Path(tempfile.mkdtemp(prefix="nc-podman-"))
    sock = d / "podman.sock"
    err = d / "service.log"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                                stdout=subprocess.DEVNULL, stderr=fh)
    deadline = time.time() + 30
    while not sock.exists():
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            pytest.fail(f"the Podman API socket never appeared at {sock}: {err.read_text()[-2000:]}")
        time.sleep(0.05)
    yield f"unix://{sock}"
    proc.terminate()
    proc.wait(10)
    shutil.rmtree(d, ignore_errors=True)



@pytest.fixture
def make_system(tmp_path, request):
    """Factory for a System with test-friendly settings; everything is torn down after."""
    made: list[System] = []

    def make(container: dict | None = None, **settings) -> System:
        runtime = {}
        if container and "image" in container:
            runtime = request.getfixturevalue("container_options")
        base = tmp_path / f"sys{len(made)}"
        cfg = {"backoff_base": 0.2, "backoff_max": 1.0, "timezone": "UTC",
               "scheduler": "crontab", "crontab_file": str(base / "crontab"), **settings,
               # idle containers exit (the scripted agent knows no pause); tests of pausing set a budget
               "container": {"idle_timeout": 1.0, "timeout": 60.0, "paused_memory_mib": 0, **runtime,
                             **(container or {})}}
        system = System(base, cfg)
        made.append(system)
        return system

    yield make
    for system in made:
        system.close()


@pytest.fixture
def system(make_system, agent_image, podman_service) -> System:
    """A running nanoclaw with the scripted agent in real containers and a main group."""
    s = make_system(container={"image": agent_image, "podman_url": podman_service})
    s.cli("groups", "add", "main", "--main")
    s.start()
    yield s
    # containers this system started must not outlive it
    _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)



@pytest.fixture(scope="session")
def real_agent_image(container_options) -> str:
    """The real agent image (claude-agent-sdk + agent runner), built offline by `nanoclaw image build`."""
    from nanoclaw.admin import image
    from nanoclaw.core import config as config_mod
    cfg = config_mod.Config(container=config_mod.ContainerConfig(
        runtime=container_options["runtime"], ulimits=tuple(container_options["ulimits"]),
        base_image=BASE_IMAGE))
    tag = f"localhost/nanoclaw-agent:test-{image.source_digest()}"
    if not image.image_exists(tag):
        image.build(cfg, tag=tag, wheels=WHEELS, progress=lambda line: print("image:", line), workdir=WHEELS.parent)
    return tag


@pytest.fixture
def fake_api():
    from fake_anthropic import FakeAnthropic
    api = FakeAnthropic().start()
    yield api
    api.stop()




@pytest.fixture
def make_agent_system(make_system, real_agent_image, podman_service, fake_api):
    """A nanoclaw whose agents are the real image, talking to the fake API via the proxy."""
    def make(credential: str = SECRET, settings: dict | None = None, **container) -> System:
        s = make_system(proxy_upstream=fake_api.url, **(settings or {}),
                        container={"image": real_agent_image, "podman_url": podman_service,
                                   "idle_timeout": 2.0, "timeout": 120.0,
                                   "extra_env": ["CLAUDE_CODE_MAX_RETRIES=0"], **container})
        s.set_credential(credential)
        s.cli("groups", "add", "main", "--main")
        s.start()
        return s
    yield make
    _podman("rm", "-f", "--filter", "label=nanoclaw.job", check=False)


@pytest.fixture
def need_root_and_strace():
    """strace, and root for it and for the private mount namespace (as in CI): network tests that prove a refusal."""
    missing = "strace is not installed" if subprocess.run(["which", "strace"], capture_output=True).returncode \
        else "not root (a private /etc/hosts needs a mount namespace)" if os.geteuid() != 0 else ""
    if missing:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{missing} (CI=true: the refusal evidence needs it)")
        pytest.skip(missing)


@pytest.fixture
def make_cfg(tmp_path, monkeypatch):
    """Factory for the configuration of daemons and rules run in process: a config.toml in
    tmp_path (UTC, then ``toml``), the state, runtime and config dirs beside it, the database open."""
    from nanoclaw.core import config_file
    from nanoclaw.core.models import open_db

    def make(toml: str = ""):
        for env, sub in (("NANOCLAW_STATE_DIR", "state"), ("NANOCLAW_RUNTIME_DIR", "run"), ("NANOCLAW_CONFIG_DIR", "etc")):
            monkeypatch.setenv(env, str(tmp_path / sub))
        conf = tmp_path / "config.toml"
        conf.write_text('timezone = "UTC"\n' + toml)
        c = config_file.load(conf)
        open_db(c.db_path)
        return c
    return make


@pytest.fixture
def cfg(make_cfg):
    """The in-process configuration with the defaults; a test file that needs more overrides ``cfg``."""
    return make_cfg()


@pytest.fixture
def offline_system(make_system) -> System:
    """A nanoclaw with no containers involved (daemons that do not need Podman)."""
    return make_system()
