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
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from nanoclaw.core.models import Task
from nanoclaw.core.protocol import TIMER_PREFIX as PREFIX
from nanoclaw.core.safefs import write_atomic
from nanoclaw.core.schedules import parse_interval


def spec_of(task: Task) -> dict:
    """What a task's timer must be, as plain data."""
    spec: dict = {"id": task.id, "kind": task.schedule_type, "group": task.group.folder}
    if task.schedule_type == "interval":
        spec["interval"] = parse_interval(task.schedule_value)
    else:
        from nanoclaw.core.tasks import schedule_of
        spec["oncalendar"] = list(schedule_of(task).oncalendar())
    return spec


def specs_of(tasks: Sequence[Task]) -> dict[int, dict]:
    return {t.id: spec_of(t) for t in tasks}


class TimerSpecs:
    """The scheduler's half of the systemd backend: one JSON spec per active task."""

    name = "systemd"

    def __init__(self, spec_dir: Path) -> None:
        self.dir = Path(spec_dir)

    def reconcile(self, tasks: Sequence[Task]) -> list[str]:
        self.dir.mkdir(parents=True, exist_ok=True)
        want = {f"{PREFIX}{ident}.json": json.dumps(spec, sort_keys=True) + "\n"
                for ident, spec in specs_of(tasks).items()}
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
        self.backup_command = backup_command  # "": no nightly backup line

    def _tab(self):
        from crontab import CronTab
        if self.tabfile is not None:
            if not Path(self.tabfile).exists():
                Path(self.tabfile).write_text("")
            return CronTab(tabfile=str(self.tabfile))
        return CronTab(user=self.user)

    def line_for(self, task: Task) -> tuple[str, str]:
        """(cron schedule, command) for a task."""
        base = f"{self.fire_command} {task.id}"
        if task.schedule_type == "cron" and task.timezone == self.host_tz:
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
        want = {t.id: self.line_for(t) for t in tasks}
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
                job.setall(slices)
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


def nanoclaw_command() -> str:
    """How cron runs ``nanoclaw``: this install's own executable."""
    import sys
    exe = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0].endswith("nanoclaw") else None
    if exe and exe.exists():
        return shlex.quote(str(exe))
    return f"{shlex.quote(sys.executable)} -m nanoclaw"


def fire_command() -> str:
    """How a timer runs ``nanoclaw tasks fire``."""
    return f"{nanoclaw_command()} tasks fire"
