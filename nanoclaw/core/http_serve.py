"""HTTP on the agents' sockets, shared by the API relay (nanoclaw-proxy) and the web
(nanoclaw-egress): each agent's socket served by aiohttp's low-level server, kept equal to
the agents there are, and the header rules both relays apply.

aiohttp's low-level server has no router, so a request target reaches the handler as it
came (a CONNECT's authority form, an absolute URL, a fragment): each handler parses it
itself, once.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from aiohttp import web
from multidict import CIMultiDict

from nanoclaw.core.agent_sockets import Agents, make_dir
from nanoclaw.core.config import Config

CHUNK = 64 * 1024
# aiohttp's parser limits for a request head on either socket.
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100}
# Hop-by-hop headers (RFC 9110 7.6.1), and what a proxy sets itself: never passed on.
HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate",
                 "te", "trailer", "transfer-encoding", "upgrade", "host", "expect"})
# Our clients add nothing the agent did not send.
NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")

Handler = Callable[[str, str, web.BaseRequest], Awaitable[web.StreamResponse]]


def end_to_end(headers: Mapping[str, str], drop: frozenset[str] = HOP) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones (and whatever else ``drop`` names)."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def cut_off(request: web.BaseRequest) -> None:
    """End the agent's connection unfinished: an answer cut mid-way must look broken to the
    agent, not complete (aiohttp would otherwise end a chunked body cleanly)."""
    if request.transport is not None:
        request.transport.close()


async def serve(sock: Path, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                **options: float) -> web.BaseRunner:
    """Serve ``handler`` on a Unix socket an agent's container reaches."""
    try:
        sock.unlink()
    except FileNotFoundError:
        pass
    runner = web.ServerRunner(web.Server(handler, access_log=None, **options, **HEAD_LIMITS), shutdown_timeout=1)
    await runner.setup()
    await web.UnixSite(runner, str(sock)).start()
    os.chmod(sock, 0o666)  # the container's uid differs; the directory limits who sees it
    return runner


class AgentSockets:
    """One socket named ``name`` in every agent's directory, served by ``handler(folder,
    agent, request)``: made for a new group or team member, closed for one that went."""

    def __init__(self, cfg: Config, name: str, handler: Handler, **options: float) -> None:
        self.cfg, self.name, self.handler, self.options = cfg, name, handler, options
        self.agents = Agents(cfg)
        self.runners: dict[tuple[str, str], web.BaseRunner] = {}  # (folder, agent "" = lead)

    def __len__(self) -> int:
        return len(self.runners)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self.runners

    def ensured(self, req: dict) -> dict:
        """The answer to the runner's ``ensure`` (asked before it starts a container, so a
        just-registered group's socket exists by the time its agent first calls out), once
        the daemon's pass has synced the sockets."""
        key = (req.get("group"), req.get("agent") or "")
        return {"ok": key in self, "group": key[0], "agent": key[1]}

    async def sync(self) -> None:
        wanted = self.agents.wanted()
        for key in wanted - set(self.runners):
            folder, agent = key
            sock = make_dir(self.cfg, folder, agent) / self.name
            self.runners[key] = await serve(
                sock, lambda r, f=folder, a=agent: self.handler(f, a, r), **self.options)
        for key in set(self.runners) - wanted:
            await self.runners.pop(key).cleanup()

    async def close(self) -> None:
        for runner in self.runners.values():
            await runner.cleanup()
        self.runners.clear()
