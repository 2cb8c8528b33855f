"""Relays from this container's loopback to the host's proxy sockets.

SYNOPSIS
    await start(sock) -> url         a new port on 127.0.0.1 whose connections go to ``sock``

DESCRIPTION
    The container has no network. The CLI's ``ANTHROPIC_BASE_URL`` points at
    one relay, to ``api.sock``: the host's API relay, which adds the real
    credential (it never enters this container). ``HTTP_PROXY`` and
    ``HTTPS_PROXY`` point at another, to ``web.sock``: the host's egress
    proxy, which applies the group's policy (CONNECT keeps TLS end to end).
    A relay only moves bytes; all HTTP is parsed on the host.

READS / WRITES
    Connections to its ports on 127.0.0.1, copied both ways to the host's
    ``/run/nanoclaw-proxy/api.sock`` and ``web.sock``. No files.

HOSTILE INPUT
    Every byte a process here sends (the CLI, anything the agent runs): it is
    not parsed here, and the host's proxy and egress treat it as hostile.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from context import log

API_SOCKET = Path("/run/nanoclaw-proxy/api.sock")
WEB_SOCKET = Path("/run/nanoclaw-proxy/web.sock")


async def start(sock: Path) -> str:
    """Relay a new port on 127.0.0.1 to one of the host's proxy sockets; returns its URL."""
    server = await asyncio.start_server(lambda r, w: _forward(sock, r, w), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def _forward(sock: Path, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        ureader, uwriter = await asyncio.open_unix_connection(str(sock))
    except OSError as exc:
        log(f"host proxy unreachable at {sock}: {exc}")
        writer.close()
        return
    await asyncio.gather(_pipe(reader, uwriter), _pipe(ureader, writer))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        try:
            writer.close()
        except Exception:
            pass
