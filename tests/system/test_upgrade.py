"""An upgrade as the README says, from the previous release, on a fresh Debian 12 machine.

The previous release (``c7472f1``, checked out from this clone's own history) was installed
as its README says and used: groups, a team member, tasks as timers, an approved sender,
usage rows, messages answered with their containers left warm, one message waiting behind a
stopped runner (tests/system/upgrade.py). Then ``git checkout`` of this tree's commit and
``sudo ./install.sh`` (tests/system/machine.py ``booted_and_upgraded``). This is the Debian 12
machine every other system test then uses (tests/system/conftest.py), so the upgrade costs
one more install.sh run, not another machine; these checks run first, before the others use
it, and test_install.py's reboot of it checks that it still answers, and answers nothing twice.
"""

from __future__ import annotations

import re

import pytest
from old_release import PREVIOUS_RELEASE

from .machine import AS_NANOCLAW, Machine
from .upgrade import facts, running_agents

pytestmark = [pytest.mark.system, pytest.mark.podman]


@pytest.fixture
def machine(debian12) -> Machine:
    return debian12


def test_the_upgrade_stops_backs_up_migrates_starts_and_says_so(machine: Machine):
    out = machine.install_output
    assert "FAILED at step" not in out and "Traceback" not in out, out[-4000:]
    steps = re.findall(r"^==> (.*)$", out, re.M)
    stop = next(s for s in steps if s.startswith("stopping nanoclaw for the upgrade"))
    assert f"from {PREVIOUS_RELEASE}" in stop and f"to {machine.new_commit}" in stop, stop
    # stopped before the program is replaced; backed up before the database is migrated
    order = [next(i for i, s in enumerate(steps) if s.startswith(p))
             for p in ("stopping nanoclaw", "program in", "backing up before the upgrade", "database schema",
                       "starting nanoclaw.target", "nanoclaw doctor")]
    assert order == sorted(order), steps
    from nanoclaw.core.migrations import LATEST
    assert all(f"schema {n - 1} -> {n}:" in out for n in range(1, LATEST + 1)), out
    assert f"migrated /var/lib/nanoclaw/nanoclaw.db from schema 0 to {LATEST}" in out
    backup = re.search(r"^backed up to (\S+-schema0-pre-upgrade\.tar\.gz) ", out, re.M).group(1)
    assert machine.sh(f"stat -c '%U %a' {backup}").stdout.split() == ["nanoclaw", "600"]
    assert f"commit {machine.new_commit}" in machine.nanoclaw("--version").stdout
    assert "all good" in out.rsplit("==> nanoclaw doctor", 1)[1]


def test_everything_the_previous_release_held_is_there(machine: Machine):
    from nanoclaw.core.migrations import LATEST
    before, after = machine.before, facts(machine)
    assert (before["schema"], after["schema"]) == (0, LATEST)
    for what in ("groups", "tasks", "approved", "requests", "member", "timers"):
        assert after[what] == before[what], what
    for what in ("usage", "messages", "outbox"):  # all still there, in order; more may have come since
        assert after[what][:len(before[what])] == before[what], what
    # Its containers ended with the old units; the new runner started none of theirs again.
    assert not set(before["warm"]) & set(running_agents(machine))


def test_the_message_that_waited_is_answered_once_and_nothing_twice(machine: Machine):
    machine.wait_for(lambda: "echo: waiting through the upgrade" in machine.replies("work@term"), 180,
                     "the waiting message's answer")
    assert "echo: after the upgrade" in machine.send("after the upgrade")
    replies = machine.replies()
    echoes = [r for r in replies if r.startswith("echo: ")]
    assert echoes.count("echo: waiting through the upgrade") == 1
    assert len(echoes) == len(set(echoes)), echoes  # every message was answered once
    everything = facts(machine)
    keys = [o[0] for o in everything["outbox"]]
    assert len(keys) == len(set(keys)) and everything["unsent"] == 0
    # and the service user's rootless Podman runs the agents again
    assert running_agents(machine), machine.sh(f"cd / && {AS_NANOCLAW} podman ps -a").stdout


def test_the_nightly_backup_runs_in_its_sandboxed_unit(machine: Machine):
    """The timer the upgrade enabled, and the backup its service makes as the service user."""
    from nanoclaw.core.migrations import LATEST
    assert "nanoclaw-backup.timer" in machine.sh("systemctl list-timers --all --no-pager nanoclaw-backup.timer").stdout
    machine.sh("systemctl start nanoclaw-backup.service")  # a oneshot: returns when it is done
    made = machine.journal("-u", "nanoclaw-backup", "--since", "-2min")
    assert "backed up to" in made and f"schema{LATEST}-nightly.tar.gz" in made, made[-2000:]
    listing = machine.sh("stat -c '%U %a %n' /var/lib/nanoclaw/backups/*-nightly.tar.gz").stdout.split()
    assert listing[:2] == ["nanoclaw", "600"], listing
    # nothing in the state became another user's (a database journal made by root, say)
    assert machine.sh("find /var/lib/nanoclaw -path /var/lib/nanoclaw/home -prune -o ! -user nanoclaw -print",
                      ).stdout.strip() == ""
