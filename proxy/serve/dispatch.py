# Over 400 lines: the one attempt loop, its commit point and the hedged race that opens there.
"""Dispatch: try the plan's candidates in order, falling back only before the first byte.

The commit point is the first content-bearing chunk: until then a refusal, an error, a
hang or a broken stream moves on to the next candidate (within the attempt cap and the
retry budget); after it, failures become an in-band SSE error event. One attempt loop
serves both kinds of request, and it returns values: a ``Committed`` stream or an
``Answer``. Writing them to the client is ``proxy.http.respond``'s job. A stream's first
attempt may be raced against a hedge on another provider: ``hedge.py`` says whether and
after how long, ``_open_hedged`` starts both attempts as tasks and ``hedge.Racers`` picks the
one to commit.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from probes.breaker import State
from probes.deadline import PAUSE_S, Deadline
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

from .health import Health
from .hedge import HedgePolicy, Racers
from .record import RequestRecord
from .relay import SSERelay
from .retry_budget import RetryBudget

log = logging.getLogger("model_router.dispatch")


T = TypeVar("T")
# How often a first-token deadline is checked (and a pause of the process noticed).
FIRST_TOKEN_CHECK_S = 0.25
Failures = list[tuple[Candidate, UpstreamError]]


@dataclass(slots=True)
class Committed:
    """A stream past its commit point: what to send first, and where the rest comes from."""

    upstream: UpstreamStream
    relay: SSERelay
    head: bytes
    candidate: Candidate
    ttft_ms: float


@dataclass(slots=True)
class Answer:
    """A whole non-streaming answer (``usage.cost`` filled in) and who gave it. ``note``
    says why an escalation asked for did not happen."""

    data: dict[str, Any]
    candidate: Candidate
    note: str | None = None

    def settle(self, record: RequestRecord) -> None:
        """This is the answer the client gets: record who gave it and what it cost."""
        cand = self.candidate
        record.answered_by(cand.model.id, cand.deployment.provider, cand.model.tier)
        record.take_usage(self.data.get("usage"))
        record.status = 200


@dataclass(slots=True)
class Race:
    """A stream's first attempt, about to be raced against a hedge: the candidate and its
    trial flag, the request's failure list and plan, and the deployments a hedge tried
    (which the attempt loop then skips)."""

    cand: Candidate
    trial: bool
    failures: Failures
    plan: Plan
    hedged: set[str]


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

    async def _first(
        self,
        intent: Intent,
        plan: Plan,
        record: RequestRecord,
        attempt: Callable[[Candidate, bool, Failures], Awaitable[T | None]],
        skip: set[str] | None = None,
    ) -> T:
        """The one attempt loop: the first attempt that succeeds, or the error that says why
        none did. Candidates are tried in order within the attempt cap, the retry budget and
        half-open trials; a fallback waits for a budget slot no longer than a first token may
        take. (One loop, not an async generator feeding one: that cost ~90 bytecodes a
        request in generator steps and ``aclosing``.)"""
        failures: Failures = []
        # A forced plan holds only open deployments: one try at the least bad, not a volley.
        forced = plan.forced
        cap = 1 if forced else self.routing.max_attempts
        tried = 0
        held = False  # a budget slot taken for a fallback whose attempt has not started
        try:
            for cand in plan.candidates:
                if tried >= cap:
                    break
                key = cand.deployment.key
                if skip and key in skip:
                    continue  # already tried as a hedge
                fallback = tried > 0
                if fallback and not held:
                    wait_s = self.routing.deadline_s(intent.prefer if not intent.pinned else None)
                    if not await self.budget.acquire(wait_s):
                        log.warning("retry budget exhausted; not falling back to %s", key)
                        break
                    held = True
                if not (forced or self.health.allow(key)):
                    continue
                trial = not forced and self.health.half_open(key)
                tried += 1
                held = False  # the slot is this attempt's now, released when it ends
                record.attempts += 1
                try:
                    result = await attempt(cand, trial, failures)
                finally:
                    if fallback:
                        self.budget.release()
                if result is not None:
                    return result
        finally:
            if held:
                self.budget.release()
        raise exhausted(failures, record)

    def _request(self, cand: Candidate, intent: Intent, body: dict[str, Any]) -> UpstreamRequest:
        """``body`` is the request's own forwarded copy: each attempt sets its ``model`` in
        place (attempts are sequential, and an adapter is done with the body when its call
        returns), so no attempt copies it."""
        body["model"] = cand.deployment.upstream_id
        return UpstreamRequest(
            intent.endpoint,
            cand.deployment.upstream_id,
            body,
            intent.stream,
            answer_model=cand.model.id,
            fim_template=cand.deployment.fim_template,
        )

    def _failed(
        self, cand: Candidate, exc: UpstreamError, waited_ms: float, failures: Failures
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
        failures: Failures,
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
        self, intent: Intent, plan: Plan, body: dict[str, Any], record: RequestRecord
    ) -> Committed:
        """Open the plan's first deployment that reaches a first content token in time."""
        # Upstream is always asked for usage; the relay passes it on only if the client asked.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}

        hedged: set[str] = set()  # deployments a hedge already tried

        async def attempt(cand: Candidate, trial: bool, failures: Failures) -> Committed | None:
            if record.attempts == 1 and self._hedges(intent):
                # The hook: the first attempt, raced against a hedge.
                race = Race(cand, trial, failures, plan, hedged)
                return await self._open_hedged(race, intent, body, record)
            return await self._open_stream(cand, intent, body, trial, failures, record)

        committed = await self._first(intent, plan, record, attempt, hedged)
        record.ttft_ms = committed.ttft_ms
        cand = committed.candidate
        record.answered_by(cand.model.id, cand.deployment.provider, cand.model.tier)
        record.status = 200
        return committed

    async def _open_stream(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        trial: bool,
        failures: Failures,
        record: RequestRecord,
    ) -> Committed | None:
        """One attempt up to the commit point; None when it failed (and was recorded)."""
        loop = asyncio.get_running_loop()
        deadline = self.routing.deadline_s(intent.prefer if not intent.pinned else None)
        provider = self.providers[cand.deployment.provider]
        relay = SSERelay(
            intent.include_usage,
            cand.model.cost_usd,
            intent.prompt_tokens,
            cand.model.id,
        )
        upstream: UpstreamStream | None = None
        key = cand.deployment.key
        mark = self.health.mark(key)
        waiting = self.health.table.sending(key)
        started = loop.time()
        # A Deadline, not asyncio.timeout: time the process was stopped is not the upstream's.
        timer = Deadline(started + deadline, min(deadline, FIRST_TOKEN_CHECK_S))
        try:
            try:
                async with timer:
                    upstream = await provider.stream(self._request(cand, intent, body))
                    head = await first_content(upstream, relay)
                    paused_s = timer.paused()
            finally:
                # Before its verdict is recorded: waiting, it counted as a slow sample.
                self.health.table.answered(key, waiting)
        except (UpstreamError, TimeoutError, UnsupportedFeatureError) as exc:
            if upstream is not None:
                await upstream.aclose()
            waited_ms = (loop.time() - started - timer.paused()) * 1000
            timeout = f"no first token within {deadline * 1000:.0f} ms"
            self._gave_up(cand, exc, trial, waited_ms, timeout, failures)
            return None
        except BaseException:
            # The client left (or we broke): no verdict on the deployment, so its half-open
            # trial slot goes back, and the upstream connection is closed, not pooled.
            self._no_verdict(cand, trial)
            if upstream is not None:
                # The upstream took the request: its prompt, and whatever it generated
                # before the client left, are charged (else leaving early is free).
                record.answered_by(cand.model.id, cand.deployment.provider, cand.model.tier)
                record.take_charge(relay.charge())
                await upstream.aclose()
            raise
        ttft_ms = (loop.time() - started - paused_s) * 1000
        self.health.success(cand.deployment.key, ttft_ms, since=mark)
        return Committed(upstream, relay, head, cand, ttft_ms)

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
            if cand.deployment.provider == primary.deployment.provider:
                continue
            if self.health.board.state(cand.deployment.key) is State.CLOSED:
                return cand
        return None

    async def _open_hedged(
        self, race_: Race, intent: Intent, body: dict[str, Any], record: RequestRecord
    ) -> Committed | None:
        """The first attempt raced against a hedge (the policy in ``serve/hedge.py``); returns the
        winner's stream at its first content token, or None when every racer failed. Each
        racer charges its own scratch record if it is cancelled after the upstream took it:
        the loser's is the hedge's cost, and both are the request's if the client leaves."""
        cand, policy = race_.cand, self.hedge
        policy.budget.offer()
        try:
            p90_ms = self.health.table.row(cand.deployment.key).p90_ms
        except KeyError:
            p90_ms = cand.deployment.nominal_ttft_ms
        racers = [cand, cand]
        scratch = (RequestRecord(record.asked), RequestRecord(record.asked))
        started = asyncio.get_running_loop().time()
        # The attempts are tasks started here: the race only waits on them.
        racing: Racers[Committed] = Racers(
            asyncio.ensure_future(
                self._open_stream(cand, intent, body, race_.trial, race_.failures, scratch[0])
            )
        )
        delay = policy.delay_s(p90_ms)
        try:
            try:
                if not await racing.within(delay) and not await self._paused_past(
                    racing, started, delay
                ):
                    alt = self._hedge_candidate(race_.plan, cand)
                    if alt is not None and policy.budget.take():
                        racers[1] = alt
                        race_.hedged.add(alt.deployment.key)
                        record.attempts += 1
                        hedge = self._open_stream(
                            alt, intent, body, False, race_.failures, scratch[1]
                        )
                        racing.add(asyncio.ensure_future(hedge))
                result = await racing.result()
            finally:
                await racing.aclose()
        except asyncio.CancelledError:
            # The client left mid-race: what both attempts had cost is charged.
            charged = [r for r in scratch if r.model is not None]
            if charged:
                record.answered_by(cand.model.id, cand.deployment.provider, cand.model.tier)
                prompt = sum(r.prompt_tokens for r in charged)
                completion = sum(r.completion_tokens for r in charged)
                record.take_charge((prompt, completion, sum(r.cost for r in charged), True))
            raise
        if result.hedged:
            for extra in result.discarded:  # a tie's loser reached its token too: close it
                scratch[1 - result.winner].take_charge(extra.relay.charge())
                await extra.upstream.aclose()
            self._settle_race(result.winner, racers, scratch, race_.failures, record, started)
        return result.value

    async def _paused_past(self, racing: Racers[Committed], started: float, delay: float) -> bool:
        """When the hedge delay passed only because the process was stopped (SIGSTOP, a paused
        VM), the primary's first token may be unread in its socket: it gets the delay again
        before a hedge is paid for. Whether it finished in that time."""
        if asyncio.get_running_loop().time() - started < delay + PAUSE_S:
            return False
        return await racing.within(delay)

    def _settle_race(
        self,
        winner: int,
        racers: list[Candidate],
        scratch: tuple[RequestRecord, RequestRecord],
        failures: Failures,
        record: RequestRecord,
        started: float,
    ) -> None:
        """A race that hedged: who won, and what the cancelled loser cost."""
        if winner < 0:
            # Both failed: a race happened (two upstream requests), but nobody won it; the
            # attempt loop moves on, and a later candidate's answer is no hedge's.
            record.hedged = "neither"
            return
        record.hedged = "primary" if winner == 0 else "hedge"
        loser = 1 - winner
        lost = racers[loser]
        if any(c is lost for c, _ in failures):
            return  # it failed on its own: recorded as a failure, not charged as a hedge
        # Cancelled at the winner's first token: billed for its prompt and whatever content
        # it had produced (none, unless it tied), as its relay counted them.
        record.hedge_tokens = scratch[loser].completion_tokens
        record.hedge_cost = scratch[loser].cost
        if loser == 0:
            # It waited past its p90 without a token: a censored sample, as a deadline.
            waited_ms = (asyncio.get_running_loop().time() - started) * 1000
            self.health.table.observe(lost.deployment.key, waited_ms, "live")

    def failed_mid_stream(self, committed: Committed, exc: UpstreamError) -> RouterError:
        """A committed stream broke: the deployment's verdict turns to failure (its first
        token already counted as a success), and the client is told in-band."""
        cand = committed.candidate
        self.health.failure(cand.deployment.key, exc.kind, after_success=True)
        return RouterError(
            502,
            f"{cand.model.id} via {cand.deployment.provider} failed mid-stream: {exc.message}",
            type="server_error",
            code="upstream_error",
        )

    async def complete(
        self, intent: Intent, plan: Plan, body: dict[str, Any], record: RequestRecord
    ) -> Answer:
        """``answer``, recorded as the one the client gets."""
        answer = await self.answer(intent, plan, body, record)
        answer.settle(record)
        return answer

    async def answer(
        self, intent: Intent, plan: Plan, body: dict[str, Any], record: RequestRecord
    ) -> Answer:
        """The plan's first deployment that answers in time, with ``usage.cost`` filled in.
        Only the attempts (and a final failure) are recorded: the caller settles the answer."""

        async def attempt(cand: Candidate, trial: bool, failures: Failures) -> Answer | None:
            data = await self._complete_once(cand, intent, body, trial, failures)
            return None if data is None else Answer(data, cand)

        answer = await self._first(intent, plan, record, attempt)
        # The answer names the catalog model, as x-router-model does, whichever provider
        # (and whatever it calls the model) answered.
        answer.data["model"] = answer.candidate.model.id
        usage = answer.data.get("usage")
        if isinstance(usage, dict):
            prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
            if (
                isinstance(prompt, int)
                and isinstance(completion, int)
                and min(prompt, completion) >= 0
            ):
                usage["cost"] = round(answer.candidate.model.cost_usd(prompt, completion), 10)
        return answer

    async def _complete_once(
        self,
        cand: Candidate,
        intent: Intent,
        body: dict[str, Any],
        trial: bool,
        failures: Failures,
    ) -> dict[str, Any] | None:
        loop = asyncio.get_running_loop()
        key = cand.deployment.key
        mark = self.health.mark(key)
        started = loop.time()
        timeout = self.routing.request_timeout_s
        task = asyncio.current_task()
        assert task is not None
        expiry = Expiry(task)
        timer = loop.call_at(started + timeout, expiry)
        try:
            try:
                data = await self.providers[cand.deployment.provider].complete(
                    self._request(cand, intent, body)
                )
            except asyncio.CancelledError:
                if expiry.timed_out():
                    raise TimeoutError from None
                raise
            finally:
                timer.cancel()
        except (UpstreamError, TimeoutError, UnsupportedFeatureError) as exc:
            waited_ms = (loop.time() - started) * 1000
            self._gave_up(cand, exc, trial, waited_ms, f"no answer within {timeout:g} s", failures)
            return None
        except BaseException:
            self._no_verdict(cand, trial)
            raise
        self.health.success(key, None, since=mark)
        return data


class Expiry:
    """``asyncio.timeout``'s work for one attempt on one loop timer: at the deadline the task
    is cancelled, and that cancellation (and only that one) reads as ``TimeoutError``. The
    stdlib's context manager costs ~130 bytecodes a request in Python (3.11); this ~30."""

    __slots__ = ("_cancelling", "_task", "fired")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task
        self._cancelling = task.cancelling()
        self.fired = False

    def __call__(self) -> None:
        self.fired = True
        self._task.cancel()

    def timed_out(self) -> bool:
        """On a ``CancelledError``: was it the deadline's, with no other cancel pending?"""
        return self.fired and self._task.uncancel() <= self._cancelling


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


def exhausted(failures: Failures, record: RequestRecord) -> RouterError:
    """Every attempt failed (or none could be made): say so once, and tell the SDK not to retry."""
    headers = {"x-should-retry": "false", "x-router-attempts": str(record.attempts)}
    headers["x-request-id"] = record.request_id
    if failures and all(exc.code == "unsupported_feature" for _, exc in failures):
        # No candidate could even express the request: the client's 400, naming the field.
        first = failures[0][1]
        record.error = "unsupported_feature"
        return RouterError(400, first.message, param=first.param, code="unsupported_feature")
    if not failures:
        record.error = "unavailable"
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
    record.error = failures[-1][1].kind
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
