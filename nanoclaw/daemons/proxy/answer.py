"""A call's answer: streamed back to the agent as it arrives (SSE stays live), metered as
it passes, then settled: its real usage recorded and its reservation given back.

The API bills what it generated whether anyone read it or not. So when the agent goes
away mid-answer, the relay reads on, discarding, until the final usage has passed
(bounded: ``DRAIN_SECONDS``, and bytes in proportion to ``max_tokens``). A successful
answer whose final usage never came is charged its reservation's output, all of
``max_tokens``: never less than the call may have cost.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web

from nanoclaw.core import usage as usage_mod
from nanoclaw.core.costs import Price
from nanoclaw.core.http_serve import cut_off, end_to_end
from nanoclaw.core.log import log_fields
from nanoclaw.core.models import Group, Job
from nanoclaw.daemons.proxy.budget import Hold
from nanoclaw.daemons.proxy.endpoints import Endpoint
from nanoclaw.daemons.proxy.meter import Meter

if TYPE_CHECKING:
    from nanoclaw.daemons.proxy import ProxyDaemon

DRAIN_SECONDS = 600.0  # the agent gone: how long the relay reads on for the final usage
DRAIN_BYTES = 1 << 20  # ... and how many bytes, plus DRAIN_BYTES_PER_TOKEN for each of max_tokens
DRAIN_BYTES_PER_TOKEN = 256


def refusal(code: int, reason: str, kind: str = "nanoclaw_proxy") -> web.Response:
    """The API's own error shape, so the agent's CLI shows the message (and, for 4xx
    statuses other than 408, 409 and 429, does not retry)."""
    resp = web.json_response({"type": "error", "error": {"type": kind, "message": reason}}, status=code)
    resp.force_close()
    return resp


@dataclass(frozen=True)
class Estimate:
    """What a call was admitted as: its model, the price it was held at, its reservation."""

    model: str
    price: Price | None
    usd: float
    tokens_in: int  # guessed from the body's size
    max_tokens: int


class Call:
    """One answer on its way back, and its settling."""

    def __init__(self, daemon: ProxyDaemon, folder: str, agent: str, endpoint: Endpoint, estimate: Estimate,
                 hold: Hold | None, upstream: aiohttp.ClientResponse) -> None:
        self.d, self.folder, self.agent, self.estimate, self.hold = daemon, folder, agent, estimate, hold
        self.upstream = upstream
        self.content_type = upstream.headers.get("Content-Type", "")
        self.meter = Meter(self.content_type, upstream.headers.get("Content-Encoding", "")) if endpoint.metered \
            else None
        self.subjects: dict = {"group": folder, "agent": agent}
        self.detail = ""
        self.notes: list[str] = []

    async def stream_back(self, request: web.BaseRequest) -> web.StreamResponse:
        up = self.upstream
        resp = web.StreamResponse(status=up.status, reason=up.reason, headers=end_to_end(up.headers))
        deadline: float | None = None  # set when the agent has gone
        try:
            await resp.prepare(request)
        except ConnectionError:
            deadline = time.monotonic() + DRAIN_SECONDS
        limit = DRAIN_BYTES + self.estimate.max_tokens * DRAIN_BYTES_PER_TOKEN
        drained = 0
        broken = ""
        try:
            while True:
                if deadline is None:
                    chunk = await up.content.readany()
                elif self.meter is None or self.meter.final:
                    break  # what is left is text nobody reads, already counted
                elif drained > limit or deadline <= time.monotonic():
                    self.notes.append(f"the agent went away; its final usage did not come within {drained} bytes")
                    break
                else:
                    chunk = await asyncio.wait_for(up.content.readany(), deadline - time.monotonic())
                if not chunk:
                    break
                if self.meter is not None:
                    self.meter.feed(chunk)
                if deadline is not None:
                    drained += len(chunk)
                    continue
                try:
                    await resp.write(chunk)
                except ConnectionError:
                    deadline = time.monotonic() + DRAIN_SECONDS
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            broken = f"cut short: {exc!r}"
            self.notes.append(broken)
        if deadline is not None:
            self.notes.append("the agent went away mid-answer; the relay read on for its usage")
        # Before the answer ends: the agent's next call, checked on this same loop, sees this one.
        self.settle()
        if deadline is None:
            if broken:
                cut_off(request)  # a cut answer must look broken to the agent, not complete
            else:
                try:
                    await resp.write_eof()
                except ConnectionError:
                    pass
        self.detail += "".join(f" ({note})" for note in self.notes)
        return resp

    def settle(self) -> None:
        """Record what the call cost and give its reservation back."""
        try:
            if self.meter is not None:
                self._record(self.meter.finish())
        finally:
            self.d.tally.release(self.hold)
            self.hold = None

    def _record(self, counts: usage_mod.Counts) -> None:
        est = self.estimate
        if not self.meter.final:  # type: ignore[union-attr]
            if not 200 <= self.upstream.status < 300:
                return  # an error answer: nothing was generated, nothing is billed
            counts.model = counts.model or est.model
            if not counts.seen:
                counts.input_tokens = est.tokens_in
            counts.output_tokens = max(counts.output_tokens, est.max_tokens)
            self.notes.append(f"its final usage never came: charged {counts.output_tokens} output tokens, "
                              "the call's max_tokens")
        folder, agent = self.folder, self.agent
        job = None
        try:
            job = (Job.select(Job.id).join(Group).where(Group.folder == folder, Job.agent == agent,
                                                         Job.status.in_(("queued", "running")))
                   .order_by(Job.id.desc()).scalar())
            at = time.time()
            usd = usage_mod.record(self.d.cfg, folder, agent, job, counts, "event-stream" in self.content_type, at,
                                   est.price)
            self.d.tally.add(folder, usd, counts.total, at)
        except Exception as exc:  # noqa: BLE001 - a full disk must not fail the agent's answer
            self.d.log.error("usage not recorded: %s", exc, extra=log_fields(group=folder, agent=agent))
            usd = usage_mod.cost(self.d.cfg, counts, est.price)
        self.subjects.update(job=job, model=counts.model or "-", tokens_in=counts.tokens_in,
                             tokens_out=counts.output_tokens, cost_usd="unknown" if usd is None else f"{usd:.6f}")
        self.detail = (f" (input={counts.input_tokens} cache_write={counts.cache_write_tokens} "
                       f"cache_read={counts.cache_read_tokens}"
                       + (f" web_search={counts.web_search_requests}" if counts.web_search_requests else "")
                       + (f" web_fetch={counts.web_fetch_requests}" if counts.web_fetch_requests else "") + ")")
