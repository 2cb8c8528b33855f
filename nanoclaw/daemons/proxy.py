"""proxy: the only way out of a container: the Anthropic API with the credential added
here, and the web under the group's egress policy.

SUMMARY
    Two Unix sockets per group in ``<runtime>/proxy/<folder>/`` (the directory
    is mounted read-only at ``/run/nanoclaw-proxy`` in that group's container
    only), both served by aiohttp on this daemon's loop:

    ``api.sock``: the agent runner's forwarder relays
    ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`` to it. The proxy drops
    whatever credential the agent sent, adds the real one, and relays to
    ``proxy_upstream``, streaming the answer back (server-side tools such as
    WebSearch run at the API and pass here like any other request).

    Accounting (``core.usage``): a model outside ``[usage] allowed_models``
    and a group whose budget is spent are refused before upstream sees the
    request (the queue is told, and tells the chat once). Each answer's usage
    is read from its bytes as they pass, JSON or stream, and stored per group,
    team member, job and day, with one journal line: ``GROUP= AGENT= JOB=
    MODEL= TOKENS_IN= TOKENS_OUT= COST_USD=``.

    A team member's container mounts its own directory
    (``<runtime>/proxy/.team/<folder>/<agent>/``) in place of the lead's, so its
    calls are its own.

    ``web.sock``: an HTTP proxy, the container's ``HTTP(S)_PROXY`` through a
    second byte relay. ``CONNECT`` opens a tunnel (TLS end to end: the host
    never decrypts) and a plain ``http://`` request is forwarded, each after
    the group's egress policy (``core.egress``): the proxy resolves the name
    itself, refuses local addresses the owner did not open, and connects to
    the very address it checked, so DNS rebinding gets no second lookup. One
    journal line per connection: ``GROUP= HOST= PORT= BYTES_IN= BYTES_OUT=
    VERDICT= RULE=``.

READS
    Requests on the group sockets; the credential (``core.credentials``:
    systemd's ``LoadCredential=`` copy, or the 0600 file); the ``groups`` table;
    ``[egress]`` of the configuration (root's file: no agent can change it).

WRITES
    Requests to the upstream API; connections to the web sites agents may
    reach; ``usage`` rows; ``budget_spent`` to ``spool/queue``. The real key
    or token never enters a container (not its environment,
    files or ``podman inspect``) and goes to ``proxy_upstream`` only: the
    egress side never adds a header.

PRIVILEGE
    The service user; the one daemon with network to the outside.

HOSTILE INPUT
    Every byte on a group socket is the agent's. Request heads are parsed by
    aiohttp with size limits (a malformed head gets aiohttp's plain 400).
    api.sock: only API paths pass, bodies are size-limited, the proxy's own
    refusals are well-formed JSON. web.sock: host names are
    validated before they are matched or logged; refusals are HTTP errors whose
    text names the rule; connections at once per group, bytes per container
    run and silence in a tunnel are limited.
"""

from __future__ import annotations

import asyncio
import fnmatch
import ipaddress
import json
import os
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from nanoclaw.core import team as team_mod
from nanoclaw.core import usage as usage_mod
from nanoclaw.core.config import Config
from nanoclaw.core.credentials import (
    OAUTH_BETA,
    Credential,
    CredentialError,
    credential_path,
    load_credential,
)
from nanoclaw.core.egress import EgressPolicy, IPAddress, Refusal, normalize_host, parse_ip
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Job, db
from nanoclaw.core.protocol import Spool, nudge
from nanoclaw.core.skeleton import Daemon

MAX_BODY = 32 * 1024 * 1024
CHUNK = 64 * 1024
# aiohttp's parser limits for a request head on either socket.
HEAD_LIMITS = {"max_line_size": 8190, "max_field_size": 8190, "max_headers": 100}
# Hop-by-hop headers (RFC 9110 7.6.1), and what a proxy sets itself: never passed on.
_HOP = {"connection", "keep-alive", "proxy-connection", "proxy-authorization", "proxy-authenticate", "te",
        "trailer", "transfer-encoding", "upgrade", "host", "expect"}
# The API side reads the whole body (its length is new) and drops whatever credential the
# agent sent: the proxy adds the real one.
_API_DROP = _HOP | {"content-length", "x-api-key", "authorization", "anthropic-beta"}
# Our clients add nothing the agent did not send.
_NO_AUTO_HEADERS = ("User-Agent", "Accept", "Accept-Encoding")
WEB_SOCKET = "web.sock"
API_SOCKET = "api.sock"


def proxy_dir(cfg: Config, folder: str, agent: str = "") -> Path:
    """The directory holding the proxy sockets of a group's lead (or of one member of its
    team), mounted into that agent's containers only. A member's is outside what the lead
    mounts (``.team`` cannot be a folder name), so each call is counted for the right agent."""
    if agent:
        return cfg.runtime_dir / "proxy" / ".team" / folder / agent
    return cfg.runtime_dir / "proxy" / folder


def _encodings(value: str) -> str:
    """The agent's Accept-Encoding cut to what the meter can read (gzip, deflate)."""
    kept = [part.strip() for part in value.split(",")
            if part.split(";")[0].strip().lower() in ("gzip", "deflate", "identity")]
    return ", ".join(kept)


def _end_to_end(headers: Mapping[str, str], drop: set[str] = _HOP) -> CIMultiDict[str]:
    """Headers minus hop-by-hop ones (and whatever else ``drop`` names)."""
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _drop(request: web.BaseRequest) -> None:
    """End the agent's connection unfinished: an answer cut mid-way must look broken to the
    agent, not complete (aiohttp would otherwise end a chunked body cleanly)."""
    if request.transport is not None:
        request.transport.close()


async def _relay_response(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                          tap: Callable[[bytes], None] | None = None,
                          settle: Callable[[], None] | None = None) -> tuple[web.StreamResponse, str]:
    """Stream an upstream answer back to the agent as it arrives (SSE stays live); bodies pass
    undecoded, so the length and encoding stay the upstream's. ``tap`` sees each chunk before
    it is passed on; ``settle`` runs once the body is all read, before the response is ended
    (or after it broke). Returns the response and, if either side broke mid-way, why (the
    connection is then dropped)."""
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=_end_to_end(upstream.headers))
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            if tap is not None:  # first: a byte cap cuts before the chunk is passed on
                tap(chunk)
            await resp.write(chunk)
        if settle is not None:
            settle, done = None, settle
            done()
        await resp.write_eof()
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
        _drop(request)
        if settle is not None:
            settle()
        return resp, f"cut short: {exc!r}"
    return resp, ""


class Cut(Exception):
    """A limit ended a connection that had started (the byte cap)."""


@dataclass
class GroupEgress:
    """A group's live egress counters."""

    active: int = 0  # connections open now
    run_bytes: int = 0  # in and out since the runner last started this group's container


@dataclass
class Connection:
    """One agent connection on web.sock, as its journal line tells it."""

    folder: str
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


class ProxyDaemon(Daemon):
    name = "proxy"

    def setup(self) -> None:
        self.sites: dict[tuple[str, str], list[web.BaseRunner]] = {}  # (folder, agent "" = lead)
        self.teams: dict[str, tuple[int, list[str]]] = {}  # folder -> (agents/ mtime, member names)
        self.told: set[str] = set()  # budgets the queue has been told are spent
        self.tally = usage_mod.Tally(self.cfg)
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        # This process writes usage rows only. In WAL mode NORMAL still commits atomically but
        # leaves the fsync to the checkpoint: a power cut may lose the last seconds of counts
        # (a budget then stops a call or two later), and no answer waits for the disk.
        db.execute_sql("PRAGMA synchronous=NORMAL")
        self.upstream = urlsplit(self.cfg.proxy_upstream)
        self.requests = 0
        self.web_connections = 0
        self.credential: Credential | None = None
        self.egress: dict[str, GroupEgress] = {}
        # No cookie jar (groups must share nothing) and nothing added to what the agent sent;
        # bodies pass undecoded, so lengths and encodings stay the site's.
        common = {"cookie_jar": aiohttp.DummyCookieJar(), "auto_decompress": False,
                  "skip_auto_headers": _NO_AUTO_HEADERS, "trust_env": False}
        self.api_session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
                                                 **common)
        # One upstream connection per agent connection: each is one journal line.
        self.web_session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True, limit=0),
                                                 **common)
        self._load()

    def _load(self) -> str:
        """(Re-)read the credential; '' or why there is none."""
        try:
            self.credential = load_credential(self.cfg)
        except CredentialError as exc:
            self.credential = None
            self.log.error("%s", exc)
            return str(exc)
        self.log.info("credential loaded kind=%s from %s", self.credential.kind, credential_path(self.cfg))
        return ""

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        if req["op"] == "reload":  # `nanoclaw credential set` where no unit restart hands it over
            error = self._load()
            return {"ok": not error, "error": error, "kind": self.credential.kind if self.credential else ""}
        if req["op"] == "check":  # `nanoclaw credential set`: does the API accept it?
            if self.credential is None and self._load():
                return {"ok": False, "error": "the proxy holds no credential"}
            return {"ok": True, **await self._check()}
        if req["op"] == "ensure":
            # The runner asks before starting a container, so a just-registered
            # group's sockets exist by the time its agent first calls out; a new
            # container is a new run, so its byte allowance starts again.
            await self.work()
            folder, agent = req.get("group"), req.get("agent") or ""
            if (folder, agent) in self.sites:
                self.egress.setdefault(folder, GroupEgress()).run_bytes = 0
            return {"ok": (folder, agent) in self.sites, "group": folder, "agent": agent}
        return await super().handle(req, writer)

    def _members(self, folder: str) -> list[str]:
        """A group's team members (cached until its ``agents/`` folder changes)."""
        try:
            mtime = (self.cfg.groups_dir / folder / team_mod.AGENTS).stat().st_mtime_ns
        except OSError:
            return []
        cached = self.teams.get(folder)
        if cached is None or cached[0] != mtime:
            cached = self.teams[folder] = (mtime, [m.name for m in team_mod.members(self.cfg, folder)])
        return cached[1]

    async def work(self) -> float | None:
        wanted = set()
        for group in list(Group.select(Group.folder)):
            wanted.add((group.folder, ""))
            wanted.update((group.folder, name) for name in self._members(group.folder))
        for key in wanted - set(self.sites):
            folder, agent = key
            d = proxy_dir(self.cfg, folder, agent)
            d.mkdir(parents=True, exist_ok=True)
            os.chmod(d, 0o755)
            if agent:
                os.chmod(d.parent.parent, 0o711)  # .team/: no container lists the other members
            self.sites[key] = [
                await self._serve(d / API_SOCKET, lambda r, f=folder, a=agent: self._api(f, r, a),
                                  keepalive_timeout=75),
                # An agent connection carries one request or one tunnel: idle ones go soon, and
                # an unread request body (a refused upload, a tunnel's rest) is not waited for.
                await self._serve(d / WEB_SOCKET, lambda r, f=folder: self._web(f, r), keepalive_timeout=30,
                                  lingering_time=1.0),
            ]
        for key in set(self.sites) - wanted:
            for runner in self.sites.pop(key):
                await runner.cleanup()
        return None

    async def _serve(self, sock: Path, handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
                     **options: float) -> web.BaseRunner:
        """Serve ``handler`` on a group socket. aiohttp's low-level server: no router, so a
        CONNECT's authority-form target reaches the handler as it came."""
        try:
            sock.unlink()
        except FileNotFoundError:
            pass
        runner = web.ServerRunner(web.Server(handler, access_log=None, **options, **HEAD_LIMITS), shutdown_timeout=1)
        await runner.setup()
        await web.UnixSite(runner, str(sock)).start()
        os.chmod(sock, 0o666)  # the container's uid differs; the directory limits who sees it
        return runner

    # -- the API relay ----------------------------------------------------------------

    async def _api(self, folder: str, request: web.BaseRequest, agent: str = "") -> web.StreamResponse:
        started = time.monotonic()
        target = request.raw_path
        if not target.startswith("/v1/"):
            return self._api_refusal(403, f"path {target!r} is not an API path")
        if self.credential is None:
            try:
                self.credential = load_credential(self.cfg)
            except CredentialError as exc:
                self.log.error("request refused: %s", exc, extra=log_fields(group=folder, agent=agent))
                return self._api_refusal(503, "nanoclaw has no Anthropic credential configured")
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > MAX_BODY:
                self.log.warning("request body over %d bytes refused", MAX_BODY,
                                 extra=log_fields(group=folder, agent=agent))
                return self._api_refusal(413, "request body too large")
        metered = request.method == "POST" and target.split("?")[0] == "/v1/messages"
        if metered or target.startswith("/v1/messages/"):
            refusal = self._admit_call(folder, agent, target, bytes(body))
            if refusal is not None:
                return refusal
        headers = _end_to_end(request.headers, _API_DROP)
        if metered and "accept-encoding" in headers:
            headers["accept-encoding"] = _encodings(headers["accept-encoding"]) or "identity"
        beta = request.headers.get("anthropic-beta", "")
        if self.credential.kind == "oauth":
            beta = ",".join(filter(None, [beta, OAUTH_BETA]))
        if beta:
            headers["anthropic-beta"] = beta
        headers.extend(self.credential.headers())
        url = URL(self.cfg.proxy_upstream.rstrip("/") + target, encoded=True)
        try:
            upstream = await self.api_session.request(request.method, url, headers=headers,
                                                      data=bytes(body) or None, allow_redirects=False)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.log.error("upstream %s unreachable: %r", self.upstream.netloc, exc,
                           extra=log_fields(group=folder, agent=agent))
            return self._api_refusal(502, "upstream unreachable")
        meter = usage_mod.Meter(upstream.headers.get("Content-Type", ""),
                                upstream.headers.get("Content-Encoding", "")) if metered else None
        subjects: dict = {"group": folder, "agent": agent}
        detail = ""

        def settle() -> None:
            # On the loop, before the answer ends: the agent's next call, checked against the
            # budget on this same loop, always sees this one counted. The cost is one commit.
            nonlocal detail
            counts = meter.finish()
            if counts.seen:
                detail = self._record(folder, agent, counts, upstream.headers.get("Content-Type", ""), subjects)

        try:
            resp, broken = await _relay_response(request, upstream, meter.feed if meter else None,
                                                 settle if meter else None)
        finally:
            upstream.release()
        self.requests += 1
        self.log.info("%s %s -> %s in %.2fs%s%s", request.method, target.split("?")[0], upstream.status,
                      time.monotonic() - started, detail, f" ({broken})" if broken else "",
                      extra=log_fields(**subjects))
        return resp

    def _admit_call(self, folder: str, agent: str, target: str, body: bytes) -> web.Response | None:
        """The checks before a Messages call leaves: an allowed model, a budget not spent."""
        allowed = self.cfg.usage.allowed_models
        if allowed:
            try:
                model = json.loads(body).get("model")
            except (ValueError, AttributeError):
                model = None
            if not isinstance(model, str) or not any(fnmatch.fnmatchcase(model, p) for p in allowed):
                shown = repr(model)[:80] if isinstance(model, str) else "no model"
                self.log.warning("asked for model %s: refused, not in [usage] allowed_models", shown,
                                 extra=log_fields(group=folder, agent=agent))
                return self._api_refusal(400, f"nanoclaw: the model {shown} is not allowed here "
                                              f"(allowed: {', '.join(allowed)})", "invalid_request_error")
        spent = usage_mod.exceeded(self.cfg, folder, tally=self.tally)
        if spent is None:
            return None
        group = Group.get_or_none(Group.folder == folder)
        text = spent.text(group.name if group else folder)
        if spent.key not in self.told:
            # The queue tells the chat (once: the notice's key) and holds the group's work.
            self.queue_spool.put("budget_spent", {"group": folder, "agent": agent, "key": spent.key})
            nudge(self.cfg.socket("queue"))
            self.told.add(spent.key)
            self.log.warning("budget spent: %s", text, extra=log_fields(group=folder, agent=agent))
        return self._api_refusal(403, f"nanoclaw: {text}. The owner can raise it (nanoclaw budget).",
                                 "nanoclaw_budget")

    def _record(self, folder: str, agent: str, counts: usage_mod.Counts, content_type: str,
                subjects: dict) -> str:
        """Store one call's usage; adds its journal fields to ``subjects`` and returns the detail
        for the line's text."""
        job = None
        try:
            job = (Job.select(Job.id).join(Group).where(Group.folder == folder, Job.agent == agent,
                                                         Job.status.in_(("queued", "running")))
                   .order_by(Job.id.desc()).scalar())
            at = time.time()
            usd = usage_mod.record(self.cfg, folder, agent, job, counts, "event-stream" in content_type, at)
            self.tally.add(folder, usd, counts.total, at)
        except Exception as exc:  # noqa: BLE001 - a full disk must not fail the agent's answer
            self.log.error("usage not recorded: %s", exc, extra=log_fields(group=folder, agent=agent))
            usd = usage_mod.cost(self.cfg, counts)
        subjects.update(job=job, model=counts.model or "-", tokens_in=counts.tokens_in,
                        tokens_out=counts.output_tokens, cost_usd="unknown" if usd is None else f"{usd:.6f}")
        return (f" (input={counts.input_tokens} cache_write={counts.cache_write_tokens} "
                f"cache_read={counts.cache_read_tokens})")

    @staticmethod
    def _api_refusal(code: int, reason: str, kind: str = "nanoclaw_proxy") -> web.Response:
        """The API's own error shape, so the agent's CLI shows the message (and, for 4xx
        statuses other than 408, 409 and 429, does not retry)."""
        resp = web.json_response({"type": "error", "error": {"type": kind, "message": reason}},
                                 status=code)
        resp.force_close()
        return resp

    async def _check(self) -> dict:
        """One cheap authenticated request (list one model): the status and the API's words."""
        assert self.credential is not None
        headers = CIMultiDict([("anthropic-version", "2023-06-01"), *self.credential.headers()])
        if self.credential.kind == "oauth":
            headers["anthropic-beta"] = OAUTH_BETA
        url = self.cfg.proxy_upstream.rstrip("/") + "/v1/models?limit=1"
        try:
            async with self.api_session.get(url, headers=headers,
                                            timeout=aiohttp.ClientTimeout(total=30)) as resp:
                status, raw = resp.status, await resp.content.read(65536)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            return {"status": 0, "detail": f"cannot reach {self.upstream.netloc}: {exc!r}"}
        detail = ""
        try:
            detail = json.loads(raw or b"{}").get("error", {}).get("message", "")
        except (ValueError, AttributeError):
            pass
        self.log.info("credential check: %s -> %s", self.upstream.netloc, status)
        return {"status": status, "detail": str(detail)[:300]}

    # -- web egress -------------------------------------------------------------------

    async def _web(self, folder: str, request: web.BaseRequest) -> web.StreamResponse:
        conn = Connection(folder, request.method)
        started = time.monotonic()
        try:
            if request.method == "CONNECT":
                return await self._tunnel(conn, request)
            return await self._forward(conn, request)
        except Cut:
            _drop(request)
            return web.Response(status=429)  # never sent: the connection is closed
        finally:
            if conn.counted:
                self._state(folder).active -= 1
            self.web_connections += 1
            subjects = log_fields(group=conn.folder, host=conn.host, port=conn.port, bytes_in=conn.bytes_in,
                              bytes_out=conn.bytes_out, verdict=conn.verdict, rule=conn.rule)
            self.log.log(20 if conn.verdict == "allowed" or not conn.detail else 30,
                         "egress ip=%s method=%s in %.2fs%s", conn.ip, conn.method, time.monotonic() - started,
                         f" ({conn.detail})" if conn.detail else "", extra=subjects)

    def _refuse(self, conn: Connection, refusal: Refusal, status: int = 403,
                verdict: str = "refused") -> web.Response:
        """The agent's answer when no connection is made: which rule, and why, in plain text."""
        conn.verdict, conn.rule, conn.detail = verdict, refusal.rule, refusal.detail
        target = f"{conn.host}:{conn.port}" if conn.port else conn.host
        text = (f"nanoclaw egress proxy: {'refused' if verdict == 'refused' else 'could not reach'} {target}\n"
                f"rule: {refusal.rule}\n{refusal.detail}\n")
        resp = web.Response(status=status, text=text, headers={"X-Nanoclaw-Egress-Rule": refusal.rule})
        resp.force_close()
        return resp

    def _state(self, folder: str) -> GroupEgress:
        return self.egress.setdefault(folder, GroupEgress())

    def _count(self, conn: Connection, policy: EgressPolicy, inbound: int = 0, outbound: int = 0) -> None:
        """Add a chunk to the connection's and the run's bytes; past the cap, cut."""
        conn.bytes_in += inbound
        conn.bytes_out += outbound
        state = self._state(conn.folder)
        state.run_bytes += inbound + outbound
        if policy.max_bytes_per_run and state.run_bytes > policy.max_bytes_per_run:
            conn.verdict, conn.rule = "cut", "byte-cap"  # here: the Cut may reach _web wrapped by aiohttp
            conn.detail = f"this run passed its {policy.max_bytes_per_run} byte allowance"
            raise Cut(conn.detail)

    async def _admit(self, conn: Connection, policy: EgressPolicy, raw_host: str, port: int
                     ) -> tuple[list[IPAddress], web.Response | None]:
        """Apply the policy before anything leaves: the addresses to try, or the refusal."""
        host = normalize_host(raw_host)
        conn.port = port
        if host is None:
            return [], self._refuse(conn, Refusal("bad-host", "the host name is not valid"), 400)
        conn.host = host
        refusal = policy.check_name(host, port)
        if refusal is not None:
            return [], self._refuse(conn, refusal)
        state = self._state(conn.folder)
        if state.active >= policy.max_tunnels:
            return [], self._refuse(conn, Refusal(
                "tunnel-limit", f"this group already has {state.active} connections open "
                                f"(max_tunnels = {policy.max_tunnels})"), 429)
        if policy.max_bytes_per_run and state.run_bytes >= policy.max_bytes_per_run:
            return [], self._refuse(conn, Refusal(
                "byte-cap", f"this run used its {policy.max_bytes_per_run} byte allowance"), 429)
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
                return [], self._refuse(conn, Refusal("dns", f"{host} does not resolve ({exc})"), 502, "failed")
            candidates = list(dict.fromkeys(ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos))
        allowed: list[IPAddress] = []
        first: Refusal | None = None
        for ip in candidates:
            refusal = policy.check_address(ip)
            if refusal is None:
                allowed.append(ip)
            elif first is None:
                first = refusal
        if not allowed:
            assert first is not None
            conn.ip = str(candidates[0])
            detail = first.detail if literal is not None else f"{host} resolves to local addresses only: {first.detail}"
            return [], self._refuse(conn, Refusal(first.rule, detail))
        return allowed, None

    async def _tunnel(self, conn: Connection, request: web.BaseRequest) -> web.StreamResponse:
        """CONNECT host:port: a byte tunnel to the checked address; TLS stays end to end."""
        policy = self.cfg.egress_for(conn.folder)
        try:
            target = URL.build(authority=request.raw_path, encoded=True)
            raw_host, port = target.raw_host or "", target.explicit_port
        except ValueError:
            raw_host, port = "", None
        if port is None:
            return self._refuse(conn, Refusal("bad-request", "CONNECT needs host:port"), 400)
        addresses, refusal = await self._admit(conn, policy, raw_host, port)
        if refusal is not None:
            return refusal
        try:
            reader, writer = await self._connect(conn, policy, addresses, port)
        except OSError as exc:
            return self._refuse(conn, Refusal("connect", f"cannot connect: {exc}"), 502, "failed")
        try:
            resp = web.StreamResponse(status=200, reason="Connection established")
            resp.force_close()
            await resp.prepare(request)
            await self._pipe(conn, policy, _TunnelInbound(request).reader, writer, reader, resp)
            return resp
        finally:
            writer.close()

    async def _connect(self, conn: Connection, policy: EgressPolicy, addresses: list[IPAddress],
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

    async def _pipe(self, conn: Connection, policy: EgressPolicy, inbound: asyncio.StreamReader,
                    site_writer: asyncio.StreamWriter, site_reader: asyncio.StreamReader,
                    resp: web.StreamResponse) -> None:
        """Relay both ways until the site closes, the agent goes, a limit cuts, or both sides
        stay silent for ``idle_timeout``."""
        last = time.monotonic()

        async def up() -> None:
            nonlocal last
            while data := await inbound.read(CHUNK):
                last = time.monotonic()
                self._count(conn, policy, outbound=len(data))
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
                self._count(conn, policy, inbound=len(data))
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

    async def _forward(self, conn: Connection, request: web.BaseRequest) -> web.StreamResponse:
        """A plain http:// request in absolute form, sent to the checked address with the
        Host the URL names (RFC 9112 3.2.2: a proxy ignores the agent's own Host header)."""
        policy = self.cfg.egress_for(conn.folder)
        try:
            target = URL(request.raw_path, encoded=True)
            scheme, raw_host, port = target.scheme, target.raw_host or "", target.port
        except ValueError:
            scheme, raw_host, port = "", "", None
        if scheme != "http" or not raw_host or port is None:
            why = ("an https:// URL goes through CONNECT" if scheme == "https"
                   else "a proxy request needs an absolute http:// URL")
            return self._refuse(conn, Refusal("bad-request", why), 400)
        addresses, refusal = await self._admit(conn, policy, raw_host, port)
        if refusal is not None:
            return refusal
        headers = _end_to_end(request.headers)
        # host[:port] as the URL names it; never userinfo (http://user:pass@host/)
        headers["Host"] = (f"[{raw_host}]" if ":" in raw_host else raw_host) + \
            (f":{target.explicit_port}" if target.explicit_port else "")

        async def body():
            async for chunk in request.content.iter_any():
                self._count(conn, policy, outbound=len(chunk))
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
                    upstream = await self.web_session.request(
                        request.method, url, headers=headers, allow_redirects=False, timeout=timeout,
                        data=body() if request.body_exists else None)
                except aiohttp.ClientConnectorError as exc:
                    error = exc  # nothing was sent: the next address may answer
                    continue
                try:
                    resp, broken = await _relay_response(request, upstream,
                                                         lambda chunk: self._count(conn, policy, inbound=len(chunk)))
                finally:
                    upstream.release()
                if broken and conn.verdict == "allowed":
                    conn.verdict, conn.rule, conn.detail = "failed", "upstream", broken
                resp.force_close()
                return resp
            return self._refuse(conn, Refusal("connect", f"cannot connect: {error}"), 502, "failed")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            if conn.verdict == "cut":
                raise Cut(conn.detail) from exc  # our own cap, surfacing through aiohttp's upload
            return self._refuse(conn, Refusal("upstream", f"the site failed: {exc!r}"), 502, "failed")

    def status(self) -> str:
        cred = self.credential.kind if self.credential else "NO CREDENTIAL"
        return (f"{len(self.sites)} group(s), credential: {cred}, {self.requests} API requests, "
                f"{self.web_connections} web connections")

    async def shutdown(self) -> None:
        for runners in self.sites.values():
            for runner in runners:
                await runner.cleanup()
        await self.api_session.close()
        await self.web_session.close()


main = ProxyDaemon.main
