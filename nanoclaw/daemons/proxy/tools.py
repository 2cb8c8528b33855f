"""Server-side tools under the group's egress policy.

``web_search`` and ``web_fetch`` run at Anthropic, and the MCP connector makes Anthropic
connect to a server the request names: web access that never passes nanoclaw-egress. So
a request carrying them is held to the same ``[egress]`` policy as the group's own
connections: refused when the group's web is off; under an allowlist, each tool's
``allowed_domains`` is set to (the agent's choice within) the group's allow list; in the
open mode the group's ``deny_domains`` become the tool's ``blocked_domains``. The API
takes one list or the other, never both, so a deny entry inside an allowed domain
cannot be said to it: such a request is refused rather than let through wider.

Client tools (no ``type``, or ``custom``, and the client-run kinds the API defines) run
in the agent's container and pass. Any other typed tool is a server tool this relay does
not know, and is refused: a new one could reach the network in a way nobody checked.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from nanoclaw.core.egress import EgressPolicy, domain_matches, normalize_host, parse_ip

POLICED = ("web_search_", "web_fetch_")
CLIENT_RUN = ("bash_", "text_editor_", "computer_", "memory_")


def police(body: dict, policy: EgressPolicy) -> str | None:
    """Hold a Messages body's server-side tools to ``policy``, changing ``body`` in place;
    the reason it is refused, or None."""
    servers = body.get("mcp_servers")
    if servers is not None:
        why = _mcp(servers, policy)
        if why:
            return why
    tools = body.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return "tools must be a list"
    for tool in tools:
        if not isinstance(tool, dict):
            return "each tool must be an object"
        kind = tool.get("type")
        if kind in (None, "custom") or (isinstance(kind, str) and kind.startswith(CLIENT_RUN)):
            continue
        if not isinstance(kind, str) or not kind.startswith(POLICED):
            return (f"the server-side tool {str(kind)[:60]!r} is not relayed by nanoclaw "
                    "(it cannot be held to this group's egress policy)")
        why = _domains(tool, policy, "web search" if kind.startswith("web_search_") else "web fetch")
        if why:
            return why
    return None


def _names(value: object) -> list[str] | None:
    """A tool's domain list, normalised; None when it is not a list of names."""
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        return None
    names = [normalize_host(v) for v in value]
    return [n for n in names if n is not None and parse_ip(n) is None]


def _domains(tool: dict, policy: EgressPolicy, what: str) -> str | None:
    if policy.mode == "off":
        return f"{what} is off for this group (its web egress is off)"
    asked = _names(tool["allowed_domains"]) if "allowed_domains" in tool else None
    if "allowed_domains" in tool and asked is None:
        return f"{what}: allowed_domains must be a list of domain names"
    if "blocked_domains" in tool and _names(tool["blocked_domains"]) is None:
        return f"{what}: blocked_domains must be a list of domain names"
    deny = [d for d in policy.deny_domains if parse_ip(d) is None]
    if policy.mode == "allowlist":
        allow = [d for d in policy.allow_domains if parse_ip(d) is None]
        keep = allow if asked is None else [a for a in asked if any(domain_matches(a, d) for d in allow)]
    elif asked is not None:
        keep = asked
    else:
        tool.pop("allowed_domains", None)
        blocked = _names(tool.get("blocked_domains", [])) or []
        if blocked or deny:
            tool["blocked_domains"] = list(dict.fromkeys(blocked + deny))
        return None
    keep = [k for k in keep if not any(domain_matches(k, d) for d in deny)]
    if not keep:
        return f"{what}: none of the domains asked for is allowed for this group"
    if any(domain_matches(d, k) for d in deny for k in keep):
        return (f"{what}: this group's deny list names a domain inside one it allows, which the API "
                "cannot be told (it takes allowed or blocked domains, not both)")
    tool["allowed_domains"] = keep
    tool.pop("blocked_domains", None)
    return None


def _mcp(servers: object, policy: EgressPolicy) -> str | None:
    """The MCP connector: Anthropic connects to each server URL, so each host is checked as a
    connection of the group's would be (by name: the address is Anthropic's to resolve)."""
    if policy.mode == "off":
        return "MCP servers are off for this group (its web egress is off)"
    if not isinstance(servers, list):
        return "mcp_servers must be a list"
    for server in servers:
        url = server.get("url") if isinstance(server, dict) else None
        try:
            parts = urlsplit(url) if isinstance(url, str) else None
            port = parts.port if parts else None
        except ValueError:
            parts = None
        host = normalize_host(parts.hostname or "") if parts and parts.scheme == "https" else None
        if host is None:
            return "each MCP server needs an https:// URL with a valid host"
        refusal = policy.check_name(host, port or 443)
        if refusal is not None:
            return f"MCP server {host}: {refusal.detail}"
    return None
