"""Schedules: validating them, explaining them, and turning them into timers.

Three kinds, as the agent's ``schedule_task`` tool and ``nanoclaw tasks add``
take them:

- ``cron``: five fields (minute hour day-of-month month day-of-week), names
  (``MON``, ``JAN``), ranges, steps, lists, and the ``@daily``-style macros;
- ``interval``: ``90s``, ``30m``, ``2h``, ``1d`` (or plain seconds);
- ``once``: an ISO date-time, in the task's timezone unless it names an offset.

Cron is converted to systemd ``OnCalendar=`` by value sets, never by textual
substitution, so every form means the same to both. Where cron and systemd
disagree — cron runs when *either* a restricted day-of-month or a restricted
day-of-week matches, systemd only when both do — the conversion emits one
``OnCalendar=`` per alternative. What cannot be expressed (``@reboot``, Quartz
``L``/``W``/``#``/``?``) is refused with the reason.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterError, croniter


class ScheduleError(ValueError):
    """A schedule that is invalid or cannot be represented; the text explains."""


MACROS = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0", "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
MONTHS = {m: i for i, m in enumerate(
    ["JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"], 1)}
DAYS = {d: i for i, d in enumerate(["SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"])}
SD_DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"]
FIELDS = (("minute", 0, 59, {}), ("hour", 0, 23, {}), ("day-of-month", 1, 31, {}),
          ("month", 1, 12, MONTHS), ("day-of-week", 0, 7, DAYS))
_INTERVAL_RE = re.compile(r" *(\d+) *(s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?)? *", re.I)  # fullmatch
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def check_timezone(tz: str) -> ZoneInfo:
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"unknown timezone {tz!r} (use a name like Europe/Berlin)") from None


# -- cron -------------------------------------------------------------------------
# croniter parses and expands; what is ours is refusing, field by field and in
# words, what systemd cannot express or standard cron means otherwise (croniter
# accepts Quartz's L and ?, and reads a backwards range as one that wraps).

def _number(text: str, names: dict[str, int]) -> int | None:
    return names.get(text.upper(), int(text) if text.isdigit() else None)


def _check_field(part: str, name: str, lo: int, hi: int, names: dict[str, int], position: int) -> None:
    for item in part.split(","):
        if not item:
            raise ScheduleError(f"{name}: empty list item in {part!r}")
        bare = re.sub("|".join(names), "", item.upper()) if names else item.upper()  # JUL, WED are names
        if re.search(r"[LW#?]", bare):
            raise ScheduleError(f"{name}: {item!r} is Quartz syntax, not standard cron")
        base, _, step = item.partition("/")
        if step and (not step.isdigit() or int(step) == 0):
            raise ScheduleError(f"{name}: bad step in {item!r}")
        a, dash, b = base.partition("-")
        if dash and None not in (start := _number(a, names), end := _number(b, names)) and end < start:
            raise ScheduleError(f"{name}: range {base!r} runs backwards")
    probe = ["*"] * 5
    probe[position] = part
    try:
        croniter.expand(" ".join(probe))
    except CroniterError as exc:
        if "out of range" in str(exc):
            raise ScheduleError(f"{name}: {part!r} is out of range {lo}-{hi}") from None
        raise ScheduleError(f"{name}: {part!r} is not a number" + (" or name" if names else "")) from None


@dataclass(frozen=True)
class Cron:
    """A parsed five-field cron expression as value sets."""

    expr: str
    minutes: frozenset[int]
    hours: frozenset[int]
    doms: frozenset[int]
    months: frozenset[int]
    dows: frozenset[int]
    dom_restricted: bool
    dow_restricted: bool


# A cron value is one line of printable characters: five fields (or a macro) separated by
# spaces (stored with one between each). Anything else (a newline above all) is refused before it is stored, since a
# crontab line or a timer unit is made from it.
_CRON_TEXT = re.compile(r"[!-~]+(?: +[!-~]+){4}|@[A-Za-z]+")


def parse_cron(expr: str) -> Cron:
    """Validate a cron expression; raise ScheduleError saying what is wrong."""
    text = expr.strip(" ")
    if any(ch in text for ch in "\r\n\x0b\x0c"):
        raise ScheduleError(f"a cron expression is one line; {expr!r} has a line break")
    if text.lower() == "@reboot":
        raise ScheduleError("@reboot is not a time: use a 'once' task or a service instead")
    if text.startswith("@"):
        if text.lower() not in MACROS:
            raise ScheduleError(f"unknown macro {text!r} (known: {', '.join(sorted(MACROS))})")
        text = MACROS[text.lower()]
    parts = text.split()
    if len(parts) != 5:
        raise ScheduleError(f"a cron expression has 5 fields (minute hour day month weekday); "
                            f"{expr!r} has {len(parts)}")
    if not _CRON_TEXT.fullmatch(text):
        raise ScheduleError(f"a cron expression is 5 fields separated by spaces, in plain characters; "
                            f"{expr!r} is not")
    for position, (part, spec) in enumerate(zip(parts, FIELDS, strict=True)):
        _check_field(part, *spec, position)
    expanded, _ = croniter.expand(text)
    sets = [frozenset(range(lo, (6 if name == "day-of-week" else hi) + 1)) if values == ["*"]
            else frozenset(v for v in values) for values, (name, lo, hi, _) in zip(expanded, FIELDS, strict=True)]
    sets[4] = frozenset(0 if d == 7 else d for d in sets[4])  # 7 is Sunday too
    return Cron(expr.strip(), *sets, dom_restricted=parts[2] != "*", dow_restricted=parts[4] != "*")


def _render(values: frozenset[int], lo: int, hi: int, width: int = 2) -> str:
    """A systemd calendar component: '*', 'a..b', 'a/step' (to the end) or a list."""
    ordered = sorted(values)
    if ordered == list(range(lo, hi + 1)):
        return "*"
    if len(ordered) >= 2 and ordered == list(range(ordered[0], ordered[-1] + 1)):
        return f"{ordered[0]:0{width}d}..{ordered[-1]:0{width}d}"
    if len(ordered) >= 3:
        step = ordered[1] - ordered[0]
        if ordered == list(range(ordered[0], hi + 1, step)):
            return f"{ordered[0]:0{width}d}/{step}"
    return ",".join(f"{v:0{width}d}" for v in ordered)


def _render_dows(dows: frozenset[int]) -> str:
    order = [1, 2, 3, 4, 5, 6, 0]  # systemd weeks start on Monday
    return ",".join(SD_DAYS[d] for d in order if d in dows)


def cron_to_oncalendar(expr: str, tz: str) -> list[str]:
    """systemd ``OnCalendar=`` values equivalent to a cron expression in ``tz``."""
    check_timezone(tz)
    c = parse_cron(expr)
    time_part = f"{_render(c.hours, 0, 23)}:{_render(c.minutes, 0, 59)}:00"
    month = _render(c.months, 1, 12)
    dom = _render(c.doms, 1, 31)

    def line(dows: str, days: str) -> str:
        return f"{dows + ' ' if dows else ''}*-{month}-{days} {time_part} {tz}"

    all_dows = len(c.dows) == 7
    if c.dom_restricted and c.dow_restricted:
        # cron: either matches; systemd: both must. One line per alternative
        # (and if either alternative is "every day", the union is every day).
        if all_dows or len(c.doms) == 31:
            return [line("", "*")]
        return [line("", dom), line(_render_dows(c.dows), "*")]
    if c.dow_restricted and not all_dows:
        return [line(_render_dows(c.dows), "*")]
    return [line("", dom)]


# -- intervals and one-off times --------------------------------------------------

def parse_interval(text: str) -> int:
    """Seconds in an interval like '30m', '2h', '90s', '1d' or '3600'."""
    m = _INTERVAL_RE.fullmatch(text or "")
    if not m:
        raise ScheduleError(f"bad interval {text!r}: use a number with s, m, h or d (e.g. 30m, 2h)")
    seconds = int(m.group(1)) * _UNIT_SECONDS[(m.group(2) or "s")[0].lower()]
    if seconds < 60:
        raise ScheduleError(f"interval {text!r} is shorter than a minute")
    return seconds


def parse_once(text: str, tz: str) -> datetime:
    """An aware datetime for a one-off run; naive times are in ``tz``."""
    zone = check_timezone(tz)
    try:
        when = datetime.fromisoformat(text.strip().replace("Z", "+00:00"))
    except ValueError:
        raise ScheduleError(f"bad time {text!r}: use ISO format like 2026-12-01T09:00") from None
    return when if when.tzinfo else when.replace(tzinfo=zone)


def seconds_text(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


# -- one entry point --------------------------------------------------------------

@dataclass(frozen=True)
class Schedule:
    """A validated schedule: what systemd needs, and words for the owner."""

    kind: str  # cron, interval, once
    value: str  # normalised
    tz: str

    def next_run(self, after: datetime | None = None, last_run: float | None = None) -> datetime | None:
        zone = ZoneInfo(self.tz)
        now = after or datetime.now(zone)
        if self.kind == "cron":
            expr = MACROS[self.value.lower()] if self.value.startswith("@") else parse_cron(self.value).expr
            try:
                return croniter(expr, now.astimezone(zone)).get_next(datetime)
            except CroniterError:  # e.g. '0 0 31 2 *': every field valid, no such day
                raise ScheduleError(f"cron {self.value!r} never fires: no date matches all its fields") from None
        if self.kind == "interval":
            base = datetime.fromtimestamp(last_run, zone) if last_run else now
            return base + timedelta(seconds=parse_interval(self.value))
        when = parse_once(self.value, self.tz).astimezone(zone)
        return when if last_run is None else None

    def oncalendar(self) -> list[str]:
        if self.kind == "cron":
            return cron_to_oncalendar(self.value, self.tz)
        if self.kind == "once":
            when = parse_once(self.value, self.tz).astimezone(ZoneInfo(self.tz))
            return [when.strftime(f"%Y-%m-%d %H:%M:%S {self.tz}")]
        return []

    def describe(self) -> str:
        """e.g. 'cron 0 9 * * * (every day at 09:00 Europe/Berlin), next: 2026-11-25 09:00 CET'."""
        nxt = self.next_run()
        when = f", next: {nxt.strftime('%Y-%m-%d %H:%M %Z')}" if nxt else ""
        if self.kind == "interval":
            return f"every {seconds_text(parse_interval(self.value))}{when}"
        if self.kind == "once":
            return f"once at {parse_once(self.value, self.tz).strftime('%Y-%m-%d %H:%M')} {self.tz}{when}"
        return f"cron {self.value} ({_explain(parse_cron(self.value))} {self.tz}){when}"


def _explain(c: Cron) -> str:
    if len(c.minutes) == 1 and len(c.hours) == 1:
        at = f"at {min(c.hours):02d}:{min(c.minutes):02d}"
    elif len(c.minutes) == 1 and len(c.hours) == 24:
        at = f"at minute {min(c.minutes)} of every hour"
    elif len(c.hours) == 24 and len(c.minutes) < 60:
        at = f"at minutes {','.join(map(str, sorted(c.minutes)))} of every hour"
    elif len(c.minutes) == 60 and len(c.hours) == 24:
        at = "every minute"
    else:
        at = f"at hours {','.join(map(str, sorted(c.hours)))}, minutes {','.join(map(str, sorted(c.minutes)))}"
    days = []
    if c.dow_restricted and len(c.dows) < 7:
        days.append("on " + ",".join(SD_DAYS[d] for d in [1, 2, 3, 4, 5, 6, 0] if d in c.dows))
    if c.dom_restricted and len(c.doms) < 31:
        days.append("on day " + ",".join(map(str, sorted(c.doms))) + " of the month")
    text = f"{at} {' or '.join(days) if days else 'every day'}"
    if len(c.months) < 12:
        text += " in month " + ",".join(map(str, sorted(c.months)))
    return text


def shortest_gap(sched: Schedule) -> int | None:
    """The least time between two runs of a schedule, in seconds (None: it runs once). For cron,
    from the times of day it names, as if every day were one of its days (never longer than
    the truth)."""
    if sched.kind == "once":
        return None
    if sched.kind == "interval":
        return parse_interval(sched.value)
    c = parse_cron(sched.value)
    times = sorted(h * 60 + m for h in c.hours for m in c.minutes)
    gaps = [b - a for a, b in zip(times, times[1:])] + [times[0] + 1440 - times[-1]]
    return 60 * min(gaps)


def validate(kind: str, value: str, tz: str) -> Schedule:
    """Check a schedule of any kind; the Schedule explains itself, ScheduleError says what is wrong."""
    check_timezone(tz)
    if not isinstance(value, str) or any(ch in value for ch in "\r\n\x0b\x0c\x00"):
        raise ScheduleError(f"a schedule is one line; {value!r} is not")
    if kind == "cron":
        parse_cron(value)
        value = " ".join(value.split())  # spaces only are left: one between fields
    elif kind == "interval":
        value = seconds_text(parse_interval(value))
    elif kind == "once":
        when = parse_once(value, tz)
        if when.timestamp() < datetime.now().timestamp() - 60:
            raise ScheduleError(f"{value!r} is in the past")
        value = when.isoformat()
    else:
        raise ScheduleError(f"schedule type must be cron, interval or once, not {kind!r}")
    sched = Schedule(kind, value, tz)
    sched.next_run()  # a schedule that can never fire is refused before anything is stored
    return sched
