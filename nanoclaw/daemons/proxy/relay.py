"""One API call through an agent's api.sock: checked, the credential added, relayed to
``proxy_upstream``, its answer streamed back and metered as it passes."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from yarl import URL

from nanoclaw.core import usage as usage_mod
from nanoclaw.core.credentials import OAUTH_BETA, CredentialError, load_credential
from nanoclaw.core.http_serve import HOP, cut_off, end_to_end
from nanoclaw.core.log import fields
from nanoclaw.core.models import Group, Job
from nanoclaw.core.protocol import nudge
from nanoclaw.daemons.proxy.meter import Meter

if TYPE_CHECKING:
    from nanoclaw.daemons.proxy import ProxyDaemon

MAX_BODY = 32 * 1024 * 1024
# The relay reads the whole body (its length is new) and drops whatever credential the agent
# sent: it adds the real one.
_DROP = HOP | {"content-length", "x-api-key", "authorization", "anthropic-beta"}


def _encodings(value: str) -> str:
    """The agent's Accept-Encoding cut to what the meter can read (gzip, deflate)."""
    kept = [part.strip() for part in value.split(",")
            if part.split(";")[0].strip().lower() in ("gzip", "deflate", "identity")]
    return ", ".join(kept)


def refusal(code: int, reason: str, kind: str = "nanoclaw_proxy") -> web.Response:
    """The API's own error shape, so the agent's CLI shows the message (and, for 4xx
    statuses other than 408, 409 and 429, does not retry)."""
    resp = web.json_response({"type": "error", "error": {"type": kind, "message": reason}}, status=code)
    resp.force_close()
    return resp


async def _relay_response(request: web.BaseRequest, upstream: aiohttp.ClientResponse,
                          tap: Callable[[bytes], None] | None = None,
                          settle: Callable[[], None] | None = None) -> tuple[web.StreamResponse, str]:
    """Stream the answer back to the agent as it arrives (SSE stays live); bodies pass
    undecoded. ``tap`` sees each chunk before it is passed on; ``settle`` runs once the body
    is all read, before the response is ended (or after it broke). Returns the response and,
    if either side broke mid-way, why (the connection is then dropped)."""
    resp = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=end_to_end(upstream.headers))
    await resp.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            if tap is not None:
                tap(chunk)
            await resp.write(chunk)
        if settle is not None:
            settle, done = None, settle
            done()
        await resp.write_eof()
    except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
        cut_off(request)
        if settle is not None:
            settle()
        return resp, f"cut short: {exc!r}"
    return resp, ""


class Relay:
    """The API relay's request handler, on the daemon's loop and state."""

    def __init__(self, daemon: ProxyDaemon) -> None:
        self.d = daemon
        self.cfg = daemon.cfg
        self.log = daemon.log

    async def handle(self, folder: str, agent: str, request: web.BaseRequest) -> web.StreamResponse:
        d = self.d
        started = time.monotonic()
        target = request.raw_path
        if not target.startswith("/v1/"):
            return refusal(403, f"path {target!r} is not an API path")
        if d.credential is None:
            try:
                d.credential = load_credential(self.cfg)
            except CredentialError as exc:
                self.log.error("request refused: %s", exc, extra=fields(group=folder, agent=agent))
                return refusal(503, "nanoclaw has no Anthropic credential configured")
        body = bytearray()
        async for chunk in request.content.iter_any():
            body += chunk
            if len(body) > MAX_BODY:
                self.log.warning("request body over %d bytes refused", MAX_BODY,
                                 extra=fields(group=folder, agent=agent))
                return refusal(413, "request body too large")
        metered = request.method == "POST" and target.split("?")[0] == "/v1/messages"
        if metered or target.startswith("/v1/messages/"):
            refused = self._admit(folder, agent, bytes(body))
            if refused is not None:
                return refused
        headers = end_to_end(request.headers, _DROP)
        if metered and "accept-encoding" in headers:
            headers["accept-encoding"] = _encodings(headers["accept-encoding"]) or "identity"
        beta = request.headers.get("anthropic-beta", "")
        if d.credential.kind == "oauth":
            beta = ",".join(filter(None, [beta, OAUTH_BETA]))
        if beta:
            headers["anthropic-beta"] = beta
        headers.extend(d.credential.headers())
        url = URL(self.cfg.proxy_upstream.rstrip("/") + target, encoded=True)
        try:
            upstream = await d.session.request(request.method, url, headers=headers,
                                               data=bytes(body) or None, allow_redirects=False)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.log.error("upstream %s unreachable: %r", d.upstream.netloc, exc,
                           extra=fields(group=folder, agent=agent))
            return refusal(502, "upstream unreachable")
        meter = Meter(upstream.headers.get("Content-Type", ""),
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
        d.requests += 1
        self.log.info("%s %s -> %s in %.2fs%s%s", request.method, target.split("?")[0], upstream.status,
                      time.monotonic() - started, detail, f" ({broken})" if broken else "",
                      extra=fields(**subjects))
        return resp

    def _admit(self, folder: str, agent: str, body: bytes) -> web.Response | None:
        """The checks before a Messages call leaves: an allowed model, a budget not spent."""
        d = self.d
        allowed = self.cfg.usage.allowed_models
        if allowed:
            try:
                model = json.loads(body).get("model")
            except (ValueError, AttributeError):
                model = None
            if not isinstance(model, str) or not any(fnmatch.fnmatchcase(model, p) for p in allowed):
                shown = repr(model)[:80] if isinstance(model, str) else "no model"
                self.log.warning("asked for model %s: refused, not in [usage] allowed_models", shown,
                                 extra=fields(group=folder, agent=agent))
                return refusal(400, f"nanoclaw: the model {shown} is not allowed here "
                                    f"(allowed: {', '.join(allowed)})", "invalid_request_error")
        spent = usage_mod.exceeded(self.cfg, folder, spent_of=d.tally.spent)
        if spent is None:
            return None
        group = Group.get_or_none(Group.folder == folder)
        text = spent.text(group.name if group else folder)
        if spent.key not in d.told:
            # The queue tells the chat (once: the notice's key) and holds the group's work.
            d.queue_spool.put("budget_spent", {"group": folder, "agent": agent, "key": spent.key})
            nudge(self.cfg.socket("queue"))
            d.told.add(spent.key)
            self.log.warning("budget spent: %s", text, extra=fields(group=folder, agent=agent))
        return refusal(403, f"nanoclaw: {text}. The owner can raise it (nanoclaw budget).", "nanoclaw_budget")

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
            self.d.tally.add(folder, usd, counts.total, at)
        except Exception as exc:  # noqa: BLE001 - a full disk must not fail the agent's answer
            self.log.error("usage not recorded: %s", exc, extra=fields(group=folder, agent=agent))
            usd = usage_mod.cost(self.cfg, counts)
        subjects.update(job=job, model=counts.model or "-", tokens_in=counts.tokens_in,
                        tokens_out=counts.output_tokens, cost_usd="unknown" if usd is None else f"{usd:.6f}")
        return (f" (input={counts.input_tokens} cache_write={counts.cache_write_tokens} "
                f"cache_read={counts.cache_read_tokens})")
