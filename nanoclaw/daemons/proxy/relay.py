"""One API call through an agent's api.sock, up to the moment it leaves.

The target is parsed once and must be an endpoint on the allowlist (``endpoints.py``);
the body is read under the agent's and the group's caps, parsed once, checked (model,
price, server-side tools under the group's egress policy: ``tools.py``) and written
again from what was checked; a Messages call holds a reservation against the budgets
(``budget.py``); then the credential is added and the request, built from the parsed
parts, goes to ``proxy_upstream``. The answer is ``answer.py``'s.
"""

from __future__ import annotations

import asyncio
import fnmatch
import json
import math
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from multidict import CIMultiDict
from yarl import URL

from nanoclaw.core import usage as usage_mod
from nanoclaw.core.credentials import OAUTH_BETA, CredentialError, load_credential
from nanoclaw.core.http_serve import HOP, end_to_end
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group
from nanoclaw.core.protocol import nudge
from nanoclaw.daemons.proxy.answer import Call, Estimate, refusal
from nanoclaw.daemons.proxy.budget import TOKENS_PER_BYTE, Hold
from nanoclaw.daemons.proxy.endpoints import ENDPOINTS, BadTarget, Endpoint, betas, parse_target
from nanoclaw.daemons.proxy.tools import police

if TYPE_CHECKING:
    from nanoclaw.daemons.proxy import ProxyDaemon

# What the agent sent that never goes on: hop-by-hop headers, the length (the body is new),
# whatever credential it sent (the relay adds the real one), its betas (filtered) and its
# content type (the body is JSON the relay wrote).
_DROP = HOP | {"content-length", "x-api-key", "authorization", "anthropic-beta", "content-type"}
HOLD_WAIT = 60.0  # seconds a call waits for calls in flight to settle before it is told to retry
SEARCHES_GUESS = 10  # a web_search tool without max_uses: the searches reserved for


def _encodings(value: str) -> str:
    """The agent's Accept-Encoding cut to what the meter can read (gzip, deflate)."""
    kept = [part.strip() for part in value.split(",")
            if part.split(";")[0].strip().lower() in ("gzip", "deflate", "identity")]
    return ", ".join(kept)


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not JSON")


class Relay:
    """The API relay's request handler, on the daemon's loop and state."""

    def __init__(self, daemon: ProxyDaemon) -> None:
        self.d = daemon
        self.cfg = daemon.cfg
        self.log = daemon.log
        self.dropped: set[str] = set()  # beta values already said to be dropped

    def _refuse(self, folder: str, agent: str, code: int, reason: str, kind: str = "nanoclaw_proxy") -> web.Response:
        """A refusal, with its journal line (the reason may quote the agent: text, never a field)."""
        self.log.warning("refused (%s): %s", code, reason, extra=log_fields(group=folder, agent=agent))
        return refusal(code, reason, kind)

    async def handle(self, folder: str, agent: str, request: web.BaseRequest) -> web.StreamResponse:
        method, raw = request.method, request.raw_path
        shown = f"{method[:10]} {raw[:100]!r}"
        try:
            target = parse_target(raw)
        except BadTarget as exc:
            return self._refuse(folder, agent, 403, f"nanoclaw: {shown} is not relayed: {exc}")
        endpoint = ENDPOINTS.get((method, target.path))
        if endpoint is None:
            relayed = ", ".join(f"{m} {p}" for m, p in ENDPOINTS)
            return self._refuse(folder, agent, 403, f"nanoclaw: {method[:10]} {target.path[:100]} is not an API "
                                                    f"endpoint the agent's CLI uses (relayed: {relayed})")
        if not {k for k, _ in target.query} <= endpoint.query:
            return self._refuse(folder, agent, 403, f"nanoclaw: {shown}: a query key the endpoint does not take")
        if self.d.credential is None:
            try:
                self.d.credential = load_credential(self.cfg)
            except CredentialError as exc:
                self.log.error("request refused: %s", exc, extra=log_fields(group=folder, agent=agent))
                return refusal(503, "nanoclaw has no Anthropic credential configured")
        busy = self.d.slots.take(folder, agent)
        if busy:
            return self._refuse(folder, agent, 429, f"nanoclaw: {busy}; try again shortly", "rate_limit_error")
        try:
            return await self._call(folder, agent, request, endpoint, target.query_string)
        finally:
            self.d.slots.give(folder, agent)

    async def _read(self, folder: str, agent: str, request: web.BaseRequest) -> bytes | web.Response:
        """The whole body, under the request's and the group's byte caps. Its bytes stay
        counted against the group's until the caller gives them back."""
        cap = self.cfg.api.max_body_bytes
        too_large = f"nanoclaw: a request body is at most {cap} bytes"
        if (request.content_length or 0) > cap:
            return self._refuse(folder, agent, 413, too_large, "request_too_large")
        body = bytearray()
        try:
            async for chunk in request.content.iter_any():
                refused = None
                if len(body) + len(chunk) > cap:
                    refused = self._refuse(folder, agent, 413, too_large, "request_too_large")
                elif not self.d.slots.buffer(folder, len(chunk)):
                    refused = self._refuse(folder, agent, 429, "nanoclaw: this group's calls hold "
                                           f"{self.cfg.api.max_buffered_per_group} bytes of requests already; "
                                           "try again shortly", "rate_limit_error")
                if refused is not None:
                    self.d.slots.unbuffer(folder, len(body))
                    return refused
                body += chunk
        except ConnectionError:  # the agent went away mid-body: no answer can reach it
            self.d.slots.unbuffer(folder, len(body))
            self.log.info("the agent went away while sending a request", extra=log_fields(group=folder, agent=agent))
            return refusal(400, "nanoclaw: the request body did not arrive whole")
        except BaseException:  # stopping: its bytes go
            self.d.slots.unbuffer(folder, len(body))
            raise
        return bytes(body)

    def _check(self, folder: str, agent: str, body: dict, endpoint: Endpoint) -> web.Response | None:
        """The checks on a parsed body before it leaves: an allowed model, with a price when a
        USD budget applies; server-side tools held to the group's egress policy."""
        model = body.get("model")
        shown = repr(model)[:80] if isinstance(model, str) else "no model"
        allowed = self.cfg.usage.allowed_models
        if allowed and not (isinstance(model, str) and any(fnmatch.fnmatchcase(model, p) for p in allowed)):
            return self._refuse(folder, agent, 400, f"nanoclaw: the model {shown} is not allowed here "
                                                    f"(allowed: {', '.join(allowed)})", "invalid_request_error")
        if endpoint.metered and usage_mod.price_of(self.cfg, model if isinstance(model, str) else "") is None \
                and any(lim.unit == "usd" for lim in usage_mod.limits(self.cfg, folder, usage_mod.ALL)):
            return self._refuse(folder, agent, 403, (
                f"nanoclaw: the model {shown} has no price, and a USD budget applies to this group, so its "
                "calls could not be counted; the owner adds its price ([usage.prices.\"<model>\"] in the "
                "configuration) or chooses a priced model"), "nanoclaw_budget")
        why = police(body, self.cfg.egress_for(folder))
        if why:
            return self._refuse(folder, agent, 403, f"nanoclaw: {why}", "permission_error")
        return None

    def _estimate(self, body: dict, size: int) -> Estimate:
        """A call's reservation: its input, guessed from the body's size, and all of
        ``max_tokens``, at its model's price, plus the web searches it may make."""
        model = body["model"] if isinstance(body.get("model"), str) else ""
        price = usage_mod.price_of(self.cfg, model)
        out = body.get("max_tokens")
        out = out if isinstance(out, int) and not isinstance(out, bool) and out > 0 else 0
        tokens_in = math.ceil(size * TOKENS_PER_BYTE)
        searches = 0
        for tool in body.get("tools") or []:
            if str(tool.get("type", "")).startswith("web_search_"):
                uses = tool.get("max_uses")
                searches += uses if isinstance(uses, int) and not isinstance(uses, bool) and uses > 0 \
                    else SEARCHES_GUESS
        usd = 0.0 if price is None else ((tokens_in * price.input + out * price.output) / 1e6
                                         + searches * self.cfg.usage.web_search_usd)
        return Estimate(model[:100], price, usd, tokens_in, out)

    def _prepare(self, folder: str, agent: str, raw: bytes, endpoint: Endpoint) -> tuple[bytes, Estimate] | web.Response:
        """Parse the body once, check it, and write the request from what was checked (a
        duplicate key, or a spelling the API might read otherwise, is gone). One synchronous
        step on the loop: at most one parsed body exists at a time, whatever groups send."""
        try:
            body = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            body = None
        if not isinstance(body, dict):
            return self._refuse(folder, agent, 400, "nanoclaw: the request body must be a JSON object",
                                "invalid_request_error")
        refused = self._check(folder, agent, body, endpoint)
        if refused is not None:
            return refused
        try:
            out = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
        except (UnicodeEncodeError, RecursionError):
            return self._refuse(folder, agent, 400, "nanoclaw: the request body is not valid UTF-8 JSON",
                                "invalid_request_error")
        return out, self._estimate(body, len(out))

    def _spent(self, folder: str, agent: str, spent: usage_mod.Exceeded) -> web.Response:
        d = self.d
        group = Group.get_or_none(Group.folder == folder)
        text = spent.text(group.name if group else folder)
        if spent.key not in d.told:
            # The queue tells the chat (once: the notice's key) and holds the group's work.
            # Kept if the disk refuses it: the call is refused all the same.
            d.put(d.queue_spool, "budget_spent", {"group": folder, "agent": agent, "key": spent.key},
                  then=lambda: nudge(self.cfg.socket("queue")))
            d.wake.set()  # a kept write is tried at the next pass
            d.told.add(spent.key)
            self.log.warning("budget spent: %s", text, extra=log_fields(group=folder, agent=agent))
        return refusal(403, f"nanoclaw: {text}. The owner can raise it (nanoclaw budget).", "nanoclaw_budget")

    async def _reserve(self, folder: str, agent: str, estimate: Estimate) -> Hold | web.Response:
        """Admit a call against the budgets and hold its reservation. A budget already spent
        refuses it (the chat is told once); one that only the calls in flight would spend
        makes it wait for them (at most HOLD_WAIT), then tells the CLI to retry."""
        tally = self.d.tally
        deadline = time.monotonic() + HOLD_WAIT
        waiting = False
        while True:
            in_force = usage_mod.limits(self.cfg, folder, usage_mod.ALL)  # again after a wait: the owner may raise
            spent = usage_mod.exceeded(self.cfg, folder, spent_of=tally.spent, in_force=in_force)
            if spent is not None:
                return self._spent(folder, agent, spent)
            if usage_mod.exceeded(self.cfg, folder, spent_of=tally.committed, in_force=in_force) is None:
                return tally.hold(folder, estimate.usd, estimate.tokens_in + estimate.max_tokens)
            if not waiting:
                waiting = True
                self.log.info("a call waits: the calls in flight hold what is left of the budget",
                              extra=log_fields(group=folder, agent=agent))
            left = deadline - time.monotonic()
            if left <= 0:
                return self._refuse(folder, agent, 429, "nanoclaw: the calls this group has in flight hold what "
                                                        "is left of its budget; try again shortly", "rate_limit_error")
            await tally.wait(left)

    async def _call(self, folder: str, agent: str, request: web.BaseRequest, endpoint: Endpoint,
                    query: str) -> web.StreamResponse:
        started = time.monotonic()
        raw = await self._read(folder, agent, request)
        if isinstance(raw, web.Response):
            return raw
        slots = self.d.slots
        buffered = len(raw)

        def unbuffer() -> None:
            nonlocal buffered
            slots.unbuffer(folder, buffered)
            buffered = 0

        hold: Hold | None = None
        try:
            prepared = self._prepare(folder, agent, raw, endpoint)
            if isinstance(prepared, web.Response):
                return prepared
            out, estimate = prepared
            del raw, prepared
            unbuffer()  # the request's bytes are out's now
            slots.buffered[folder] += len(out)
            buffered = len(out)
            if endpoint.metered:
                held = await self._reserve(folder, agent, estimate)
                if isinstance(held, web.Response):
                    return held
                hold = held
                if request.transport is None or request.transport.is_closing():
                    return refusal(400, "nanoclaw: the agent went away while its call waited")  # never sent
            box = [out]  # the only reference: sent, its bytes are freed while the answer streams
            del out
            return await self._send(folder, agent, request, endpoint, query, box, estimate, hold, started, unbuffer)
        finally:
            unbuffer()
            self.d.tally.release(hold)  # after the call's real usage was counted

    def _headers(self, request: web.BaseRequest) -> CIMultiDict[str]:
        d = self.d
        assert d.credential is not None
        headers = end_to_end(request.headers, _DROP)
        headers["content-type"] = "application/json"
        if "accept-encoding" in headers:
            headers["accept-encoding"] = _encodings(headers["accept-encoding"]) or "identity"
        passed, dropped = betas(request.headers.getall("anthropic-beta", []), self.cfg.api.betas)
        for beta in set(dropped) - self.dropped:
            self.dropped.add(beta)
            self.log.warning("anthropic-beta %r dropped: not on the relay's list (add it to [api] betas if "
                             "the agent's CLI needs it)", beta[:80])
        if d.credential.kind == "oauth" and OAUTH_BETA not in passed:
            passed.append(OAUTH_BETA)
        if passed:
            headers["anthropic-beta"] = ",".join(passed)
        headers.extend(d.credential.headers())
        return headers

    async def _send(self, folder: str, agent: str, request: web.BaseRequest, endpoint: Endpoint, query: str,
                    box: list[bytes], estimate: Estimate, hold: Hold | None, started: float,
                    unbuffer: Callable[[], None]) -> web.StreamResponse:
        d = self.d
        base = d.upstream
        url = URL.build(scheme=base.scheme, host=base.hostname or "", port=base.port,
                        path=base.path.rstrip("/") + endpoint.path, query_string=query, encoded=True)
        try:
            upstream = await d.session.request(endpoint.method, url, headers=self._headers(request),
                                               data=box.pop(), allow_redirects=False)
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as exc:
            self.log.error("upstream %s unreachable: %r", base.netloc, exc, extra=log_fields(group=folder, agent=agent))
            return refusal(502, "upstream unreachable")
        finally:
            unbuffer()  # sent, or it never will be
        call = Call(d, folder, agent, endpoint, estimate, hold, upstream)
        try:
            resp = await call.stream_back(request)
        finally:
            upstream.release()
        d.requests += 1
        self.log.info("%s %s -> %s in %.2fs%s", endpoint.method, endpoint.path, upstream.status,
                      time.monotonic() - started, call.detail, extra=log_fields(**call.subjects))
        return resp
