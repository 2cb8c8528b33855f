"""What a connection must pass before anything leaves, and what it may carry once open.

The group's policy by name first (no lookup for a refused name), its limits, then every
address the name resolves to (this daemon's own lookup); the caller connects only to an
address that passed. While a connection is open, each chunk is counted against the
group's byte allowance, and one past it cuts the connection.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from nanoclaw.core.egress import EgressPolicy, IPAddress, Refusal, normalize_host, parse_ip


class Cut(Exception):
    """A limit ended a connection that had started (the byte cap)."""


if TYPE_CHECKING:
    from nanoclaw.daemons.egress import Connection, EgressDaemon


def count(daemon: EgressDaemon, conn: Connection, policy: EgressPolicy, inbound: int = 0, outbound: int = 0) -> None:
    """Add a chunk to the connection's bytes and the day's; past an allowance, cut."""
    conn.bytes_in += inbound
    conn.bytes_out += outbound
    over = daemon.allowance.add(conn.folder, conn.agent, inbound + outbound, policy)
    daemon.counted()
    if over:
        conn.verdict, conn.rule = "cut", "byte-cap"  # here: the Cut may reach the handler wrapped by aiohttp
        conn.detail = over
        raise Cut(conn.detail)


async def admit(daemon: EgressDaemon, conn: Connection, policy: EgressPolicy, raw_host: str, port: int
                ) -> tuple[list[IPAddress], web.Response | None]:
    """Apply the policy before anything leaves: the addresses to try, or the refusal."""
    host = normalize_host(raw_host)
    conn.port = port
    if host is None:
        return [], daemon.refuse(conn, Refusal("bad-host", "the host name is not valid (nor is a zone id)"), 400)
    conn.host = host
    if daemon.host.error:
        return [], daemon.refuse(conn, Refusal("host-unknown", daemon.host.error), 503, "failed")
    refusal = policy.check_name(host, port)
    if refusal is not None:
        return [], daemon.refuse(conn, refusal)
    state = daemon.state(conn.folder)
    if state.active >= policy.max_tunnels:
        return [], daemon.refuse(conn, Refusal(
            "tunnel-limit", f"this group already has {state.active} connections open "
                            f"(max_tunnels = {policy.max_tunnels})"), 429)
    used_up = daemon.allowance.refusal(conn.folder, conn.agent, policy)
    if used_up is not None:
        return [], daemon.refuse(conn, used_up, 429)
    # Counted from here, the lookup included: lookups hold threads, and a group's are bounded too.
    state.active += 1
    conn.counted = True
    literal = parse_ip(host)
    if literal is not None:
        candidates = [literal]
    else:
        try:
            infos = await asyncio.wait_for(asyncio.get_running_loop().getaddrinfo(
                host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP), policy.connect_timeout)
        except (OSError, asyncio.TimeoutError) as exc:
            return [], daemon.refuse(conn, Refusal("dns", f"{host} does not resolve ({exc})"), 502, "failed")
        # a link-local answer's zone id is dropped: the address alone is judged (and refused)
        candidates = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
    allowed: list[IPAddress] = []
    first: Refusal | None = None
    for ip in candidates:
        refusal = policy.check_address(ip, daemon.host.match)
        if refusal is None:
            allowed.append(ip)
        elif first is None:
            first = refusal
    if not allowed:
        assert first is not None
        conn.ip = str(candidates[0])
        detail = first.detail if literal is not None else f"{host} resolves to local addresses only: {first.detail}"
        return [], daemon.refuse(conn, Refusal(first.rule, detail))
    return allowed, None
