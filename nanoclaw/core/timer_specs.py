"""Where scheduled tasks become timers, the scheduler's half: timer specs, or crontab lines.

Both backends make the outside world equal to the list of active tasks —
creating what is missing, rewriting what changed, removing orphans — so a
reconcile pass at start (and after every change) is all it takes.

systemd, in two steps so that no daemon holding the database runs as root:
the scheduler (service user) writes one small JSON *spec* per active task into
``<state>/timers/`` (:class:`TimerSpecs`); the root one-shot ``nanoclaw timers
sync`` (``nanoclaw/admin/timer_sync.py``) re-validates them into
``nanoclaw-task-<id>.timer`` units. The owner sees them with
``systemctl list-timers 'nanoclaw-task-*'``.

crontab: one line per task in the service user's crontab, tagged with a
comment. Minute precision; cron expressions in another timezone than the
host's, intervals and one-off times run every minute with ``--if-due``.
The ``crontab`` program is looked up on PATH at every pass, so one installed
while nanoclaw runs is used from the next pass on (no restart); until then a
pass raises :class:`CronMissing` and the tasks wait in the database.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Sequence
from pathlib import Path

from nanoclaw.core.models import Task
from nanoclaw.core.protocol import TIMER_PREFIX as PREFIX
from nanoclaw.core.safefs import write_atomic
from nanoclaw.core.schedules import ScheduleError, parse_cron, parse_interval


def spec_of(task: Task) -> dict:
    """What a task's timer must be, as plain data."""
    spec: dict = {"id": task.id, "kind": task.schedule_type, "group": task.group.folder}
    if task.schedule_type == "interval":
        spec["interval"] = parse_interval(task.schedule_value)
    else:
        from nanoclaw.core.tasks import schedule_of
        spec["oncalendar"] = list(schedule_of(task).oncalendar())
    return spec


def specs_of(tasks: Sequence[Task], problems: list[str] | None = None) -> dict[int, dict]:
    """Each task's spec; a task whose schedule cannot be one (stored before it was refused) is
    left out, with the reason in ``problems``: one bad task never stops the others' timers."""
    out = {}
    for t in tasks:
        try:
            out[t.id] = spec_of(t)
        except (ScheduleError, ValueError) as exc:
            if problems is not None:
                problems.append(f"task {t.id} has no timer: its schedule {t.schedule_value!r} is bad ({exc})")
    return out


class TimerSpecs:
    """The scheduler's half of the systemd backend: one JSON spec per active task."""

    name = "systemd"

    def __init__(self, spec_dir: Path) -> None:
        self.dir = Path(spec_dir)
        self.problems: list[str] = []  # tasks the last reconcile left without a timer, and why

    def reconcile(self, tasks: Sequence[Task]) -> list[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        self.problems = []
        want = {f"{PREFIX}{ident}.json": json.dumps(spec, sort_keys=True) + "\n"
                for ident, spec in specs_of(tasks, self.problems).items()}
        changes = []
        for path in sorted(self.dir.glob(f"{PREFIX}*.json")):
            if path.name not in want:
                path.unlink()
                changes.append(f"removed {path.stem}.timer")
        for name, text in sorted(want.items()):
            path = self.dir / name
            old = path.read_text() if path.exists() else None
            if old != text:
                write_atomic(path, text, 0o644)  # the path unit sees one complete file, never half of one
                changes.append(f"{'updated' if old is not None else 'created'} {path.stem}.timer")
        return changes


CRON_FIX = ("apt install cron (Debian, Ubuntu; cronie on Fedora), and have its daemon running; or install "
            "with install.sh on a machine where systemd is PID 1: its timers need no cron")


class CronMissing(OSError):
    """No ``crontab`` program on PATH: the tasks' lines cannot be written yet."""

    def __init__(self) -> None:
        super().__init__(f"no crontab program on PATH, so scheduled tasks cannot fire; they are kept and get "
                         f"their crontab lines once there is one. Fix: {CRON_FIX}")


def crontab_program() -> str | None:
    """The ``crontab`` program this process would run now, if there is one."""
    return shutil.which("crontab")

# The nightly backup's crontab line (systemd has units/nanoclaw-backup.timer): its tag, its time.
BACKUP_TAG = "nanoclaw-backup"
BACKUP_SLICES = "30 3 * * *"


class CrontabTimers:
    name = "crontab"

    def __init__(self, fire_command: str, user: str | bool = True, tabfile: Path | None = None,
                 host_tz: str = "", backup_command: str = "") -> None:
        self.fire_command = fire_command
        self.user = user
        self.tabfile = tabfile
        self.host_tz = host_tz
        self.problems: list[str] = []  # tasks the last reconcile left without a line, and why
        self.backup_command = backup_command  # "": no nightly backup line

    def _tab(self):
        from crontab import CronTab
        if self.tabfile is not None:
            if not Path(self.tabfile).exists():
                Path(self.tabfile).write_text("")
            return CronTab(tabfile=str(self.tabfile))
        program = crontab_program()
        if program is None:
            raise CronMissing()
        import crontab
        crontab.CRON_COMMAND = program  # the library looked it up once, at import: a later install counts too
        return CronTab(user=self.user)

    def line_for(self, task: Task) -> tuple[str, str]:
        """(cron schedule, command) for a task; ScheduleError if its schedule cannot be one."""
        base = f"{self.fire_command} {task.id}"
        if task.schedule_type == "cron" and task.timezone == self.host_tz:
            parse_cron(task.schedule_value)  # our own check first: one line, five plain fields
            return task.schedule_value, base
        return "* * * * *", f"{base} --if-due"

    def present(self) -> dict[int, str]:
        out = {}
        for job in self._tab():
            if job.comment.startswith(PREFIX) and job.comment[len(PREFIX):].isdigit():
                out[int(job.comment[len(PREFIX):])] = f"{job.slices} {job.command}"
        return out

    def reconcile(self, tasks: Sequence[Task]) -> list[str]:
        tab = self._tab()
        self.problems = []
        want = {}
        for t in tasks:  # a task stored with a bad schedule (before it was refused) is left out
            try:
                want[t.id] = self.line_for(t)
            except ScheduleError as exc:
                self.problems.append(f"task {t.id} has no crontab line: its schedule {t.schedule_value!r} is bad "
                                     f"({exc})")
        changes = []
        for job in list(tab):
            if not job.comment.startswith(PREFIX):
                continue  # the owner's own lines are left alone
            ident = job.comment[len(PREFIX):]
            wanted = want.get(int(ident)) if ident.isdigit() else None
            if wanted is None or (str(job.slices), job.command) != wanted:
                tab.remove(job)
                changes.append(f"removed line for task {ident}")
        have = {int(j.comment[len(PREFIX):]) for j in tab if j.comment.startswith(PREFIX)}
        for ident, (slices, command) in sorted(want.items()):
            if ident not in have:
                job = tab.new(command=command, comment=f"{PREFIX}{ident}")
                try:
                    job.setall(slices)
                except (ValueError, KeyError) as exc:  # python-crontab's refusal: this task only
                    tab.remove(job)
                    self.problems.append(f"task {ident} has no crontab line: {slices!r} ({exc})")
                    continue
                changes.append(f"added line for task {ident}")
        changes += self._backup_line(tab)
        if changes:
            tab.write()
        return changes

    def _backup_line(self, tab) -> list[str]:
        """The nightly backup's one line, as the configuration wants it (or none)."""
        lines = [j for j in tab if j.comment == BACKUP_TAG]
        wanted = (BACKUP_SLICES, self.backup_command) if self.backup_command else None
        if wanted and [(str(j.slices), j.command) for j in lines] == [wanted]:
            return []
        changes = []
        for job in lines:
            tab.remove(job)
            changes.append("removed the nightly backup line")
        if wanted:
            job = tab.new(command=self.backup_command, comment=BACKUP_TAG)
            job.setall(BACKUP_SLICES)
            changes = ["added the nightly backup line" if not lines else "updated the nightly backup line"]
        return changes

# What says where this install's configuration and state are, when not in the default places:
# cron starts its commands with an environment of its own, so a line carries them.
CONFIG_ENV = ("NANOCLAW_CONFIG", "NANOCLAW_CONFIG_DIR", "NANOCLAW_STATE_DIR", "NANOCLAW_RUNTIME_DIR")


def nanoclaw_command() -> str:
    """How cron runs ``nanoclaw``: this install's own executable, with this process's
    configuration paths (``NANOCLAW_CONFIG``...) where they are set."""
    import sys
    exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0].endswith("nanoclaw") else None
    env = "".join(f"{key}={shlex.quote(os.environ[key])} " for key in CONFIG_ENV if os.environ.get(key))
    run = shlex.quote(str(exe)) if exe and exe.exists() else f"{shlex.quote(sys.executable)} -m nanoclaw"
    return (env + run).replace("%", "\\%")  # cron reads an unescaped % as the command's end


def fire_command() -> str:
    """How a timer runs ``nanoclaw tasks fire``."""
    return f"{nanoclaw_command()} tasks fire"
