"""Usage, cost and budgets: what each API call spent, and whether a group may spend more.

DESCRIPTION
    The API relay (``nanoclaw-proxy``) sees every API call and reads the usage
    the API reports as the answer passes (its meter,
    ``nanoclaw/daemons/proxy/meter.py``). Each call becomes one
    :class:`~nanoclaw.core.models.Usage` row (group, team member, job, the owner's
    local day), priced from ``[usage.prices]`` (an unknown model's cost is
    unknown, never guessed).

    Budgets are per day and per month, in USD or tokens, for one group
    (``[budgets.groups.<folder>]``) or all groups together (``[budgets]``);
    the owner's overrides (``nanoclaw budget``, or the main chat) are rows of
    ``BudgetLimit`` and win over the configuration. :func:`exceeded` is asked
    before each call (the proxy), before a job starts and before a scheduled
    task runs (the queue). The call that crosses a line completes; the next one
    is refused.

    Tokens, for budgets and totals, are all four kinds together: input, output,
    cache writes and cache reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from peewee import Case, fn

from nanoclaw.core.config import Config
from nanoclaw.core.costs import Price
from nanoclaw.core.models import BudgetLimit, BudgetRaise, Usage, db

PERIODS = ("day", "month")
UNITS = ("usd", "tokens")
ALL = "*"  # the scope of a budget for all groups together


class BudgetError(ValueError):
    """A budget change that is refused; the text says why."""


# -- reading usage from answers -----------------------------------------------------

@dataclass
class Counts:
    """The tokens one answer reported."""

    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    cache_write_tokens: int = 0
    cache_read_tokens: int = 0
    web_search_requests: int = 0  # server-side tool use, priced per request
    web_fetch_requests: int = 0
    seen: bool = False  # the answer reported usage at all

    def take(self, usage: object) -> None:
        """Apply an API ``usage`` object: later reports of a count replace earlier ones (a
        stream's ``message_delta`` carries the totals so far)."""
        if not isinstance(usage, dict):
            return
        for attr, key in (("input_tokens", "input_tokens"), ("output_tokens", "output_tokens"),
                          ("cache_write_tokens", "cache_creation_input_tokens"),
                          ("cache_read_tokens", "cache_read_input_tokens")):
            value = usage.get(key)
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                setattr(self, attr, value)
                self.seen = True
        tools = usage.get("server_tool_use")
        if isinstance(tools, dict):
            for key in ("web_search_requests", "web_fetch_requests"):
                value = tools.get(key)
                if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                    setattr(self, key, value)

    @property
    def tokens_in(self) -> int:
        return self.input_tokens + self.cache_write_tokens + self.cache_read_tokens

    @property
    def total(self) -> int:
        return self.tokens_in + self.output_tokens


# -- prices -------------------------------------------------------------------------

def price_of(cfg: Config, model: str) -> Price | None:
    """The price row for a model id: the longest configured name it starts with."""
    best = max((name for name in cfg.usage.prices if model == name or model.startswith(name + "-")
                or model.startswith(name + "@")), key=len, default=None)
    return cfg.usage.prices[best] if best else None


def cost(cfg: Config, counts: Counts, price: Price | None = None) -> float | None:
    """The estimated cost of one call in USD (its tokens at its model's price, or at ``price``
    when given, and its server-side tool requests), or None when there is no price."""
    price = price or price_of(cfg, counts.model)
    if price is None:
        return None
    return ((counts.input_tokens * price.input + counts.output_tokens * price.output
             + counts.cache_write_tokens * price.cache_write + counts.cache_read_tokens * price.cache_read) / 1e6
            + counts.web_search_requests * cfg.usage.web_search_usd
            + counts.web_fetch_requests * cfg.usage.web_fetch_usd)


# -- periods ------------------------------------------------------------------------

def local_now(cfg: Config, at: float | None = None) -> datetime:
    return datetime.fromtimestamp(at if at is not None else datetime.now().timestamp(), ZoneInfo(cfg.tz))


def day_of(cfg: Config, at: float | None = None) -> str:
    """The owner's local date (a Usage row's ``day``)."""
    return local_now(cfg, at).strftime("%Y-%m-%d")


def period_days(cfg: Config, period: str, at: float | None = None) -> tuple[str, str]:
    """The first and last ``day`` of the period that holds ``at``."""
    today = local_now(cfg, at).date()
    if period == "day":
        return today.isoformat(), today.isoformat()
    return f"{today:%Y-%m}-01", f"{today:%Y-%m}-31"  # compared as text: every day of the month


def resets_at(cfg: Config, period: str, at: float | None = None) -> datetime:
    """When the period holding ``at`` ends: the owner's next midnight, or the next month's first."""
    now = local_now(cfg, at)
    if period == "day":
        nxt = (now + timedelta(days=1)).date()
    else:
        nxt = (now.replace(day=1) + timedelta(days=32)).date().replace(day=1)
    return datetime(nxt.year, nxt.month, nxt.day, tzinfo=now.tzinfo)


# -- spending and budgets -----------------------------------------------------------

@dataclass(frozen=True)
class Spent:
    usd: float  # priced calls only
    tokens: int
    unpriced: int  # calls whose model has no price


def spent(cfg: Config, scope: str, period: str, at: float | None = None) -> Spent:
    """What a group (or ``*``, all groups) spent in the period holding ``at``."""
    first, last = period_days(cfg, period, at)
    tokens = (Usage.input_tokens + Usage.output_tokens + Usage.cache_write_tokens + Usage.cache_read_tokens)
    query = Usage.select(fn.COALESCE(fn.SUM(Usage.cost_usd), 0), fn.COALESCE(fn.SUM(tokens), 0),
                         fn.COUNT(Usage.id) - fn.COUNT(Usage.cost_usd)).where(Usage.day.between(first, last))
    if scope != ALL:
        query = query.where(Usage.group == scope)
    usd, total, unpriced = query.tuples().get()
    return Spent(float(usd), int(total), int(unpriced))


@dataclass(frozen=True)
class Limit:
    scope: str
    period: str
    unit: str
    limit: float
    source: str  # config, or who set the override


def limits(cfg: Config, scope: str, *more: str, at: float | None = None) -> list[Limit]:
    """The budgets in force at ``at`` (now) of a scope (and of ``more`` scopes, in that order;
    one query for all: the proxy asks before every call). Overrides win over configuration,
    and a raise for today only (:func:`raise_today`) over both until it lapses; 0 (none) is
    left out."""
    scopes = (scope, *more)
    out: dict[tuple[str, str, str], Limit] = {}
    for name in scopes:
        conf = cfg.budget if name == ALL else cfg.budget_groups.get(name)
        for period in PERIODS:
            for unit in UNITS:
                value = float(getattr(conf, f"{period}_{unit}", 0) or 0) if conf else 0.0
                out[(name, period, unit)] = Limit(name, period, unit, value, "config")
    rows = BudgetLimit.select(BudgetLimit.scope, BudgetLimit.period, BudgetLimit.unit, BudgetLimit.limit,
                              BudgetLimit.set_by).where(BudgetLimit.scope.in_(scopes)).tuples()
    for name, period, unit, value, by in rows:
        if (name, period, unit) in out:
            out[(name, period, unit)] = Limit(name, period, unit, value, by)
    when = datetime.now().timestamp() if at is None else at
    raised = BudgetRaise.select(BudgetRaise.scope, BudgetRaise.period, BudgetRaise.unit, BudgetRaise.limit,
                                BudgetRaise.set_by).where(BudgetRaise.scope.in_(scopes), BudgetRaise.until > when)
    for name, period, unit, value, by in raised.tuples():
        below = out.get((name, period, unit))
        if below is not None and 0 < below.limit < value:  # a raise never lowers, nor limits what had none
            out[(name, period, unit)] = Limit(name, period, unit, value, f"{by}, today only")
    return [lim for lim in out.values() if lim.limit > 0]


@dataclass(frozen=True)
class Exceeded:
    """A budget that is used up: whose, which, and when it resumes."""

    folder: str  # the group that may not spend
    limit: Limit
    used: float
    resumes: datetime
    tz: str

    @property
    def key(self) -> str:
        """One notice per group, budget, period and limit (a raised limit spent again is news)."""
        return (f"budget:{self.folder}:{self.limit.scope}:{self.limit.period}:{self.limit.unit}:"
                f"{self.resumes:%Y-%m-%d}:{self.limit.limit:g}")

    def text(self, name: str) -> str:
        amount = (f"${self.limit.limit:.2f}" if self.limit.unit == "usd"
                  else f"{int(self.limit.limit):,} tokens")
        when = "today" if self.limit.period == "day" else "this month"
        resume = (f"at {self.resumes:%H:%M} {self.tz}" if self.limit.period == "day"
                  else f"on {self.resumes:%-d %B} at {self.resumes:%H:%M} {self.tz}")
        if self.limit.scope == ALL:
            return f"All groups together have used their {amount} for {when}; {name} resumes {resume}"
        return f"{name} has used its {amount} for {when}; it resumes {resume}"


def exceeded(cfg: Config, folder: str, at: float | None = None,
             spent_of: Callable[[str, str, float | None], Spent] | None = None,
             in_force: list[Limit] | None = None) -> Exceeded | None:
    """The first budget of the group (or of all groups) that is used up, or None. ``spent_of``
    (scope, period, at) replaces the database's sums (the API relay's running totals);
    ``in_force``, the group's limits already read."""
    for lim in limits(cfg, folder, ALL, at=at) if in_force is None else in_force:
        used = (spent_of or (lambda *a: spent(cfg, *a)))(lim.scope, lim.period, at)
        value = used.usd if lim.unit == "usd" else used.tokens
        if value >= lim.limit:
            return Exceeded(folder, lim, value, resets_at(cfg, lim.period, at), cfg.tz)
    return None


def parse_amount(text: str, tokens: bool = False) -> float:
    """An owner's amount: USD ("2", "2.50", "$2.50") or tokens ("2000000", "2M", "500k")."""
    raw = text.strip().replace(",", "").replace("_", "")
    if not tokens:
        raw = raw.removeprefix("$")
    scale = 1
    if tokens and raw[-1:].lower() in ("k", "m"):
        scale = 1000 if raw[-1].lower() == "k" else 1_000_000
        raw = raw[:-1]
    try:
        value = float(raw) * scale
    except ValueError:
        raise BudgetError(f"{text!r} is not an amount of {'tokens' if tokens else 'USD'}") from None
    if not 0 <= value < 1e12 or value != value:
        raise BudgetError(f"{text!r}: an amount is 0 (no budget) or more")
    return float(int(value)) if tokens else round(value, 4)


def set_limit(cfg: Config, scope: str, period: str, unit: str, limit: float | None = None, *,
              add: float | None = None, by: str = "cli") -> Limit:
    """Store the owner's budget: a new ``limit``, or ``add`` to the one in force."""
    if period not in PERIODS:
        raise BudgetError(f"period must be day or month, not {period!r}")
    if unit not in UNITS:
        raise BudgetError(f"unit must be usd or tokens, not {unit!r}")
    with db.atomic("IMMEDIATE"):
        if add is not None:
            current = next((lim.limit for lim in limits(cfg, scope) if (lim.period, lim.unit) == (period, unit)), 0.0)
            limit = current + add
        assert limit is not None
        BudgetLimit.insert(scope=scope, period=period, unit=unit, limit=limit, set_by=by,
                           set_at=datetime.now().timestamp()).on_conflict_replace().execute()
    return Limit(scope, period, unit, limit, by)


def raise_today(cfg: Config, scope: str, period: str, unit: str, add: float, *, by: str = "cli",
                at: float | None = None) -> tuple[Limit, datetime]:
    """Raise a budget in force by ``add`` for today only: the raise lapses at the owner's next
    midnight (whatever the period), and the budget is then what it was. Returns the limit now
    in force and when the raise lapses."""
    if period not in PERIODS:
        raise BudgetError(f"period must be day or month, not {period!r}")
    if unit not in UNITS:
        raise BudgetError(f"unit must be usd or tokens, not {unit!r}")
    when = datetime.now().timestamp() if at is None else at
    until = resets_at(cfg, "day", when)
    with db.atomic("IMMEDIATE"):
        current = next((lim.limit for lim in limits(cfg, scope, at=when) if (lim.period, lim.unit) == (period, unit)),
                       0.0)
        if not current:
            raise BudgetError(f"{'all groups have' if scope == ALL else scope + ' has'} no {period} {unit} budget "
                              "to raise (set one: nanoclaw budget set)")
        BudgetRaise.insert(scope=scope, period=period, unit=unit, limit=current + add, until=until.timestamp(),
                           set_by=by, set_at=when).on_conflict_replace().execute()
    return Limit(scope, period, unit, current + add, f"{by}, today only"), until


def record(cfg: Config, folder: str, agent: str, job: int | None, counts: Counts, streamed: bool,
           at: float, price: Price | None = None) -> float | None:
    """Store one call's usage; returns its estimated cost (None: unknown). ``price`` is used
    when the answer's model has none of its own (the price the call was admitted at)."""
    usd = cost(cfg, counts, None if price_of(cfg, counts.model) else price)
    Usage.insert(at=at, day=day_of(cfg, at), group=folder, agent=agent, job=job, model=counts.model,
                 input_tokens=counts.input_tokens, output_tokens=counts.output_tokens,
                 cache_write_tokens=counts.cache_write_tokens, cache_read_tokens=counts.cache_read_tokens,
                 web_search_requests=counts.web_search_requests, web_fetch_requests=counts.web_fetch_requests,
                 cost_usd=usd, streamed=streamed).execute()
    return usd


def money(usd: float | None) -> str:
    return "unknown" if usd is None else f"${usd:.4f}" if usd < 1 else f"${usd:.2f}"


def tokens(n: int) -> str:
    return f"{n / 1e6:.2f}M" if n >= 1_000_000 else f"{n / 1e3:.1f}k" if n >= 10_000 else str(n)


def _cost_cell(usd: float, unpriced: int, calls: int) -> str:
    if unpriced == calls:
        return "unknown"
    return money(usd) + (f" +{int(unpriced)} unpriced" if unpriced else "")


def report(cfg: Config, folder: str | None, days: int, by: str, at: float | None = None) -> list[str]:
    """``nanoclaw usage``: a table of the last ``days`` days (today included), one row per
    model, group, agent, day or run (a job: its agent and the model each of its calls named),
    and a total."""
    today = local_now(cfg, at).date()
    first = (today - timedelta(days=days - 1)).isoformat()
    key = {"model": Usage.model, "group": Usage.group, "day": Usage.day,
           # the lead by the group's name, a member as group/member
           "agent": Case(None, [(Usage.agent == "", Usage.group)], Usage.group.concat("/").concat(Usage.agent)),
           "run": Case(None, [(Usage.agent == "", Usage.group)], Usage.group.concat("/").concat(Usage.agent))
           .concat(" job ").concat(fn.COALESCE(Usage.job, "-")).concat(" ").concat(Usage.model)}[by]
    query = (Usage.select(key.alias("key"), fn.COUNT(Usage.id), fn.SUM(Usage.input_tokens),
                          fn.SUM(Usage.output_tokens), fn.SUM(Usage.cache_write_tokens),
                          fn.SUM(Usage.cache_read_tokens), fn.COALESCE(fn.SUM(Usage.cost_usd), 0),
                          fn.COUNT(Usage.id) - fn.COUNT(Usage.cost_usd))
             .where(Usage.day >= first).group_by(key).order_by(key))
    if folder is not None:
        query = query.where(Usage.group == folder)
    rows = list(query.tuples())
    span = "today" if days == 1 else f"the last {days} days ({first} to {today.isoformat()})"
    title = f"usage of {folder or 'all groups'}, {span}, by {by} ({cfg.tz}; cost is an estimate):"
    if not rows:
        return [title, "  no API calls"]
    width = 48 if by == "run" else 28
    head = f"{by.upper():<{width}} {'CALLS':>6} {'INPUT':>8} {'OUTPUT':>8} {'CACHE W':>8} {'CACHE R':>8}  COST"
    lines = [title, head]
    total = [0, 0, 0, 0, 0, 0.0, 0]
    for name, *values in rows:
        lines.append(f"{(name or '-')[:width]:<{width}} {values[0]:>6} {tokens(values[1]):>8} {tokens(values[2]):>8} "
                     f"{tokens(values[3]):>8} {tokens(values[4]):>8}  {_cost_cell(values[5], values[6], values[0])}")
        total = [a + b for a, b in zip(total, values, strict=True)]
    lines.append(f"{'TOTAL':<{width}} {total[0]:>6} {tokens(total[1]):>8} {tokens(total[2]):>8} {tokens(total[3]):>8} "
                 f"{tokens(total[4]):>8}  {_cost_cell(total[5], total[6], total[0])}")
    return lines


def today_line(cfg: Config, at: float | None = None) -> str:
    """``nanoclaw status``: today's total, and any budget that is spent."""
    day = day_of(cfg, at)
    calls, usd, total, unpriced = (Usage.select(
        fn.COUNT(Usage.id), fn.COALESCE(fn.SUM(Usage.cost_usd), 0),
        fn.COALESCE(fn.SUM(Usage.input_tokens + Usage.output_tokens + Usage.cache_write_tokens
                           + Usage.cache_read_tokens), 0),
        fn.COUNT(Usage.id) - fn.COUNT(Usage.cost_usd)).where(Usage.day == day).tuples().get())
    line = f"{_cost_cell(usd, unpriced, calls) if calls else '$0.00'} in {calls} API call(s), {tokens(total)} tokens"
    return line
