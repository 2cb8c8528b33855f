"""The machines of the system tests: fresh Debian 12 and 13, installed as the README says.

Each is booted and installed once for the session (minutes: apt, debootstrap,
a wheel download and an image build, as on a real first install) and shared by
the tests that run in order against it, as an owner would use the service.
"""

from __future__ import annotations

import os

import pytest
from conftest import need_podman

from .machine import Machine, booted_and_installed

SECRET = "sk-ant-api03-SYSTEMTEST-" + os.urandom(6).hex()


def _need_root() -> None:
    need_podman()
    if os.geteuid() != 0:
        reason = "the system test boots privileged (rootful) Podman containers: run it as root"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


def _machine(request, suite: str) -> Machine:
    _need_root()
    m = booted_and_installed(suite, SECRET)

    def done() -> None:
        if request.session.testsfailed:
            print(m.sh("journalctl --no-pager -n 300 -u 'nanoclaw*'", check=False).stdout[-30000:])
        if os.environ.get("NANOCLAW_KEEP_MACHINE"):
            print(f"kept the machine: podman exec -it {m.name} bash")
        else:
            m.remove()
    request.addfinalizer(done)
    return m


@pytest.fixture(scope="session")
def debian12(request) -> Machine:
    return _machine(request, "bookworm")


@pytest.fixture(scope="session")
def debian13(request) -> Machine:
    return _machine(request, "trixie")
