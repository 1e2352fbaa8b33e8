"""Accounting: the per-request sink (usage log and spend), the budget and cache check
before dispatch, and their lifecycle in the app's ``cleanup_ctx``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from proxy.config import Config
from proxy.decide.intent import Intent
from proxy.decide.routing import Plan
from proxy.serve.record import RequestRecord, row
from proxy.serve.state import ROUTER, Router

from .cache import CachedAnswer, ResponseCache, cache_key, wants_cache
from .daily_budget import Budget
from .usage_log import UsageLog, db_path

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
        # Per-key daily caps come from [[keys]] daily_usd; a reload may change them.
        self.budget.key_limits = {k.id: k.daily_usd for k in router.config.keys if k.daily_usd}
        router.sinks.append(self.sink)

    def sink(self, outcome: RequestRecord, seconds: float) -> None:
        """Runs once per request after its answer: counts spend, queues the log row."""
        self.budget.add(outcome.cost, outcome.key_id)
        if self.usage is None:
            return
        self.usage.append(row(outcome, self._clock()))

    def admit(
        self, intent: Intent, plan: Plan, body: Mapping[str, Any], outcome: RequestRecord
    ) -> Admission | None:
        """Before dispatch: a cached answer (served even past a budget: it costs nothing),
        else the budget check (raises the 429). None when the cache is not involved."""
        # wants_cache says no to a body with neither field: its call is skipped for the
        # common request (~15 bytecodes, ``benchmarks.opcodes``). It validates "cache" even
        # when the cache is off.
        if (
            ("cache" in body or "temperature" in body)
            and wants_cache(body)
            and self.cache is not None
            and plan.candidates
        ):
            model_id = plan.candidates[0].model.id
            admission = Admission(self.cache, intent.endpoint, outcome.key_id, body, model_id)
            if admission.hit is None:
                self.budget.check(outcome.key_id)
            return admission
        self.budget.check(outcome.key_id)
        return None

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

    def serve_hit(self, record: RequestRecord, plan: Plan) -> CachedAnswer:
        """Answer from the cache, nothing upstream: record it as a free answer."""
        entry = self.hit
        assert entry is not None
        tier = next((c.model.tier for c in plan.candidates if c.model.id == entry.model), None)
        record.answered_by(entry.model, entry.provider, tier)
        record.status = 200
        record.prompt_tokens = entry.prompt_tokens
        record.completion_tokens = entry.completion_tokens
        record.cost, record.cache_hit = 0.0, True
        return entry

    def remember(self, body: bytes, record: RequestRecord) -> None:
        """After a non-streaming answer: keep its bytes under the model that answered."""
        if record.status != 200 or record.model is None or record.provider is None:
            return
        key = self.key
        if record.model != self.model_id:  # a fallback answered
            key = cache_key(self.endpoint, record.model, self.key_id, self.body)
        self.cache.put(
            key,
            body,
            record.model,
            record.provider,
            record.prompt_tokens,
            record.completion_tokens,
        )


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
