"""registry: every unit nanoclaw runs, one row each, as Postfix's master.cf.

SUMMARY
    The one list of the daemons (and of the other units beside them): what
    each is called, which user it runs as, which spools it reads and writes,
    which sockets it serves, whether it has the network or the credential,
    and its watchdog period. Adding a daemon is adding a row here and its
    unit file (tests/test_registry.py fails until both agree).

    Who reads it: install.sh (which unit files to install, which shared
    drop-ins go beside which unit, what to enable, what must be running),
    ``nanoclaw status`` and ``nanoclaw doctor`` (which units and daemons to
    ask), ``nanoclaw run-all`` (which daemons to start), ``nanoclaw
    <daemon>`` (which names are daemons), and the tests (``units/``,
    ``units/nanoclaw.target`` and the README's file map are held to it).

SYNOPSIS
    DAEMONS                 the daemons, in the order run-all starts them
    NAMES                   their names: ``nanoclaw <name>``, ``nanoclaw-<name>.service``
    OTHERS                  the units that are not daemons
    UNITS                   every unit file in ``units/``, daemons first
    running() -> [unit]     the units that run all the time once started
    dropins() -> [(unit, source, installed name)]   the shared drop-ins each unit takes

    python3 -m nanoclaw.registry units|enabled|running|dropins|daemons
        one a line, for install.sh, which runs it with the system python3 from
        the checkout (PYTHONPATH), before the program's own venv exists and
        while uninstalling: this module imports nothing but the standard library.

SHARED DROP-INS
    ``units/nanoclaw-sandbox.conf``, the sandbox, installed as
    ``<unit>.d/10-sandbox.conf`` beside every unit whose row says ``sandbox``
    (every daemon's does); ``units/nanoclaw-daemon.conf``, how a daemon runs
    (notify, restarts, its user and directories), as ``<unit>.d/10-daemon.conf``
    beside each daemon. A unit's own drop-ins (``units/<unit>.d/20-*.conf``)
    come after them, for what it must set otherwise (drop-ins are read after
    the unit file, so a setting the shared ones make can only be changed in a
    later drop-in).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

SERVICE_USER = "nanoclaw"
SANDBOX = "nanoclaw-sandbox.conf"     # units/ source of every sandboxed unit's 10-sandbox.conf
DAEMON_CONF = "nanoclaw-daemon.conf"  # units/ source of every daemon's 10-daemon.conf


@dataclass(frozen=True)
class Daemon:
    """A long-running program: ``nanoclaw <name>``, unit ``nanoclaw-<name>.service``, control
    socket ``<runtime>/<name>.sock`` (status, nudges). Every daemon takes both shared drop-ins
    and is wanted by ``nanoclaw.target``."""

    name: str
    does: str
    reads: tuple[str, ...]     # spools (and the like) it consumes
    writes: tuple[str, ...]    # spools it hands work to
    serves: tuple[str, ...] = ()  # sockets besides its control socket
    network: str = ""          # what it reaches over the network; "" none (PrivateNetwork=yes)
    credential: bool = False   # LoadCredential= of the Anthropic credential
    watchdog: int = 30         # WatchdogSec=
    user: str = SERVICE_USER

    @property
    def unit(self) -> str:
        return f"nanoclaw-{self.name}.service"


@dataclass(frozen=True)
class Unit:
    """A unit that is not a daemon."""

    unit: str
    does: str
    user: str = SERVICE_USER   # "root" where it has no User=
    sandbox: bool = False      # takes the shared sandbox drop-in
    in_target: bool = False    # nanoclaw.target Wants= it
    enabled: bool = False      # has an [Install] section: install.sh enables it
    long_running: bool = False  # runs all the time once started


DAEMONS: tuple[Daemon, ...] = (
    Daemon("channel", "chat connections in and out; stores what arrives before acknowledging it",
           reads=("chat networks", "terminal clients"), writes=("spool/router",),
           network="WhatsApp"),
    Daemon("queue", "decides when a group's agent runs and what it is told",
           reads=("spool/queue",), writes=("spool/runner", "spool/router", "ipc/<group>/in")),
    Daemon("runner", "starts and watches the agent containers (Podman API)",
           reads=("spool/runner",), writes=("spool/queue", "ipc/<group>/in")),
    Daemon("ipc", "reads what agents ask for, and decides if they may",
           reads=("ipc/<group>/out",), writes=("spool/queue", "spool/router", "spool/ipc")),
    Daemon("router", "the outbox: keeps each reply once, hands it to the channel until it is sent",
           reads=("spool/router",), writes=()),
    Daemon("proxy", "the Anthropic API for containers: holds the credential, meters, keeps budgets",
           reads=(), writes=("spool/queue",), serves=("proxy/<group>/api.sock",),
           network="the Anthropic API, and the voice API when [voice] engine = \"api\"", credential=True),
    Daemon("egress", "the web for containers, under each group's egress policy (no credential)",
           reads=(), writes=(), serves=("proxy/<group>/web.sock",), network="the web, under policy"),
    Daemon("scheduler", "keeps each scheduled task's timer equal to the database",
           reads=(), writes=("timers/",), watchdog=60),
)
NAMES: tuple[str, ...] = tuple(d.name for d in DAEMONS)

OTHERS: tuple[Unit, ...] = (
    Unit("nanoclaw-podman.service", "the rootless Podman API the runner drives; agent containers are its "
         "children (its own looser sandbox: user namespaces)", in_target=True, enabled=True, long_running=True),
    Unit("nanoclaw-timers.service", "the root one-shot: the scheduler's timer specs into task timer units",
         user="root", sandbox=True, in_target=True, enabled=True),
    Unit("nanoclaw-timers.path", "starts nanoclaw-timers.service when a timer spec changes",
         user="root", in_target=True, enabled=True),
    Unit("nanoclaw-task@.service", "a task's timer fired: hands the task to the queue", sandbox=True),
    Unit("nanoclaw-backup.service", "one nightly backup", sandbox=True),
    Unit("nanoclaw-backup.timer", "starts the nightly backup", user="root", enabled=True),
    Unit("nanoclaw.target", "everything nanoclaw runs", user="root", enabled=True),
)

UNITS: tuple[str, ...] = tuple(d.unit for d in DAEMONS) + tuple(u.unit for u in OTHERS)


def enabled() -> list[str]:
    return [d.unit for d in DAEMONS] + [u.unit for u in OTHERS if u.enabled]


def in_target() -> list[str]:
    return [d.unit for d in DAEMONS] + [u.unit for u in OTHERS if u.in_target]


def running() -> list[str]:
    """The units that run all the time once nanoclaw.target is started."""
    return [u.unit for u in OTHERS if u.long_running] + [d.unit for d in DAEMONS]


def dropins() -> list[tuple[str, str, str]]:
    """(unit, source file in units/, the name it is installed under in <unit>.d/)."""
    out = []
    for d in DAEMONS:
        out += [(d.unit, SANDBOX, "10-sandbox.conf"), (d.unit, DAEMON_CONF, "10-daemon.conf")]
    return out + [(u.unit, SANDBOX, "10-sandbox.conf") for u in OTHERS if u.sandbox]


def main(argv: list[str]) -> int:
    lists = {"units": lambda: UNITS, "enabled": enabled, "running": running, "daemons": lambda: NAMES,
             "dropins": lambda: [" ".join(row) for row in dropins()]}
    if len(argv) != 1 or argv[0] not in lists:
        print(f"usage: python3 -m nanoclaw.registry {'|'.join(lists)}", file=sys.stderr)
        return 2
    for line in lists[argv[0]]():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
