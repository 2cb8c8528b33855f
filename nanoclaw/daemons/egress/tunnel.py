"""CONNECT host:port: a byte tunnel to the checked address; TLS stays end to end."""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web
from yarl import URL

from nanoclaw.core.egress import EgressPolicy, IPAddress, Refusal
from nanoclaw.core.http_serve import CHUNK
from nanoclaw.daemons.egress.admit import Cut, admit, count

if TYPE_CHECKING:
    from nanoclaw.daemons.egress import Connection, EgressDaemon


class _TunnelInbound:
    """The agent's bytes after an accepted CONNECT.

    aiohttp treats an accepted CONNECT like an accepted upgrade: bytes after the
    head go to whatever parser is set on the connection's protocol, as its own
    WebSocketResponse does. This one queues them in a StreamReader bound to the
    transport, which pauses reading while too much waits (a fast agent cannot
    fill our memory behind a slow site).
    """

    def __init__(self, request: web.BaseRequest) -> None:
        self.reader = asyncio.StreamReader(limit=CHUNK)
        assert request.transport is not None
        self.reader.set_transport(request.transport)
        # The pure-Python parser keeps bytes that came with the head in the request's content.
        early = request.content.read_nowait()
        if early:
            self.reader.feed_data(early)
        request.protocol.set_parser(self)

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self.reader.feed_data(data)
        return False, b""

    def feed_eof(self) -> None:
        self.reader.feed_eof()


async def handle(daemon: EgressDaemon, conn: Connection, request: web.BaseRequest) -> web.StreamResponse:
    policy = daemon.cfg.egress_for(conn.folder)
    try:
        target = URL.build(authority=request.raw_path, encoded=True)
        raw_host, port = target.raw_host or "", target.explicit_port
    except ValueError:
        raw_host, port = "", None
    if port is None:
        return daemon.refuse(conn, Refusal("bad-request", "CONNECT needs host:port"), 400)
    addresses, refusal = await admit(daemon, conn, policy, raw_host, port)
    if refusal is not None:
        return refusal
    try:
        reader, writer = await _connect(conn, policy, addresses, port)
    except OSError as exc:
        return daemon.refuse(conn, Refusal("connect", f"cannot connect: {exc}"), 502, "failed")
    try:
        resp = web.StreamResponse(status=200, reason="Connection established")
        resp.force_close()
        await resp.prepare(request)
        await _pipe(daemon, conn, policy, _TunnelInbound(request).reader, writer, reader, resp)
        return resp
    finally:
        writer.close()


async def _connect(conn: Connection, policy: EgressPolicy, addresses: list[IPAddress],
                   port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """Connect to the first checked address that answers (never the name: no second lookup)."""
    error: OSError = OSError("no address")
    for ip in addresses:
        conn.ip = str(ip)
        try:
            return await asyncio.wait_for(asyncio.open_connection(str(ip), port), policy.connect_timeout)
        except asyncio.TimeoutError:
            error = OSError(f"{ip} did not answer in {policy.connect_timeout:.0f}s")
        except OSError as exc:
            error = exc
    raise error


async def _pipe(daemon: EgressDaemon, conn: Connection, policy: EgressPolicy, inbound: asyncio.StreamReader,
                site_writer: asyncio.StreamWriter, site_reader: asyncio.StreamReader,
                resp: web.StreamResponse) -> None:
    """Relay both ways until the site closes, the agent goes, a limit cuts, or both sides
    stay silent for ``idle_timeout``."""
    last = time.monotonic()

    async def up() -> None:
        nonlocal last
        while data := await inbound.read(CHUNK):
            last = time.monotonic()
            count(daemon, conn, policy, outbound=len(data))
            site_writer.write(data)
            await site_writer.drain()
        # The agent's EOF: aiohttp (as the container's forwarder) closes the whole connection
        # on it, so no answer could reach the agent now; the site is told all the same.
        if site_writer.can_write_eof():
            site_writer.write_eof()

    async def down() -> None:
        nonlocal last
        while data := await site_reader.read(CHUNK):
            last = time.monotonic()
            count(daemon, conn, policy, inbound=len(data))
            await resp.write(data)

    sending, receiving = asyncio.ensure_future(up()), asyncio.ensure_future(down())
    pending = {sending, receiving}
    try:
        while receiving in pending:  # the site's side ends the tunnel (or a break, a cut, silence)
            timeout = policy.idle_timeout - (time.monotonic() - last)
            if timeout <= 0:
                conn.verdict, conn.rule = "cut", "idle-timeout"
                conn.detail = f"silent both ways for {policy.idle_timeout:.0f}s"
                return
            done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if isinstance(task.exception(), Cut):
                    raise task.exception()  # type: ignore[misc]
                if task.exception() is not None:
                    return  # a side broke (the agent went away, the site reset): the tunnel is over
    finally:
        for task in (sending, receiving):
            task.cancel()
        await asyncio.gather(sending, receiving, return_exceptions=True)
