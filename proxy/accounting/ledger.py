"""Accounting: the per-request sink (usage log and spend), the budget and cache check
before dispatch, and their lifecycle in the app's ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from proxy.config import Config
from proxy.decide.intent import Intent
from proxy.decide.routing import Plan
from proxy.serve.dispatch import Outcome
from proxy.serve.state import ROUTER, Router

from .cache import CachedAnswer, ResponseCache, cache_key, replay_sse, wants_cache
from .daily_budget import Budget
from .usage_log import MAX_TEXT, UsageLog, db_path

log = logging.getLogger("model_router.accounting")


class Accounting:
    """Owns the usage log, the budget and the response cache for one running app."""

    def __init__(
        self,
        config: Config,
        environ: Mapping[str, str],
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.budget = Budget(config.budget.daily_usd, clock)
        self.usage: UsageLog | None = None
        if config.usage.enabled:
            self.usage = UsageLog(db_path(config.usage, environ), config.usage, monotonic)
        self.cache = ResponseCache(config.cache, monotonic) if config.cache.enabled else None
        self._clock = clock
        self._tiers: dict[str, str] = {}

    async def start(self) -> None:
        if self.usage is not None:
            spent, by_key = await self.usage.start(self.budget.midnight())
            self.budget.restore(spent, by_key)
        elif self.budget.daily_usd:
            log.warning("budget set without the usage log: today's spend restarts at 0 on restart")

    async def close(self) -> None:
        if self.usage is not None:
            await self.usage.close()

    def attach(self, router: Router) -> None:
        """Subscribe to a router's outcomes (again after a reload builds a new router)."""
        self._tiers = {m.id: m.tier for m in router.catalog.models}
        # Per-key daily caps come from [[keys]] daily_usd; a reload may change them.
        self.budget.key_limits = {k.id: k.daily_usd for k in router.config.keys if k.daily_usd}
        router.sinks.append(self.sink)

    def sink(self, outcome: Outcome, seconds: float) -> None:
        """Runs once per request after its answer: counts spend, queues the log row."""
        self.budget.add(outcome.cost, outcome.key_id)
        if self.usage is None:
            return
        model = outcome.model
        self.usage.append(
            (
                self._clock(),
                outcome.request_id,
                outcome.key_id,
                outcome.endpoint,
                int(outcome.stream),
                outcome.intent[:MAX_TEXT],
                outcome.prefer,
                outcome.tier,
                model,
                outcome.provider,
                self._tiers.get(model) if model else None,
                outcome.attempts,
                outcome.status,
                outcome.error,
                outcome.ttft_ms,
                seconds * 1000.0,
                outcome.prompt_tokens,
                outcome.completion_tokens,
                outcome.cost,
                int(outcome.cache_hit),
                outcome.arm,
                outcome.escalated_from,
                outcome.complexity,
                int(outcome.estimated),
                outcome.hedged,
                outcome.hedge_cost,
            )
        )

    def admit(
        self, intent: Intent, plan: Plan, body: Mapping[str, Any], outcome: Outcome
    ) -> Admission | None:
        """Before dispatch: a cached answer (served even past a budget: it costs nothing),
        else the budget check (raises the 429). None when the cache is not involved."""
        cacheable = wants_cache(body)  # validates "cache" even when the cache is off
        admission = None
        if cacheable and self.cache is not None and plan.candidates:
            model_id = plan.candidates[0].model.id
            admission = Admission(self.cache, intent.endpoint, outcome.key_id, body, model_id)
            if admission.hit is not None:
                return admission
        self.budget.check(outcome.key_id)
        return admission

    def status(self) -> dict[str, Any]:
        return {
            "spend": self.budget.status(),
            "usage_log": {"enabled": True, **self.usage.stats()}
            if self.usage is not None
            else {"enabled": False},
            "cache": self.cache.stats() if self.cache is not None else {"enabled": False},
        }


class Admission:
    """One cacheable request: the cached answer if there is one, else where to keep it."""

    __slots__ = ("body", "cache", "endpoint", "hit", "key", "key_id", "model_id")

    def __init__(
        self,
        cache: ResponseCache,
        endpoint: str,
        key_id: str | None,
        body: Mapping[str, Any],
        model_id: str,
    ) -> None:
        self.cache = cache
        self.endpoint = endpoint
        self.key_id = key_id
        self.body = body
        self.model_id = model_id
        self.key = cache_key(endpoint, model_id, key_id, body)
        self.hit: CachedAnswer | None = cache.get(self.key)

    async def replay(
        self, request: web.Request, intent: Intent, plan: Plan, outcome: Outcome, stall_s: float
    ) -> web.StreamResponse:
        """Answer from the cache; nothing goes upstream."""
        entry = self.hit
        assert entry is not None
        outcome.model, outcome.provider, outcome.status = entry.model, entry.provider, 200
        outcome.prompt_tokens, outcome.completion_tokens = (
            entry.prompt_tokens,
            entry.completion_tokens,
        )
        outcome.cost, outcome.cache_hit = 0.0, True
        headers = {
            "x-router-model": entry.model,
            "x-router-provider": entry.provider,
            "x-router-reason": f"{plan.reason} cache=hit",
            "x-router-attempts": "0",
            "x-router-cache": "hit",
            "x-request-id": outcome.request_id,
        }
        if not intent.stream:
            return web.Response(body=entry.body, content_type="application/json", headers=headers)
        headers |= {
            "Content-Type": "text/event-stream",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
        resp = web.StreamResponse(headers=headers)
        try:
            async with asyncio.timeout(stall_s):
                await resp.prepare(request)
                await resp.write(replay_sse(entry.body, self.endpoint, intent.include_usage))
                await resp.write_eof()
        except TimeoutError:
            outcome.error, outcome.status = "client_stalled", 499
            if request.transport is not None:
                request.transport.abort()
        return resp

    def remember(self, response: web.StreamResponse, outcome: Outcome) -> None:
        """After a non-streaming answer: keep it under the model that actually answered."""
        if not isinstance(response, web.Response) or not isinstance(response.body, bytes):
            return
        if outcome.status != 200 or outcome.model is None or outcome.provider is None:
            return
        key = self.key
        if outcome.model != self.model_id:  # a fallback answered
            key = cache_key(self.endpoint, outcome.model, self.key_id, self.body)
        self.cache.put(
            key,
            response.body,
            outcome.model,
            outcome.provider,
            outcome.prompt_tokens,
            outcome.completion_tokens,
        )
        response.headers["x-router-cache"] = "miss"


ACCOUNTING = web.AppKey("accounting", Accounting)


def accounting_ctx(
    config: Config, environ: Mapping[str, str]
) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry; it runs after the one that builds the router, and its
    teardown (the final flush of the usage log) before that one's."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        accounting = Accounting(config, environ)
        await accounting.start()
        accounting.attach(app[ROUTER].current)
        app[ACCOUNTING] = accounting
        try:
            yield
        finally:
            await accounting.close()

    return ctx
