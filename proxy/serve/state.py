"""The router's reloadable state: config, enabled catalog, providers, health, dispatcher.

Handlers read ``app[ROUTER].current`` once per request, so a reload swaps one reference
and in-flight requests finish on the state they started with.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from aiohttp import web

from probes.loop import ProbeLoop
from proxy.catalog import Catalog, Model
from proxy.config import Config
from proxy.decide.routing import fast_ranks
from proxy.providers.base import Provider

from .dispatch import Dispatcher
from .health import Health
from .record import RequestRecord


def model_entry(m: Model) -> dict[str, Any]:
    return {
        "id": m.id,
        "object": "model",
        "created": 0,
        "owned_by": m.owned_by or m.deployments[0].provider,
        "name": m.name,
        "aliases": list(m.aliases),
        "tier": m.tier,
        "pricing": {"input": m.input_price, "output": m.output_price, "unit": "USD per 1M tokens"},
        "pricing_source": m.pricing_source,
        "context_length": m.context_length,
        "max_output_tokens": m.max_output_tokens,
        "capabilities": sorted(m.capabilities),
        "scores": {
            "quality": {
                "value": m.quality.value,
                "source": m.quality.source,
                "date": m.quality.date,
            },
            "coding": {"value": m.coding.value, "source": m.coding.source, "date": m.coding.date},
            "balanced": round(m.balanced_score, 2),
        },
        "nominal_ttft_ms": m.nominal_ttft_ms,
        "deployments": [
            {"provider": d.provider, "upstream_id": d.upstream_id} for d in m.deployments
        ],
    }


def round_up(seconds: float) -> float:
    """A wait to the hundredth, rounded up: 0 only once the wait is over, so a client that
    acts on a 0 (a breaker's backoff) is never a few milliseconds early."""
    return math.ceil(seconds * 100) / 100


@dataclass(slots=True)
class Router:
    config: Config
    catalog: Catalog  # only models with at least one enabled deployment
    providers: dict[str, Provider]
    health: Health
    dispatcher: Dispatcher
    demo: bool = False
    probe_loop: ProbeLoop | None = None
    models_listing: list[dict[str, Any]] = field(default_factory=list)
    models_by_id: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Called once per request with its RequestRecord and duration in seconds, after the answer
    # (or error) has gone out: the access log, metrics and the usage log subscribe here.
    sinks: list[Callable[[RequestRecord, float], None]] = field(default_factory=list)
    # Provider name -> digest of its settings and credentials, so a reload can tell which
    # providers it may share with this Router (proxy/assembly/providers.py provider_fingerprint).
    provider_fingerprints: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.models_listing = [model_entry(m) for m in self.catalog.models]
        self.models_by_id = {entry["id"]: entry for entry in self.models_listing}

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        latency = {row.key: row for row in self.health.table.rows()}
        probed = self.probe_loop.stats().last_run if self.probe_loop is not None else {}
        breakers = {row.key: row for row in self.health.board.rows()}
        snap = self.health.snapshot()
        ranks = fast_ranks(snap)
        tier_of = {m.id: m.tier for m in self.catalog.models}
        tier_ranks = {tier: fast_ranks(snap, tier) for tier in set(tier_of.values())}
        rows = []
        for d in self.catalog.deployments():
            lat = latency.get(d.key)
            brk = breakers.get(d.key)
            rows.append(
                {
                    "deployment": d.key,
                    "model": d.model_id,
                    "provider": d.provider,
                    "ttft_mean_ms": round(lat.mean_ms, 1) if lat else None,
                    "ttft_p90_ms": round(lat.p90_ms, 1) if lat else None,
                    "ttft_estimate_ms": round(lat.estimate_ms, 1) if lat else None,
                    "nominal_ms": d.nominal_ttft_ms,
                    "samples": lat.samples if lat else 0,
                    "last_sample_age_s": round(lat.age_s, 1)
                    if lat and lat.age_s is not None
                    else None,
                    "last_sample_source": lat.source if lat else None,
                    "last_probe_at": probed.get(d.key),
                    "regime_changes": lat.shifts if lat else 0,
                    "tier": tier_of[d.model_id],
                    # Place in prefer=fast's order for a plain request (None: breaker open).
                    "fast_rank": ranks.get(d.key),
                    "fast_rank_in_tier": tier_ranks[tier_of[d.model_id]].get(d.key),
                    "breaker": brk.state if brk else "closed",
                    "breaker_detail": {
                        "consecutive_failures": brk.consecutive_failures,
                        "failure_rate": round(brk.failure_rate, 3),
                        "slow_rate": round(brk.slow_rate, 3),
                        "opened_count": brk.opened_count,
                        "open_remaining_s": round_up(brk.open_remaining_s),
                        "retry_after_remaining_s": round_up(brk.retry_after_remaining_s),
                    }
                    if brk
                    else None,
                }
            )
        budget = self.dispatcher.budget
        return {
            "object": "router.status",
            "demo": self.demo,
            "monotonic_s": round(now, 3),
            "deployments": rows,
            "probes": self._probe_status(),
            "retry_budget": {
                "active": budget.active,
                "retrying": budget.retrying,
                "waiting": budget.waiting,
                "denied": budget.denied,
            },
        }

    def _probe_status(self) -> dict[str, Any] | None:
        probes = None
        if self.probe_loop is not None:
            st = self.probe_loop.stats()
            probes = {
                "sent": st.sent,
                "failed": st.failed,
                "in_flight": st.in_flight,
                # Launched out of turn: a deployment with traffic turned slow (probes/loop.py).
                "hurried": st.hurried,
                "spend_today_usd": round(st.spend_today_usd, 6),
                "spend_cap_usd": st.spend_cap_usd,
                "skipped_for_budget": st.skipped_for_budget,
                # Longer than configured when the spend cap paces probing.
                "interval_s": round(self.probe_loop.settings.interval_s, 3),
                "half_life_s": self.config.probes.half_life_s,
            }
        return probes


class RouterHolder:
    __slots__ = ("current",)

    def __init__(self, current: Router) -> None:
        self.current = current


ROUTER = web.AppKey("router", RouterHolder)


class ClusterView(Protocol):
    """What the serving layer sees of a cluster member (proxy/cluster/node.py's Cluster),
    without importing it (or redis-py)."""

    def status(self) -> dict[str, Any]: ...

    def attach(self, router: Router) -> None: ...

    def attach_accounting(self, access: Any, budget: Any) -> None: ...


# Present when [cluster] redis_url is set.
CLUSTER: web.AppKey[ClusterView] = web.AppKey("cluster")
# This process's index among ``serve --workers N`` (proxy/workers.py); absent in a single
# process. /metrics labels every series with it and /v1/router/status names it.
WORKER = web.AppKey("worker", int)
