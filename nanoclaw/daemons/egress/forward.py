"""A plain http:// request in absolute form, sent to the checked address with the Host the
URL names (RFC 9112 3.2.2: a proxy ignores the agent's own Host header)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from nanoclaw.core.egress import Refusal
from nanoclaw.core.http_serve import cut_off, end_to_end
from nanoclaw.daemons.egress.admit import Cut, admit, count

if TYPE_CHECKING:
    from nanoclaw.daemons.egress import Connection, EgressDaemon


async def handle(daemon: EgressDaemon, conn: Connection, request: web.BaseRequest) -> web.StreamResponse:
    policy = daemon.cfg.egress_for(conn.folder)
    try:
        target = URL(request.raw_path, encoded=True)
        scheme, raw_host, port = target.scheme, target.raw_host or "", target.port
    except ValueError:
        scheme, raw_host, port = "", "", None
    if scheme != "http" or not raw_host or port is None:
        why = ("an https:// URL goes through CONNECT" if scheme == "https"
               else "a proxy request needs an absolute http:// URL")
        return daemon.refuse(conn, Refusal("bad-request", why), 400)
    addresses, refusal = await admit(daemon, conn, policy, raw_host, port)
    if refusal is not None:
        return refusal
    headers = end_to_end(request.headers)
    # host[:port] as the URL names it; never userinfo (http://user:pass@host/)
    headers["Host"] = (f"[{raw_host}]" if ":" in raw_host else raw_host) + \
        (f":{target.explicit_port}" if target.explicit_port else "")

    async def body():
        async for chunk in request.content.iter_any():
            count(daemon, conn, policy, outbound=len(chunk))
            yield chunk

    try:
        error: Exception = OSError("no address")
        for ip in addresses:
            conn.ip = str(ip)
            host = f"[{ip}]" if ip.version == 6 else str(ip)
            url = URL(f"http://{host}:{port}{target.raw_path_qs}", encoded=True)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=policy.connect_timeout,
                                            sock_read=policy.idle_timeout)
            try:
                upstream = await daemon.session.request(
                    request.method, url, headers=headers, allow_redirects=False, timeout=timeout,
                    data=body() if request.body_exists else None)
            except aiohttp.ClientConnectorError as exc:
                error = exc  # nothing was sent: the next address may answer
                continue
            try:
                resp, broken = await _relay(request, upstream,
                                            lambda chunk: count(daemon, conn, policy, inbound=len(chunk)))
            finally:
                upstream.release()
            if broken and conn.verdict == "allowed":
                conn.verdict, conn.rule, conn.detail = "failed", "upstream", broken
            resp.force_close()
            return resp
        return daemon.refuse(conn, Refusal("connect", f"cannot connect: {error}"), 502, "failed")
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        if conn.verdict == "cut":
            raise Cut(conn.detail) from exc  # our own cap, surfacing through aiohttp's upload
        return daemon.refuse(conn, Refusal("upstream", f"the site failed: {exc!r}"), 502, "failed")


async def _relay(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                 tap: Callable[[bytes], None]) -> tuple[web.StreamResponse, str]:
    """Stream the site's answer back as it arrives; bodies pass undecoded, so the length and
    encoding stay the site's. ``tap`` sees each chunk before it is passed on (a byte cap cuts
    first). Returns the response and, if either side broke mid-way, why (the connection is
    then dropped)."""
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers))
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            tap(chunk)
            await resp.write(chunk)
        await resp.write_eof()
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
        cut_off(request)
        return resp, f"cut short: {exc!r}"
    return resp, ""
