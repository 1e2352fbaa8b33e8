"""Dispatch: try the plan's candidates in order, falling back only before the first byte.

The commit point is the first content-bearing chunk: until then a refusal, an error, a
hang or a broken stream moves on to the next candidate (within the attempt cap and the
retry budget); after it, failures become an in-band SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .config import RoutingSettings, ServerSettings
from .drain import IN_FLIGHT, InFlight, OpenStream, shutdown_error
from .errors import RouterError
from .health import Health
from .intent import Intent
from .providers.base import (
    Provider,
    UnsupportedFeatureError,
    UpstreamError,
    UpstreamRequest,
    UpstreamStream,
)
from .relay import SSERelay
from .routing import Candidate, Plan

log = logging.getLogger("model_router.dispatch")


class RetryBudget:
    """Fallback attempts in flight may be at most ``ratio`` x requests in flight (or ``floor``)."""

    __slots__ = ("active", "denied", "floor", "ratio", "retrying")

    def __init__(self, ratio: float, floor: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self.active = 0
        self.retrying = 0
        self.denied = 0

    def acquire(self) -> bool:
        if self.retrying < max(self.floor, int(self.ratio * self.active)):
            self.retrying += 1
            return True
        self.denied += 1
        return False

    def release(self) -> None:
        self.retrying -= 1


@dataclass(slots=True)
class Outcome:
    """What happened to one request; filled in as dispatch goes, read by logs and accounting."""

    request_id: str
    endpoint: str
    stream: bool
    intent: str = ""
    model: str | None = None
    provider: str | None = None
    reason: str = ""
    attempts: int = 0
    status: int = 0
    ttft_ms: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    error: str | None = None  # failure kind of the final error, if any
    escalated_from: str | None = None  # the tier whose answer was retried a tier up
    arm: str | None = None  # experiment arm, "<name>:control" or "<name>:treatment"
    complexity: float | None = None  # the classifier's score when tier was auto
    key_id: str | None = None  # the client's API key id (never the key), once keys exist
    prefer: str | None = None  # as requested (None for pinned models)
    tier: str | None = None  # as requested (None: any tier, or pinned)
    cache_hit: bool = False

    def take_usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        self.prompt_tokens = int(usage.get("prompt_tokens") or 0)
        self.completion_tokens = int(usage.get("completion_tokens") or 0)
        self.cost = float(usage.get("cost") or 0.0)


def router_headers(cand: Candidate, plan: Plan, outcome: Outcome) -> dict[str, str]:
    headers = {
        "x-router-model": cand.model.id,
        "x-router-provider": cand.deployment.provider,
        "x-router-reason": plan.reason,
        "x-router-attempts": str(outcome.attempts),
        "x-request-id": outcome.request_id,
    }
    if outcome.arm:
        headers["x-router-arm"] = outcome.arm
    if outcome.escalated_from:
        headers["x-router-escalated"] = f"{outcome.escalated_from}->{cand.model.tier}"
    return headers


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        health: Health,
        routing: RoutingSettings,
        server: ServerSettings,
    ) -> None:
        self.providers = providers
        self.health = health
        self.routing = routing
        self.server = server
        self.budget = RetryBudget(routing.retry_budget_ratio, routing.retry_budget_min)

    def _candidates(self, plan: Plan) -> Iterator[tuple[Candidate, bool]]:
        """(candidate, is_fallback) in order, within the attempt cap, the retry budget and
        half-open trials. The caller releases the budget slot of a fallback when its attempt
        is over."""
        tried = 0
        for cand in plan.candidates:
            if tried >= self.routing.max_attempts:
                return
            fallback = tried > 0
            if fallback and not self.budget.acquire():
                log.warning("retry budget exhausted; not falling back to %s", cand.deployment.key)
                return
            if plan.forced or self.health.allow(cand.deployment.key):
                tried += 1
                yield cand, fallback
            elif fallback:
                self.budget.release()

    def _request(self, cand: Candidate, intent: Intent, body: dict[str, Any]) -> UpstreamRequest:
        upstream_body = {**body, "model": cand.deployment.upstream_id}
        if intent.stream:
            upstream_body["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        return UpstreamRequest(
            intent.endpoint, cand.deployment.upstream_id, upstream_body, intent.stream
        )

    def _failed(
        self,
        cand: Candidate,
        exc: UpstreamError,
        waited_ms: float,
        failures: list[tuple[Candidate, UpstreamError]],
    ) -> None:
        key = cand.deployment.key
        self.health.failure(key, exc.kind, retry_after_s=exc.retry_after, waited_ms=waited_ms)
        failures.append((cand, exc))
        log.info("attempt failed deployment=%s kind=%s status=%s", key, exc.kind, exc.status)
        if exc.kind == "client":
            # The same request would fail anywhere: the client gets the upstream's 4xx.
            raise RouterError(
                exc.status or 400,
                exc.message,
                param=exc.param,
                code=exc.code or "upstream_rejected",
            )

    async def stream(
        self,
        request: web.Request,
        intent: Intent,
        plan: Plan,
        body: dict[str, Any],
        outcome: Outcome,
    ) -> web.StreamResponse:
        deadline = self.routing.deadline_s(intent.prefer if not intent.pinned else None)
        failures: list[tuple[Candidate, UpstreamError]] = []
        for cand, fallback in self._candidates(plan):
            outcome.attempts += 1
            try:
                opened = await self._open_stream(cand, intent, body, deadline, failures)
            finally:
                if fallback:
                    self.budget.release()
            if opened is not None:
                upstream, relay, head, ttft_ms = opened
                outcome.ttft_ms = ttft_ms
                outcome.model, outcome.provider = cand.model.id, cand.deployment.provider
                return await self._relay(request, upstream, relay, head, cand, plan, outcome)
        raise exhausted(failures, outcome)

    async def _open_stream(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        deadline: float,
        failures: list[tuple[Candidate, UpstreamError]],
    ) -> tuple[UpstreamStream, SSERelay, bytes, float] | None:
        """One attempt up to the commit point; None when it failed (and was recorded)."""
        loop = asyncio.get_running_loop()
        provider = self.providers[cand.deployment.provider]
        relay = SSERelay(intent.include_usage, cand.model.cost_usd)
        upstream: UpstreamStream | None = None
        started = loop.time()
        try:
            async with asyncio.timeout(deadline):
                upstream = await provider.stream(self._request(cand, intent, body))
                head = await first_content(upstream, relay)
        except (UpstreamError, TimeoutError) as exc:
            if upstream is not None:
                await upstream.aclose()
            err = (
                exc
                if isinstance(exc, UpstreamError)
                else UpstreamError("timeout", f"no first token within {deadline * 1000:.0f} ms")
            )
            self._failed(cand, err, (loop.time() - started) * 1000, failures)
            return None
        except UnsupportedFeatureError as exc:
            raise RouterError(
                400, exc.message, param=exc.param, code="unsupported_feature"
            ) from None
        except BaseException:
            if upstream is not None:
                await upstream.aclose()
            raise
        ttft_ms = (loop.time() - started) * 1000
        self.health.success(cand.deployment.key, ttft_ms)
        return upstream, relay, head, ttft_ms

    async def _relay(
        self,
        request: web.Request,
        upstream: UpstreamStream,
        relay: SSERelay,
        head: bytes,
        cand: Candidate,
        plan: Plan,
        outcome: Outcome,
    ) -> web.StreamResponse:
        headers = {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
            **router_headers(cand, plan, outcome),
        }
        resp = web.StreamResponse(headers=headers)
        outcome.status = 200
        loop = asyncio.get_running_loop()
        idle, stall = self.server.upstream_idle_s, self.server.write_stall_s
        in_flight = request.app.get(IN_FLIGHT) or InFlight()
        writing = True
        stream: OpenStream | None = None
        try:
            # One timer serves the write-stall and upstream-idle deadlines, and the drain
            # pulls it in to end the stream at shutdown (stream.cut).
            async with asyncio.timeout(loop.time() + stall) as timer:
                with in_flight.stream(timer) as stream:
                    await resp.prepare(request)
                    await resp.write(head)
                    if not relay.done:
                        writing = False
                        stream.extend(idle)
                        async for chunk in upstream:
                            out = relay.feed(chunk)
                            if out:
                                writing = True
                                stream.extend(stall)
                                await resp.write(out)
                                writing = False
                            stream.extend(idle)
                        relay.finish()
        except TimeoutError:
            if writing:
                # The client stopped reading; nothing can reach it, so end the connection.
                outcome.error, outcome.status = "client_stalled", 499
                log.warning(
                    "client stopped reading; ending stream request_id=%s", outcome.request_id
                )
                if request.transport is not None:
                    request.transport.abort()
                return resp
            if stream is not None and stream.cut:
                await self._shutdown_error(resp, outcome)
            else:
                await self._mid_stream_error(
                    resp,
                    cand,
                    UpstreamError("timeout", f"upstream went quiet for {idle:g} s mid-stream"),
                    outcome,
                )
        except UpstreamError as exc:
            await self._mid_stream_error(resp, cand, exc, outcome)
        finally:
            await upstream.aclose()
            outcome.take_usage(relay.usage)
        await resp.write_eof()
        return resp

    async def _shutdown_error(self, resp: web.StreamResponse, outcome: Outcome) -> None:
        """The drain deadline passed mid-answer: the stream ends with an error event."""
        outcome.error, outcome.status = "server_shutting_down", 503
        with contextlib.suppress(ConnectionError):
            await resp.write(shutdown_error().sse())

    async def _mid_stream_error(
        self, resp: web.StreamResponse, cand: Candidate, exc: UpstreamError, outcome: Outcome
    ) -> None:
        self.health.failure(cand.deployment.key, exc.kind)
        outcome.error, outcome.status = exc.kind, 502
        err = RouterError(
            502,
            f"{cand.model.id} via {cand.deployment.provider} failed mid-stream: {exc.message}",
            type="server_error",
            code="upstream_error",
        )
        with contextlib.suppress(ConnectionError):
            await resp.write(err.sse())

    async def complete(
        self, intent: Intent, plan: Plan, body: dict[str, Any], outcome: Outcome
    ) -> web.Response:
        failures: list[tuple[Candidate, UpstreamError]] = []
        for cand, fallback in self._candidates(plan):
            outcome.attempts += 1
            try:
                data = await self._complete_once(cand, intent, body, failures)
            finally:
                if fallback:
                    self.budget.release()
            if data is None:
                continue
            usage = data.get("usage")
            if isinstance(usage, dict):
                prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
                if isinstance(prompt, int) and isinstance(completion, int):
                    usage["cost"] = round(cand.model.cost_usd(prompt, completion), 10)
                outcome.take_usage(usage)
            outcome.model, outcome.provider, outcome.status = (
                cand.model.id,
                cand.deployment.provider,
                200,
            )
            return web.Response(
                body=orjson.dumps(data),
                content_type="application/json",
                headers=router_headers(cand, plan, outcome),
            )
        raise exhausted(failures, outcome)

    async def _complete_once(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        failures: list[tuple[Candidate, UpstreamError]],
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        timeout = self.routing.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                data = await self.providers[cand.deployment.provider].complete(
                    self._request(cand, intent, body)
                )
        except (UpstreamError, TimeoutError) as exc:
            err = (
                exc
                if isinstance(exc, UpstreamError)
                else UpstreamError("timeout", f"no answer within {timeout:g} s")
            )
            self._failed(cand, err, (loop.time() - started) * 1000, failures)
            return None
        except UnsupportedFeatureError as exc:
            raise RouterError(
                400, exc.message, param=exc.param, code="unsupported_feature"
            ) from None
        self.health.success(cand.deployment.key, None)
        return data


async def first_content(upstream: UpstreamStream, relay: SSERelay) -> bytes:
    """Read until the first content-bearing event (or a complete empty answer); returns the
    bytes to send at commit. Raises UpstreamError if the stream breaks first."""
    pending: list[bytes] = []
    async for chunk in upstream:
        out = relay.feed(chunk)
        if out:
            pending.append(out)
        if relay.content_seen or relay.done:
            break
    else:
        relay.finish()
    return b"".join(pending)


def public_message(exc: UpstreamError) -> str:
    """What a client may read of an upstream failure. A refusal of our credentials is not
    echoed: providers quote (part of) the key they were sent."""
    if exc.kind == "auth":
        return f"the provider refused the router's credentials (HTTP {exc.status or '?'})"
    return exc.message


def exhausted(failures: list[tuple[Candidate, UpstreamError]], outcome: Outcome) -> RouterError:
    """Every attempt failed (or none could be made): say so once, and tell the SDK not to retry."""
    headers = {"x-should-retry": "false", "x-router-attempts": str(outcome.attempts)}
    headers["x-request-id"] = outcome.request_id
    if not failures:
        outcome.error = "unavailable"
        return RouterError(
            503,
            "no deployment could take the request: circuit breakers are open or the retry "
            "budget is spent; try again shortly",
            type="server_error",
            code="no_available_deployment",
            headers=headers,
        )
    kinds = {exc.kind for _, exc in failures}
    detail = "; ".join(f"{c.deployment.key}: {public_message(exc)}" for c, exc in failures)
    outcome.error = failures[-1][1].kind
    if kinds == {"rate_limited"}:
        waits = [exc.retry_after for _, exc in failures if exc.retry_after is not None]
        if waits:
            headers["Retry-After"] = f"{max(1, round(min(waits)))}"
        status = 429
    elif kinds <= {"rate_limited", "overloaded"}:
        status = 503
    else:
        status = 502
    return RouterError(
        status,
        f"all {len(failures)} attempt(s) failed: {detail}",
        type="server_error" if status != 429 else "rate_limit_error",
        code="upstream_unavailable",
        headers=headers,
    )
