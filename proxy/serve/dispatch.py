"""Dispatch: try the plan's candidates in order, falling back only before the first byte.

The commit point is the first content-bearing chunk: until then a refusal, an error, a
hang or a broken stream moves on to the next candidate (within the attempt cap and the
retry budget); after it, failures become an in-band SSE error event.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from probes.breaker import State
from proxy.config import HedgeSettings, RoutingSettings, ServerSettings
from proxy.decide.intent import Intent
from proxy.decide.routing import Candidate, Plan
from proxy.errors import RouterError
from proxy.providers.base import (
    Provider,
    UnsupportedFeatureError,
    UpstreamError,
    UpstreamRequest,
    UpstreamStream,
)

from .deadline import Deadline
from .drain import IN_FLIGHT, InFlight, OpenStream, shutdown_error
from .health import Health
from .hedge import HedgePolicy, race
from .relay import SSERelay

log = logging.getLogger("model_router.dispatch")


class RetryBudget:
    """Fallback attempts in flight may be at most ``ratio`` x requests in flight (or ``floor``).

    That bound is what keeps an outage from becoming a retry storm. A fallback that finds the
    budget full waits its turn, first come first served, for up to its attempt's deadline
    instead of failing at once: when a provider dies under load, many requests fail in the
    same few milliseconds, and dropping the fallbacks that would have succeeded elsewhere turns
    a failure the router could hide into client errors. The queue keeps the bound; only a
    fallback that cannot get a slot in time is denied.
    """

    __slots__ = ("_active", "_waiters", "denied", "floor", "ratio", "retrying")

    def __init__(self, ratio: float, floor: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self._active = 0
        self.retrying = 0
        self.denied = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        """Requests in flight; the handlers count them in and out."""
        return self._active

    @active.setter
    def active(self, n: int) -> None:
        self._active = n
        self._wake()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def _room(self) -> bool:
        return self.retrying < max(self.floor, int(self.ratio * self._active))

    async def acquire(self, wait_s: float) -> bool:
        """Take a fallback slot, waiting up to ``wait_s``; False (and counted) if denied."""
        if not self._waiters and self._room():
            self.retrying += 1
            return True
        if wait_s <= 0:
            self.denied += 1
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(wait_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed over just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                self.denied += 1
                return False
            raise
        return True

    def release(self) -> None:
        self.retrying -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.retrying += 1  # handed over: the waiter owns it when it resumes
                fut.set_result(None)


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
    # Tokens and cost were estimated: the stream ended before the upstream's usage came.
    estimated: bool = False
    # A hedged race: which attempt won ("primary" or "hedge"; None when none started), and
    # what the cancelled one cost (its prompt, plus the content it had produced).
    hedged: str | None = None
    hedge_cost: float = 0.0
    hedge_tokens: int = 0

    def take_charge(self, charge: tuple[int, int, float, bool]) -> None:
        """A stream's (prompt, completion, cost, estimated), from ``SSERelay.charge``.
        ``cost`` is what the request cost us: a hedged race's cancelled attempt included (the
        answer's own ``usage.cost`` excludes it)."""
        self.prompt_tokens, self.completion_tokens, cost, self.estimated = charge
        self.cost = cost + self.hedge_cost

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
    if outcome.hedged:
        headers["x-router-hedged"] = outcome.hedged
    return headers


@dataclass(slots=True)
class Meter:
    """One attempt as the hedge accounting sees it."""

    started: float = 0.0
    relay: SSERelay | None = None


Opened = tuple[UpstreamStream, SSERelay, bytes, float]


class Dispatcher:
    def __init__(
        self,
        providers: Mapping[str, Provider],
        health: Health,
        routing: RoutingSettings,
        server: ServerSettings,
        hedging: HedgeSettings | None = None,
    ) -> None:
        self.providers = providers
        self.health = health
        self.routing = routing
        self.server = server
        self.budget = RetryBudget(routing.retry_budget_ratio, routing.retry_budget_min)
        self.hedge = HedgePolicy(hedging or HedgeSettings())

    async def _attempts(
        self, plan: Plan, wait_s: float, skip: set[str] | None = None
    ) -> AsyncGenerator[tuple[Candidate, bool, bool]]:
        """(candidate, is_fallback, is_trial) in order, within the attempt cap, the retry budget
        and half-open trials. The caller releases the budget slot of a fallback when its
        attempt is over, and gives back a trial slot whose attempt ended without a verdict."""
        # A forced plan holds only open deployments: one try at the least bad, not a volley.
        cap = 1 if plan.forced else self.routing.max_attempts
        tried = 0
        held = False  # a budget slot taken for a fallback not yet handed to the caller
        try:
            for cand in plan.candidates:
                if tried >= cap:
                    return
                if skip and cand.deployment.key in skip:
                    continue  # already tried as a hedge
                fallback = tried > 0
                if fallback and not held:
                    if not await self.budget.acquire(wait_s):
                        log.warning(
                            "retry budget exhausted; not falling back to %s", cand.deployment.key
                        )
                        return
                    held = True
                key = cand.deployment.key
                if plan.forced or self.health.allow(key):
                    trial = not plan.forced and self.health.half_open(key)
                    tried += 1
                    held = False
                    yield cand, fallback, trial
        finally:
            if held:
                self.budget.release()

    def _request(self, cand: Candidate, intent: Intent, body: dict[str, Any]) -> UpstreamRequest:
        upstream_body = {**body, "model": cand.deployment.upstream_id}
        if intent.stream:
            upstream_body["stream_options"] = {
                **(body.get("stream_options") or {}),
                "include_usage": True,
            }
        return UpstreamRequest(
            intent.endpoint,
            cand.deployment.upstream_id,
            upstream_body,
            intent.stream,
            answer_model=cand.model.id,
            fim_template=cand.deployment.fim_template,
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

    def _gave_up(
        self,
        cand: Candidate,
        exc: Exception,
        trial: bool,
        waited_ms: float,
        timeout_message: str,
        failures: list[tuple[Candidate, UpstreamError]],
    ) -> None:
        """Record an attempt that ended without an answer."""
        if isinstance(exc, UnsupportedFeatureError):
            # This wire format cannot express the request; another candidate may. Nothing
            # was sent, so the deployment's health is untouched.
            self._no_verdict(cand, trial)
            failures.append((cand, unsupported(exc)))
            return
        err = exc if isinstance(exc, UpstreamError) else UpstreamError("timeout", timeout_message)
        self._failed(cand, err, waited_ms, failures)

    def _no_verdict(self, cand: Candidate, trial: bool) -> None:
        if trial:
            self.health.release(cand.deployment.key)

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
        opened = None
        hedged: set[str] = set()  # deployments a hedge already tried
        try:
            async with contextlib.aclosing(self._attempts(plan, deadline, hedged)) as attempts:
                async for cand, fallback, trial in attempts:
                    outcome.attempts += 1
                    try:
                        if outcome.attempts == 1 and self._hedges(intent):
                            # The hook: the first attempt, raced against a hedge.
                            cand, opened = await self._open_hedged(
                                cand, intent, plan, body, deadline, trial, failures, outcome, hedged
                            )
                        else:
                            opened = await self._open_stream(
                                cand, intent, body, deadline, trial, failures, outcome
                            )
                    finally:
                        if fallback:
                            self.budget.release()
                    if opened is not None:
                        break
        except asyncio.CancelledError:
            outcome.error, outcome.status = "client_disconnected", 499
            raise
        if opened is None:
            raise exhausted(failures, outcome)
        upstream, relay, head, ttft_ms = opened
        outcome.ttft_ms = ttft_ms
        outcome.model, outcome.provider = cand.model.id, cand.deployment.provider
        return await self._relay(request, upstream, relay, head, cand, plan, outcome)

    async def _open_stream(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        deadline: float,
        trial: bool,
        failures: list[tuple[Candidate, UpstreamError]],
        outcome: Outcome | None = None,
        meter: Meter | None = None,
    ) -> Opened | None:
        """One attempt up to the commit point; None when it failed (and was recorded)."""
        loop = asyncio.get_running_loop()
        provider = self.providers[cand.deployment.provider]
        d = cand.deployment
        rename = (d.upstream_id, cand.model.id) if d.upstream_id != cand.model.id else None
        relay = SSERelay(
            intent.include_usage, cand.model.cost_usd, intent.prompt_tokens, rename=rename
        )
        upstream: UpstreamStream | None = None
        mark = self.health.mark(cand.deployment.key)
        started = loop.time()
        if meter is not None:
            meter.started, meter.relay = started, relay
        try:
            async with asyncio.timeout(deadline):
                upstream = await provider.stream(self._request(cand, intent, body))
                head = await first_content(upstream, relay)
        except (UpstreamError, TimeoutError, UnsupportedFeatureError) as exc:
            if upstream is not None:
                await upstream.aclose()
            waited_ms = (loop.time() - started) * 1000
            self._gave_up(
                cand,
                exc,
                trial,
                waited_ms,
                f"no first token within {deadline * 1000:.0f} ms",
                failures,
            )
            return None
        except BaseException:
            # The client left (or we broke): no verdict on the deployment, so its half-open
            # trial slot goes back, and the upstream connection is closed, not pooled.
            self._no_verdict(cand, trial)
            if upstream is not None:
                if outcome is not None:
                    # The upstream took the request: its prompt, and whatever it generated
                    # before the client left, are charged (else leaving early is free).
                    outcome.model, outcome.provider = cand.model.id, cand.deployment.provider
                    outcome.take_charge(relay.charge())
                await upstream.aclose()
            raise
        ttft_ms = (loop.time() - started) * 1000
        self.health.success(cand.deployment.key, ttft_ms, since=mark)
        return upstream, relay, head, ttft_ms

    def _hedges(self, intent: Intent) -> bool:
        return intent.stream and self.hedge.wants(
            intent.prefer if not intent.pinned else None, None, intent.hedge
        )

    def _hedge_candidate(self, plan: Plan, primary: Candidate) -> Candidate | None:
        """The next candidate on another provider whose breaker is CLOSED (not half-open: a
        trial is the probe loop's, and an open one is refusing)."""
        if plan.forced:
            return None
        for cand in plan.candidates:
            key = cand.deployment.key
            if cand.deployment.provider == primary.deployment.provider:
                continue
            if self.health.board.state(key) is State.CLOSED:
                return cand
        return None

    async def _open_hedged(
        self,
        cand: Candidate,
        intent: Intent,
        plan: Plan,
        body: dict[str, Any],
        deadline: float,
        trial: bool,
        failures: list[tuple[Candidate, UpstreamError]],
        outcome: Outcome,
        hedged: set[str],
    ) -> tuple[Candidate, Opened | None]:
        """The first attempt raced against a hedge (``serve/hedge.py`` decides); returns the
        winning candidate and its stream at the first content token, or the primary's None."""
        policy = self.hedge
        policy.budget.offer()
        try:
            p90_ms = self.health.table.row(cand.deployment.key).p90_ms
        except KeyError:
            p90_ms = cand.deployment.nominal_ttft_ms
        meters = (Meter(), Meter())
        racers = [cand, cand]

        def alternate() -> Callable[[], Awaitable[Opened | None]] | None:
            alt = self._hedge_candidate(plan, cand)
            if alt is None or not policy.budget.take():
                return None
            racers[1] = alt
            hedged.add(alt.deployment.key)
            outcome.attempts += 1
            return lambda: self._open_stream(
                alt, intent, body, deadline, False, failures, meter=meters[1]
            )

        try:
            result = await race(
                lambda: self._open_stream(
                    cand, intent, body, deadline, trial, failures, meter=meters[0]
                ),
                alternate,
                policy.delay_s(p90_ms),
            )
        except asyncio.CancelledError:
            # The client left mid-race: what both attempts had cost is charged, as a single
            # attempt's is (else leaving early is free).
            charges = [m.relay.charge() for m in meters if m.relay is not None]
            if charges:
                prompt, completion, cost, _ = map(sum, zip(*charges, strict=True))
                outcome.model, outcome.provider = cand.model.id, cand.deployment.provider
                outcome.take_charge((int(prompt), int(completion), float(cost), True))
            raise
        if not result.hedged:
            return cand, result.value
        loop = asyncio.get_running_loop()
        outcome.hedged = "primary" if result.winner == 0 else "hedge"
        for extra in result.discarded:  # a tie's loser reached its token too: close it
            await extra[0].aclose()
        if result.winner >= 0:
            loser = 1 - result.winner
            lost, meter = racers[loser], meters[loser]
            if not any(c is lost for c, _ in failures):
                # Cancelled at the winner's first token: billed for its prompt and whatever
                # content it had produced (none, unless it tied), as the relay counted them.
                if meter.relay is not None:
                    _, outcome.hedge_tokens, outcome.hedge_cost, _ = meter.relay.charge()
                if loser == 0:
                    # It waited past its p90 without a token: a censored sample, as a deadline.
                    waited_ms = (loop.time() - meter.started) * 1000
                    self.health.table.observe(lost.deployment.key, waited_ms, "live")
            return racers[result.winner], result.value
        return cand, None

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
            # One deadline, two meanings: while a write is pending it is the client's write-stall
            # limit; while we wait on the upstream it is the upstream's idle limit. The drain
            # pulls it in to end the stream at shutdown (stream.cut). Moving it later is a
            # float write (asyncio.Timeout.reschedule replaced a loop timer, twice a chunk).
            async with Deadline(loop.time() + stall, min(idle, stall)) as timer:
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
                return self._client_gone(request, resp, outcome, "client_stalled")
            if stream is not None and stream.cut:
                outcome.error, outcome.status = "server_shutting_down", 503
                await self._end_with_error(request, resp, shutdown_error())
            else:
                quiet = UpstreamError("timeout", f"upstream went quiet for {idle:g} s mid-stream")
                await self._mid_stream_error(request, resp, cand, quiet, outcome)
            return resp
        except UpstreamError as exc:
            await self._mid_stream_error(request, resp, cand, exc, outcome)
            return resp
        except ConnectionError:
            # The client went away between a write and aiohttp noticing.
            return self._client_gone(request, resp, outcome, "client_disconnected")
        except asyncio.CancelledError:
            # The client went away and aiohttp cancelled us (handler_cancellation).
            outcome.error, outcome.status = "client_disconnected", 499
            raise
        finally:
            # The upstream's usage, or (a stream cut short) an estimate of what it generated.
            outcome.take_charge(relay.charge())
            await upstream.aclose()
        if not await self._write_bounded(resp, None):
            return self._client_gone(request, resp, outcome, "client_stalled")
        return resp

    def _client_gone(
        self, request: web.Request, resp: web.StreamResponse, outcome: Outcome, why: str
    ) -> web.StreamResponse:
        """End a stream nobody reads: nothing more can reach the client, so drop the
        connection instead of letting a blocked write pin it (and its buffers)."""
        outcome.error, outcome.status = why, 499
        if why == "client_stalled":
            log.warning("client stopped reading; ending stream request_id=%s", outcome.request_id)
        if request.transport is not None:
            request.transport.abort()
        return resp

    async def _write_bounded(self, resp: web.StreamResponse, data: bytes | None) -> bool:
        """Write ``data`` (None: end the response) within write_stall_s; False if the client
        did not take it in time or is gone."""
        try:
            async with asyncio.timeout(self.server.write_stall_s):
                if data is None:
                    await resp.write_eof()
                else:
                    await resp.write(data)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _end_with_error(
        self, request: web.Request, resp: web.StreamResponse, err: RouterError
    ) -> None:
        """The error event, then the end of the chunked body: the SDK raises on the event."""
        delivered = await self._write_bounded(resp, err.sse())
        if not (delivered and await self._write_bounded(resp, None)) and request.transport:
            request.transport.abort()

    async def _mid_stream_error(
        self,
        request: web.Request,
        resp: web.StreamResponse,
        cand: Candidate,
        exc: UpstreamError,
        outcome: Outcome,
    ) -> None:
        # The first token already counted as a success; the request's verdict is now failure.
        self.health.failure(cand.deployment.key, exc.kind, after_success=True)
        outcome.error, outcome.status = exc.kind, 502
        err = RouterError(
            502,
            f"{cand.model.id} via {cand.deployment.provider} failed mid-stream: {exc.message}",
            type="server_error",
            code="upstream_error",
        )
        await self._end_with_error(request, resp, err)

    async def complete(
        self, intent: Intent, plan: Plan, body: dict[str, Any], outcome: Outcome
    ) -> web.Response:
        failures: list[tuple[Candidate, UpstreamError]] = []
        data = None
        # A fallback waits for a budget slot no longer than a streaming one would.
        wait_s = self.routing.deadline_s(intent.prefer if not intent.pinned else None)
        try:
            async with contextlib.aclosing(self._attempts(plan, wait_s)) as attempts:
                async for cand, fallback, trial in attempts:
                    outcome.attempts += 1
                    try:
                        data = await self._complete_once(cand, intent, body, trial, failures)
                    finally:
                        if fallback:
                            self.budget.release()
                    if data is not None:
                        break
        except asyncio.CancelledError:
            outcome.error, outcome.status = "client_disconnected", 499
            raise
        if data is None:
            raise exhausted(failures, outcome)
        # The answer names the catalog model, as x-router-model does, whichever provider
        # (and whatever it calls the model) answered.
        data["model"] = cand.model.id
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

    async def _complete_once(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        trial: bool,
        failures: list[tuple[Candidate, UpstreamError]],
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        mark = self.health.mark(cand.deployment.key)
        started = loop.time()
        timeout = self.routing.request_timeout_s
        try:
            async with asyncio.timeout(timeout):
                data = await self.providers[cand.deployment.provider].complete(
                    self._request(cand, intent, body)
                )
        except (UpstreamError, TimeoutError, UnsupportedFeatureError) as exc:
            waited_ms = (loop.time() - started) * 1000
            self._gave_up(cand, exc, trial, waited_ms, f"no answer within {timeout:g} s", failures)
            return None
        except BaseException:
            self._no_verdict(cand, trial)
            raise
        self.health.success(cand.deployment.key, None, since=mark)
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


def unsupported(exc: UnsupportedFeatureError) -> UpstreamError:
    return UpstreamError(
        "client", exc.message, status=400, code="unsupported_feature", param=exc.param
    )


def exhausted(failures: list[tuple[Candidate, UpstreamError]], outcome: Outcome) -> RouterError:
    """Every attempt failed (or none could be made): say so once, and tell the SDK not to retry."""
    headers = {"x-should-retry": "false", "x-router-attempts": str(outcome.attempts)}
    headers["x-request-id"] = outcome.request_id
    if failures and all(exc.code == "unsupported_feature" for _, exc in failures):
        # No candidate could even express the request: the client's 400, naming the field.
        first = failures[0][1]
        outcome.error = "unsupported_feature"
        return RouterError(400, first.message, param=first.param, code="unsupported_feature")
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
