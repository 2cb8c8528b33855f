"""egress: the agents' web, under each group's egress policy. No credential.

SUMMARY
    One Unix socket per agent, ``web.sock`` in ``<runtime>/proxy/<folder>/``
    (a team member's in ``<runtime>/proxy/.team/<folder>/<member>/``), the
    directory the agent's container mounts read-only at ``/run/nanoclaw-proxy``
    beside the API relay's ``api.sock``. It is an HTTP proxy, the container's
    ``HTTP(S)_PROXY`` through a byte relay in the container. ``CONNECT`` opens a
    tunnel (TLS end to end: the host never decrypts) and a plain ``http://``
    request is forwarded, each after the group's egress policy
    (``core.egress``, applied in ``admit.py``): this daemon resolves the name
    itself, refuses local addresses the owner did not open (the local ranges,
    and this host's own addresses, networks and gateways, read from the kernel
    at start and on every change: ``local.py``), and connects to the very
    address it checked, so DNS rebinding gets no second lookup. One journal
    line per connection: ``GROUP= AGENT= HOST= PORT= BYTES_IN= BYTES_OUT=
    VERDICT= RULE=``.

    It is its own program so that the code parsing hostile web traffic never
    runs in the process holding the Anthropic credential (``nanoclaw-proxy``):
    its unit is given no credential and cannot read the credentials directory.

READS
    Requests on the agents' web sockets; the ``groups`` table and each group's
    team (which sockets to serve); ``[egress]`` of the configuration (root's
    file: no agent can change it); the host's addresses and routes
    (rtnetlink).

WRITES
    Connections to the web sites agents may reach, and nothing else: never a
    header of its own. ``EgressBytes`` rows: each agent's bytes per day
    (``allowance.py``), so the daily cap survives a new container and a
    restart of egress.

PRIVILEGE
    The service user, with network (and netlink, to read the host's
    addresses); no credential, the credentials directory out of reach (the
    unit's ``InaccessiblePaths=``).

HOSTILE INPUT
    Every byte on a web socket is the agent's. Request heads are parsed by
    aiohttp with size limits (a malformed head gets aiohttp's plain 400). Host
    names are validated before they are matched or logged; refusals are HTTP
    errors whose text names the rule; connections at once per group, bytes per
    group and per agent per day, and silence in a tunnel are limited.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from nanoclaw.core.agent_sockets import WEB_SOCKET
from nanoclaw.core.egress import Refusal
from nanoclaw.core.http_serve import NO_AUTO_HEADERS, AgentSockets, cut_off
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import db
from nanoclaw.core.skeleton import Daemon
from nanoclaw.daemons.egress.admit import Cut
from nanoclaw.daemons.egress.allowance import FLUSH_EVERY, Allowance
from nanoclaw.daemons.egress.local import HostAddresses


@dataclass
class GroupEgress:
    """A group's live egress counters (its bytes are the allowance's)."""

    active: int = 0  # connections open now


@dataclass
class Connection:
    """One agent connection on web.sock, as its journal line tells it."""

    folder: str
    agent: str
    method: str
    host: str = "-"
    port: int = 0
    ip: str = "-"
    bytes_in: int = 0  # from the site to the agent
    bytes_out: int = 0  # from the agent to the site
    verdict: str = "allowed"  # allowed | refused | failed | cut
    rule: str = "-"
    detail: str = ""
    counted: bool = False  # holds one of the group's max_tunnels


class EgressDaemon(Daemon):
    name = "egress"

    def setup(self) -> None:
        # An agent connection carries one request or one tunnel: idle ones go soon, and an
        # unread request body (a refused upload, a tunnel's rest) is not waited for.
        self.sockets = AgentSockets(self.cfg, WEB_SOCKET, self._web, keepalive_timeout=30, lingering_time=1.0)
        self.connections = 0
        self.egress: dict[str, GroupEgress] = {}
        # This process writes byte counts only: as the proxy's usage rows, committed without
        # waiting for an fsync (a power cut may lose the last seconds of counts).
        db.execute_sql("PRAGMA synchronous=NORMAL")
        self.allowance = Allowance(self.cfg)
        self.flushing: asyncio.TimerHandle | None = None
        # No cookie jar (groups must share nothing) and nothing added to what the agent sent;
        # bodies pass undecoded, so lengths and encodings stay the site's. One upstream
        # connection per agent connection: each is one journal line.
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True, limit=0), cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False, skip_auto_headers=NO_AUTO_HEADERS, trust_env=False)
        self.host = HostAddresses()
        try:
            asyncio.get_running_loop().add_reader(self.host.subscribe(), self._host_changed)
        except OSError as exc:
            self.log.error("cannot watch this host's address changes (%s): read every pass only", exc)
        self._read_host("at start")

    def _read_host(self, when: str) -> None:
        """Read the host's own addresses, networks and gateways again; say what changed."""
        added, gone = self.host.refresh()
        if self.host.error:
            self.log.error("%s: every connection is refused until it can be", self.host.error)
        elif added or gone:
            def shown(nets: set) -> str:
                return ", ".join(sorted(map(str, nets))[:20]) + (f" and {len(nets) - 20} more" if len(nets) > 20 else "")
            self.log.info("this host's local networks, read %s: %d%s%s", when, len(self.host.locals),
                          f"; new: {shown(added)}" if added else "", f"; gone: {shown(gone)}" if gone else "")

    def _host_changed(self) -> None:
        self.host.drain()
        self._read_host("on a change")

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        if req["op"] == "ensure":  # (a new container is no new allowance: bytes count per day)
            await self.work()
            return self.sockets.ensured(req)
        return await super().handle(req, writer)

    async def work(self) -> float | None:
        await self.sockets.sync()
        self._read_host("on a pass")  # the safety net under netlink's announcements
        return None

    def state(self, folder: str) -> GroupEgress:
        return self.egress.setdefault(folder, GroupEgress())

    def counted(self) -> None:
        """Bytes were counted: have them written within FLUSH_EVERY seconds."""
        if self.flushing is None:
            self.flushing = asyncio.get_running_loop().call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        self.flushing = None
        try:
            self.allowance.flush()
        except Exception as exc:  # noqa: BLE001 - a full disk must not cut the agents' web
            self.log.error("web byte counts not written (tried again in %.0fs): %s", FLUSH_EVERY, exc)
            self.counted()

    async def _web(self, folder: str, agent: str, request: web.BaseRequest) -> web.StreamResponse:
        from nanoclaw.daemons.egress import forward, tunnel
        conn = Connection(folder, agent, request.method)
        started = time.monotonic()
        try:
            if request.method == "CONNECT":
                return await tunnel.handle(self, conn, request)
            return await forward.handle(self, conn, request)
        except Cut:
            cut_off(request)
            return web.Response(status=429)  # never sent: the connection is closed
        finally:
            if conn.counted:
                self.state(folder).active -= 1
            self.connections += 1
            subjects = log_fields(group=conn.folder, agent=conn.agent, host=conn.host, port=conn.port,
                              bytes_in=conn.bytes_in, bytes_out=conn.bytes_out, verdict=conn.verdict, rule=conn.rule)
            self.log.log(20 if conn.verdict == "allowed" or not conn.detail else 30,
                         "egress ip=%s method=%s in %.2fs%s", conn.ip, conn.method, time.monotonic() - started,
                         f" ({conn.detail})" if conn.detail else "", extra=subjects)

    def refuse(self, conn: Connection, refusal: Refusal, status: int = 403, verdict: str = "refused") -> web.Response:
        """The agent's answer when no connection is made: which rule, and why, in plain text."""
        conn.verdict, conn.rule, conn.detail = verdict, refusal.rule, refusal.detail
        target = f"{conn.host}:{conn.port}" if conn.port else conn.host
        text = (f"nanoclaw egress proxy: {'refused' if verdict == 'refused' else 'could not reach'} {target}\n"
                f"rule: {refusal.rule}\n{refusal.detail}\n")
        resp = web.Response(status=status, text=text, headers={"X-Nanoclaw-Egress-Rule": refusal.rule})
        resp.force_close()
        return resp

    def status(self) -> str:
        host = self.host.error or f"{len(self.host.locals)} local networks of this host"
        return f"{len(self.sockets)} agent socket(s), {self.connections} web connections, {host}"

    async def shutdown(self) -> None:
        await self.sockets.close()
        await self.session.close()
        self.host.close()
        if self.flushing is not None:
            self.flushing.cancel()
        self.flush()


main = EgressDaemon.main
