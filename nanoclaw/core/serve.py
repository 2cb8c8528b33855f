"""A daemon's Unix socket: one JSON request per line, one JSON reply per line.

SUMMARY
    The socket side of the daemon skeleton (core/skeleton.py holds the loop). A client
    sends one request per line (core/protocol.py's LineClient, request, tell); each is
    read here, parsed once, handed to the daemon's ``handle`` and answered with one line
    (or none, for a nudge). A line that cannot be read or accepted gets one error reply;
    a handler's bug gets one "internal error" reply: neither ends the daemon or the
    connection. Each request is checked against its op's struct (core/socket_lines.py)
    before ``handle`` sees it: a field it does not declare, or of the wrong type, is
    refused naming the op and the field.

SYNOPSIS
    await serve_client(daemon, reader, writer)   a connection, until the client leaves
    await listen(daemon, path) -> asyncio.Server   the socket, mode 0660, a stale one replaced
    base_handle(daemon, req) -> dict | None       what every daemon answers: nudge, ping, status

HOSTILE INPUT
    Every line is untrusted: the sockets are the daemons' own (mode 0660, the nanoclaw
    group), but what a client relays may carry a chat's or an agent's words. A line over
    MAX_LINE ends its connection; a line that is not one JSON object with an ``op``, or
    not what its op declares, is answered with the reason.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nanoclaw.core import socket_lines
from nanoclaw.core.protocol import MAX_LINE, BadMessage, parse_line

if TYPE_CHECKING:
    from nanoclaw.core.skeleton import Daemon


def base_handle(daemon: Daemon, req: dict) -> dict | None:
    """The requests every daemon understands: nudge (wake the loop), ping, status."""
    op = req["op"]
    if op == "nudge":
        daemon.wake.set()
        return None
    if op == "ping":
        return {"ok": True, "daemon": daemon.name, "pid": os.getpid()}
    if op == "status":
        return {"ok": True, "daemon": daemon.name, "status": daemon.status_line()}
    return {"ok": False, "error": f"unknown op {op!r}"}


async def serve_client(daemon: Daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer one client's lines until it leaves; then ``daemon.disconnected(writer)``."""
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                writer.write(b'{"ok": false, "error": "line too long"}\n')
                daemon.log.warning("socket client sent an over-long line; closing it")
                return
            try:
                _, req = socket_lines.check(parse_line(line))
            except BadMessage as exc:
                daemon.log.warning("socket request refused: %s", exc)
                writer.write(json.dumps({"ok": False, "error": str(exc)}).encode() + b"\n")
                await writer.drain()
                continue
            try:
                reply = await daemon.handle(req, writer)
            except Exception as exc:  # a bad request must never take the daemon down
                daemon.log.exception("request op=%s failed", req.get("op"))
                reply = {"ok": False, "error": f"internal error: {exc}"}
            if reply is not None:
                writer.write(json.dumps(reply, ensure_ascii=False).encode() + b"\n")
                await writer.drain()
    except (ConnectionError, OSError):
        return
    except asyncio.CancelledError:
        # The daemon is stopping with this client still connected. Ended as cancelled, the
        # task makes Python 3.11's stream callback log a traceback (task.exception() raises).
        return
    finally:
        daemon.disconnected(writer)
        try:
            writer.close()
        except Exception:
            pass


async def listen(daemon: Daemon, path: Path) -> asyncio.Server:
    """Serve ``daemon`` on the Unix socket ``path`` (one left by a process before is replaced)."""
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(daemon._serve_client, path=str(path), limit=MAX_LINE,
                                             backlog=1024)  # bursts of clients must not be refused
    os.chmod(path, 0o660)
    return server
