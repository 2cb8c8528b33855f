"""What agents' API calls cost and may cost: the settings ``[usage]`` (allowed models, the
price table), ``[api]`` (what the API relay lets an agent have at once) and ``[budgets]``.
Read by ``core.config`` into these structs (msgspec: a key they do not declare is refused); no
I/O here."""

from __future__ import annotations

from msgspec import Struct, field


class Price(Struct, frozen=True, forbid_unknown_fields=True):
    """What one model costs, in USD per million tokens (``[usage.prices."<model>"]``)."""

    input: float
    output: float
    cache_write: float = 0.0  # writing the prompt cache (the 5-minute kind)
    cache_read: float = 0.0


# Anthropic's list prices (USD per million tokens) when this was written, matched as the longest
# prefix of the model id an answer names ("claude-sonnet-4-5-20250929" is "claude-sonnet-4-5").
# Estimates: the owner corrects or adds models in [usage.prices."<model>"].
DEFAULT_PRICES: dict[str, Price] = {
    "claude-opus-4-5": Price(5.0, 25.0, 6.25, 0.50),
    "claude-opus-4-1": Price(15.0, 75.0, 18.75, 1.50),
    "claude-opus-4": Price(15.0, 75.0, 18.75, 1.50),
    "claude-sonnet-4-5": Price(3.0, 15.0, 3.75, 0.30),
    "claude-sonnet-4": Price(3.0, 15.0, 3.75, 0.30),
    "claude-3-7-sonnet": Price(3.0, 15.0, 3.75, 0.30),
    "claude-haiku-4-5": Price(1.0, 5.0, 1.25, 0.10),
    "claude-3-5-haiku": Price(0.80, 4.0, 1.0, 0.08),
    "claude-3-haiku": Price(0.25, 1.25, 0.30, 0.03),
}


class UsageConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[usage]``: which models the proxy lets through, and what they cost."""

    # fnmatch patterns ("claude-sonnet-4-5*"); empty: any model. The proxy refuses others.
    allowed_models: tuple[str, ...] = ()
    prices: dict[str, Price] = field(default_factory=lambda: dict(DEFAULT_PRICES))
    # Server-side tools, USD per request on top of their tokens (an answer's usage counts them in
    # server_tool_use). Anthropic's tool pages as written in 2025: web search $10 per 1,000
    # searches; web fetch no charge beyond the tokens of what it fetched.
    web_search_usd: float = 0.01
    web_fetch_usd: float = 0.0


class ApiConfig(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """``[api]``: what the API relay (nanoclaw-proxy) lets an agent have at once."""

    max_calls_per_group: int = 8  # API calls in flight, a group's lead and its team together
    max_calls_per_agent: int = 4  # ... and of each of them
    max_body_bytes: int = 32 * 1024 * 1024  # one request's body (the Messages API's own limit)
    max_buffered_per_group: int = 64 * 1024 * 1024  # request bodies a group's calls hold at once
    betas: tuple[str, ...] = ()  # anthropic-beta values to pass besides the relay's own list


class Budget(Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Spending limits for one period pair (``[budgets]``: all groups together;
    ``[budgets.groups.<folder>]``: one group). 0 is no limit."""

    day_usd: float = 0.0
    month_usd: float = 0.0
    day_tokens: int = 0
    month_tokens: int = 0
