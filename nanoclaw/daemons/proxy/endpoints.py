"""What the API relay lets through: the request target, parsed once; the endpoints the
agent's CLI uses; the ``anthropic-beta`` values it sends.

The upstream URL is built from what is parsed here (an endpoint's path is this table's
own string, never the agent's), so what is checked is what is sent: a fragment, an
absolute URL, dot segments or an encoded separator cannot make the API see another
path than the one the checks saw.

How the lists were found: the real agent image (claude-agent-sdk's bundled ``claude``
CLI) was run against the fake Messages API (``tests/fake_anthropic.py``) through the
relay, for a session with tool use (Bash, Read, Write, Glob, Grep, TodoWrite,
WebSearch, WebFetch, our MCP tool) and a resumed session; every request it made was
``POST /v1/messages?beta=true`` with the beta values listed below.
``tests/daemons/proxy/test_endpoints.py::test_the_real_agents_session_stays_on_the_allowlist`` repeats
that session, so a CLI that starts calling anything else fails it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode


@dataclass(frozen=True)
class Endpoint:
    method: str
    path: str
    metered: bool  # generates: models, budgets, usage, tools all apply
    query: frozenset[str] = frozenset({"beta"})  # the query keys it may carry


ENDPOINTS = {(e.method, e.path): e for e in (
    Endpoint("POST", "/v1/messages", metered=True),
    # Not seen in the recorded session; the CLI counts tokens with it for its context view.
    # It generates nothing and costs nothing, and its body gets the same model and tool checks.
    Endpoint("POST", "/v1/messages/count_tokens", metered=False),
)}

# The anthropic-beta values the CLI sent in the recorded session, and the relay's own
# (OAuth). Anything else (the Files API, batches, the MCP connector, code execution,
# skills, ...) is dropped; [api] betas adds values a newer CLI needs.
BETAS = frozenset({
    "claude-code-20250219", "interleaved-thinking-2025-05-14", "context-management-2025-06-27",
    "per-turn-control-2026-07-01", "mid-conversation-tool-changes-2026-07-01", "thinking-token-count-2026-05-13",
    "effort-2025-11-24", "thinking-display-updates-2026-08-18", "oauth-2025-04-20",
})

# RFC 3986 pchar, "/" and "?" (a target's path and query); anything else is refused.
_TARGET_CHARS = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*\Z")
_QUERY_VALUE = re.compile(r"[A-Za-z0-9_.\-]{0,64}\Z")


class BadTarget(ValueError):
    """A request target the relay does not pass; the text says why."""


@dataclass(frozen=True)
class Target:
    path: str
    query: tuple[tuple[str, str], ...] = ()

    @property
    def query_string(self) -> str:
        return urlencode(self.query)


def parse_target(raw: str) -> Target:
    """An HTTP request target in origin form (``/path?query``), or BadTarget."""
    if not raw.startswith("/") or raw.startswith("//"):
        raise BadTarget("only a path is relayed (origin form), not an absolute URL or an authority")
    if "#" in raw:
        raise BadTarget("a request target has no fragment")
    if not _TARGET_CHARS.match(raw):
        raise BadTarget("the target holds characters no API path has")
    path, _, query = raw.partition("?")
    if "%" in path:
        raise BadTarget("no API path is percent-encoded")
    if any(segment in ("", ".", "..") for segment in path.split("/")[1:]):
        raise BadTarget("an empty, '.' or '..' path segment")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True) if query else []
    except ValueError:
        raise BadTarget("the query is not key=value pairs") from None
    if not all(_QUERY_VALUE.match(k) and _QUERY_VALUE.match(v) for k, v in pairs):
        raise BadTarget("a query key or value holds characters the API's do not")
    return Target(path, tuple(pairs))


def betas(values: list[str], extra: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """The ``anthropic-beta`` header values split on commas: (passed, dropped)."""
    allowed = BETAS | set(extra)
    passed, dropped = [], []
    for value in values:
        for beta in (b.strip() for b in value.split(",")):
            if beta:
                (passed if beta in allowed else dropped).append(beta)
    return list(dict.fromkeys(passed)), list(dict.fromkeys(dropped))
