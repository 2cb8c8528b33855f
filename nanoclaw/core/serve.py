"""A daemon's Unix socket: one JSON request per line, one JSON reply per line.

SUMMARY
    The socket side of the daemon skeleton (core/skeleton.py holds the loop). A client
    sends one request per line (core/protocol.py's LineClient, request, tell); each is
    read here, parsed once, handed to the daemon's ``handle`` and answered with one line
    (or none, for a nudge), in the order asked, up to PIPELINE of a connection's at once,
    each encoded through its op's reply struct (core/socket_replies.py). A line that
    cannot be read or accepted gets one error reply;
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
import os
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from nanoclaw.core import socket_lines, socket_replies
from nanoclaw.core.messages import explain
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


PIPELINE = 256  # a connection's requests handled at once (a pipelining client's window)


def _answered(reply: dict) -> asyncio.Future:
    done = asyncio.get_running_loop().create_future()
    done.set_result(socket_replies.reply_line("", reply))
    return done


async def _answer(daemon: Daemon, req: dict, writer: asyncio.StreamWriter) -> bytes | None:
    """The reply line to ``req`` (None: none, as for a nudge), encoded through its op's struct
    (core/socket_replies.py): a reply carrying a field it does not declare is a bug, answered
    as one, never sent."""
    op = req.get("op")
    try:
        reply = await daemon.handle(req, writer)
    except Exception as exc:  # a bad request must never take the daemon down
        daemon.log.exception("request op=%s failed", op)
        reply = {"ok": False, "error": f"internal error: {exc}"}
    if reply is None:
        return None
    try:
        return socket_replies.reply_line(op, reply)
    except msgspec.ValidationError as exc:
        why = explain(f"reply to {op}", exc)
        daemon.log.error("not sent: %s", why)
        return socket_replies.reply_line("", {"ok": False, "error": f"internal error: {why}"})


async def serve_client(daemon: Daemon, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer a connection's request lines, in order, until the client leaves; then
    ``daemon.disconnected(writer)``. A client may pipeline (send many lines before reading
    answers): up to PIPELINE of them are handled at once, so that, say, a burst of inbound
    messages shares commits; each answer is still written in the order of its request, and
    reading stops while that many are unanswered."""
    answers: asyncio.Queue[asyncio.Future | None] = asyncio.Queue(PIPELINE)
    replier = asyncio.ensure_future(_reply_in_order(answers, writer))
    try:
        while True:
            try:
                line = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError:
                return
            except asyncio.LimitOverrunError:
                daemon.log.warning("socket client sent an over-long line; closing it")
                await answers.put(_answered({"ok": False, "error": "line too long"}))
                return
            try:
                _, req = socket_lines.check(parse_line(line))
            except BadMessage as exc:
                daemon.log.warning("socket request refused: %s", exc)
                await answers.put(_answered({"ok": False, "error": str(exc)}))
                continue
            await answers.put(asyncio.ensure_future(_answer(daemon, req, writer)))
    except (ConnectionError, OSError):
        return
    except asyncio.CancelledError:
        # The daemon is stopping with this client still connected. Ended as cancelled, the
        # task makes Python 3.11's stream callback log a traceback (task.exception() raises).
        replier.cancel()
        return
    finally:
        if not replier.cancelling() and not replier.done():
            await answers.put(None)  # the answers owed are written, then the connection ends
        try:
            await replier
        except (asyncio.CancelledError, ConnectionError, OSError):
            pass
        daemon.disconnected(writer)
        try:
            writer.close()
        except Exception:
            pass


async def _reply_in_order(answers: asyncio.Queue, writer: asyncio.StreamWriter) -> None:
    """Write each answer once its request is handled, in the order of the requests. A
    client gone away is written to no more; its requests are still all handled."""
    gone = False
    while (answer := await answers.get()) is not None:
        line = await answer
        if line is None or gone:
            continue
        try:
            writer.write(line)
            await writer.drain()
        except (ConnectionError, OSError):
            gone = True


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
