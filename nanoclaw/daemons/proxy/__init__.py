"""proxy: the API relay, the one process holding the Anthropic credential.

SUMMARY
    One Unix socket per agent, ``api.sock`` in ``<runtime>/proxy/<folder>/``
    (a team member's in ``<runtime>/proxy/.team/<folder>/<member>/``, so its
    calls are its own), the directory the agent's container mounts read-only at
    ``/run/nanoclaw-proxy`` beside the egress daemon's ``web.sock``. The agent
    runner's forwarder relays ``ANTHROPIC_BASE_URL=http://127.0.0.1:<port>`` to
    it. The relay (``relay.py``) passes only the endpoints the agent's CLI uses
    (``endpoints.py``: the target parsed once, the upstream URL built from the
    parsed parts), holds server-side tools (web search, web fetch, MCP servers)
    to the group's egress policy (``tools.py``), drops whatever credential the
    agent sent, adds the real one, and relays to ``proxy_upstream``, streaming
    the answer back (``answer.py``).

    Accounting (``core.usage``, ``budget.py``): a model outside ``[usage]
    allowed_models``, an unpriced model where a USD budget applies, and a
    group whose budget is spent are refused before upstream sees the request
    (the queue is told of a spent budget, and tells the chat once). Each call
    holds a reservation (its input estimate and ``max_tokens`` at its model's
    price) until its answer is counted, so calls in flight count as spent.
    Each answer's usage is read from its bytes as they pass (``meter.py``),
    JSON or stream, to the end even when the agent left early, and stored per
    group, team member, job and day, with one journal line: ``GROUP= AGENT=
    JOB= MODEL= TOKENS_IN= TOKENS_OUT= COST_USD=``. Calls in flight and request
    bytes held are capped per agent and per group (``[api]``).

    The agents' web is another program's (``nanoclaw-egress``), so that no
    bug in code parsing hostile web traffic runs beside the key.

    The voice API (``[voice] engine = "api"``, ``voice.py``): the runner asks
    ``transcribe`` on this daemon's own socket for a note it has checked; the
    proxy sends that note to ``[voice] api_url`` with the voice credential,
    which it alone holds, as it holds the Anthropic one.

READS
    Requests on the agents' API sockets; the credential (``core.credentials``:
    systemd's ``LoadCredential=`` copy, or the 0600 file), and the voice API's;
    the ``groups`` table and each group's team (which sockets to serve); budgets
    and prices; the runner's copies of voice notes (``<state>/voice/``), read-only.

WRITES
    Requests to ``proxy_upstream`` and, with the voice API chosen, voice notes to
    its ``api_url``, and nowhere else; ``usage`` rows;
    ``budget_spent`` to ``spool/queue``. The real key or token never enters a
    container (not its environment, files or ``podman inspect``).

PRIVILEGE
    The service user, with network for the API only. Not dumpable, so no other
    process of that user (egress among them) can read its memory.

HOSTILE INPUT
    Every byte on an API socket is the agent's. Request heads are parsed by
    aiohttp with size limits (a malformed head gets aiohttp's plain 400); the
    target is parsed once, in origin form only; bodies are size-limited and
    parsed once, and what is sent is written from what was checked (JSON the
    relay serialises; ``anthropic-beta`` values on a list). The relay's own
    refusals are well-formed JSON in the API's error shape, each with a
    journal line whose fields are the relay's, never the agent's text.
"""

from __future__ import annotations

import asyncio
import json
from urllib.parse import urlsplit

import aiohttp
from multidict import CIMultiDict

from nanoclaw.core.agent_sockets import API_SOCKET
from nanoclaw.core.credentials import OAUTH_BETA, Credential, CredentialError, credential_path, load_credential
from nanoclaw.core.http_serve import NO_AUTO_HEADERS, AgentSockets
from nanoclaw.core.models import db
from nanoclaw.core.protocol import Spool
from nanoclaw.core.skeleton import Daemon
from nanoclaw.daemons.proxy.budget import Slots, Tally


def not_dumpable() -> None:
    """Keep other processes of the same user (egress, which parses hostile web traffic,
    runs as it) out of this one's memory: a process that is not dumpable has its /proc
    entries owned by root and cannot be ptraced without CAP_SYS_PTRACE."""
    import ctypes
    pr_set_dumpable = 4
    if ctypes.CDLL(None, use_errno=True).prctl(pr_set_dumpable, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


class ProxyDaemon(Daemon):
    name = "proxy"

    def setup(self) -> None:
        not_dumpable()  # before the credential is read
        from nanoclaw.daemons.proxy.relay import Relay
        self.relay = Relay(self)
        self.sockets = AgentSockets(self.cfg, API_SOCKET, self.relay.handle, keepalive_timeout=75)
        self.told: set[str] = set()  # budgets the queue has been told are spent
        self.tally = Tally(self.cfg)
        self.slots = Slots(self.cfg)
        self.queue_spool = Spool(self.cfg.spool_dir / "queue").ensure()
        # This process writes usage rows only. In WAL mode NORMAL still commits atomically but
        # leaves the fsync to the checkpoint: a power cut may lose the last seconds of counts
        # (a budget then stops a call or two later), and no answer waits for the disk.
        db.execute_sql("PRAGMA synchronous=NORMAL")
        self.upstream = urlsplit(self.cfg.proxy_upstream)
        self.requests = 0
        self.credential: Credential | None = None
        # No cookie jar and nothing added to what the agent sent; bodies pass undecoded, so
        # lengths and encodings stay the API's.
        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=30), cookie_jar=aiohttp.DummyCookieJar(),
            auto_decompress=False, skip_auto_headers=NO_AUTO_HEADERS, trust_env=False)
        from nanoclaw.daemons.proxy.voice import VoiceApi
        self.voice = VoiceApi(self)
        self.load_all()

    def load(self) -> str:
        """(Re-)read the credential; '' or why there is none."""
        try:
            self.credential = load_credential(self.cfg)
        except CredentialError as exc:
            self.credential = None
            self.log.error("%s", exc)
            return str(exc)
        self.log.info("credential loaded kind=%s from %s", self.credential.kind, credential_path(self.cfg))
        return ""

    def load_all(self) -> str:
        """Both credentials, as at start; '' or why the Anthropic one is missing."""
        self.voice.load()
        return self.load()

    async def handle(self, req: dict, writer: asyncio.StreamWriter) -> dict | None:
        if req["op"] == "reload":  # `nanoclaw credential set` where no unit restart hands it over
            error = self.load_all()
            return {"ok": not error, "error": error, "kind": self.credential.kind if self.credential else "",
                    "voice": self.voice.credential is not None}
        if req["op"] == "transcribe":  # the runner, for a note its container checked ([voice] engine = "api")
            return await self.voice.transcribe(req)
        if req["op"] == "check":  # `nanoclaw credential set`: does the API accept it?
            if self.credential is None and self.load():
                return {"ok": False, "error": "the proxy holds no credential"}
            return {"ok": True, **await self._check()}
        if req["op"] == "ensure":
            await self.work()
            return self.sockets.ensured(req)
        return await super().handle(req, writer)

    async def work(self) -> float | None:
        await self.sockets.sync()
        return None

    async def _check(self) -> dict:
        """One cheap authenticated request (list one model): the status and the API's words."""
        assert self.credential is not None
        headers = CIMultiDict([("anthropic-version", "2023-06-01"), *self.credential.headers()])
        if self.credential.kind == "oauth":
            headers["anthropic-beta"] = OAUTH_BETA
        url = self.cfg.proxy_upstream.rstrip("/") + "/v1/models?limit=1"
        try:
            async with self.session.get(url, headers=headers, timeout=aiohttp.ClientTimeout(total=30)) as resp:
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

    def status(self) -> str:
        cred = self.credential.kind if self.credential else "NO CREDENTIAL"
        return (f"{len(self.sockets)} agent socket(s), credential: {cred}, {self.requests} API requests, "
                f"{sum(self.slots.group_calls.values())} in flight, {sum(self.slots.buffered.values())} "
                "request bytes held" + self.voice.status())

    async def shutdown(self) -> None:
        await self.sockets.close()
        await self.session.close()
        await self.voice.close()


main = ProxyDaemon.main
