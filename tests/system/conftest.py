"""The machines of the system tests: fresh Debian 12 and 13, installed as the README says.

Each is booted and installed once for the session (minutes: apt, debootstrap,
a wheel download and an image build, as on a real first install) and shared by
the tests that run in order against it, as an owner would use the service.
Debian 13 is a first install of this tree. Debian 12 is an upgrade: the previous
release installed and used, then this tree installed over it as the README's
Upgrading says (test_upgrade.py checks the upgrade itself, before anything else
uses the machine); every other test then checks it as it would a fresh one.
"""

from __future__ import annotations

import os

import pytest
from old_release import PREVIOUS_RELEASE, need_commit
from podman_harness import need_podman

from .machine import Machine, booted_and_installed, booted_and_upgraded


def pytest_collection_modifyitems(session, config, items) -> None:
    """The upgrade's checks first among the system tests: the others then use the machine it
    upgraded (and the last of them uninstalls it)."""
    upgrade = [i for i in items if i.nodeid.startswith("tests/system/test_upgrade.py")]
    if not upgrade:
        return
    rest = [i for i in items if i not in upgrade]
    at = next((n for n, i in enumerate(rest) if i.nodeid.startswith("tests/system/")), len(rest))
    items[:] = rest[:at] + upgrade + rest[at:]

SECRET = "sk-ant-api03-SYSTEMTEST-" + os.urandom(6).hex()


def _need_root() -> None:
    need_podman()
    if os.geteuid() != 0:
        reason = "the system test boots privileged (rootful) Podman containers: run it as root"
        pytest.fail(reason) if os.environ.get("CI") == "true" else pytest.skip(reason)


def _machine(request, suite: str, upgraded: bool = False) -> Machine:
    _need_root()
    if upgraded:
        need_commit(PREVIOUS_RELEASE)
        m = booted_and_upgraded(suite, SECRET, PREVIOUS_RELEASE)
    else:
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
    """Debian 12, on which the previous release was installed, used and upgraded from."""
    return _machine(request, "bookworm", upgraded=True)


@pytest.fixture(scope="session")
def debian13(request) -> Machine:
    return _machine(request, "trixie")
