"""(e) Routing decision time, in-process, with a synthetic 500-model catalog: ``plan()`` for
intents of every prefer and tier, pinned models and capability needs, timed one call at a time
with ``perf_counter_ns``; also the health-snapshot rebuild (at most once per 50 ms under traffic)
and request-body parsing, which share the hot path.
"""

from __future__ import annotations

import gc
import random
import time
from collections.abc import Callable
from functools import partial
from typing import Any

import orjson

from probes.breaker import BreakerBoard, BreakerPolicy
from probes.latency import LatencyTable
from proxy.catalog import PREFERS, TIERS, Catalog, Deployment, Model, Score
from proxy.decide.intent import forwarded_body, parse_intent
from proxy.decide.routing import Snapshot, plan
from proxy.serve.health import Health

from .common import Check, Context, stats

NAME = "routing"
MODELS = 500
PROVIDERS = ("openai", "google", "openrouter", "deepseek", "bedrock", "anthropic")
OPTIONAL_CAPS = ("tools", "json", "vision", "logprobs", "reasoning")
MESSAGES = [
    {"role": "system", "content": "You are a careful coding assistant."},
    {"role": "user", "content": "Complete this function: def parse(s: str) -> dict:" * 4},
]


def synthetic_catalog(n: int = MODELS, seed: int = 7) -> Catalog:
    """``n`` models across tiers, prices, windows, capabilities and 1-3 deployments each."""
    rng = random.Random(seed)
    models = []
    for i in range(n):
        mid = f"synthetic-{i:04d}"
        tier = TIERS[i % len(TIERS)]
        scale = {"economy": 0.3, "standard": 3.0, "premium": 15.0}[tier]
        caps = {"chat", *(c for c in OPTIONAL_CAPS if rng.random() < 0.6)}
        if rng.random() < 0.1:
            caps.add("fim")
        nominal = rng.uniform(150.0, 1500.0)
        deps = tuple(
            Deployment(mid, p, f"{mid}@{p}", nominal * rng.uniform(0.8, 1.3))
            for p in rng.sample(PROVIDERS, rng.choice((1, 1, 2, 3)))
        )
        models.append(
            Model(
                id=mid,
                name=mid,
                tier=tier,
                context_length=rng.choice((32_768, 128_000, 200_000, 1_000_000)),
                max_output_tokens=16_384,
                input_price=round(rng.uniform(0.2, 1.0) * scale, 4),
                output_price=round(rng.uniform(1.0, 4.0) * scale, 4),
                pricing_source="synthetic",
                capabilities=frozenset(caps),
                quality=Score(round(rng.uniform(30, 95), 1), "synthetic", "2025-01-01"),
                coding=Score(round(rng.uniform(10, 80), 1), "synthetic", "2025-01-01"),
                nominal_ttft_ms=nominal,
                tokens_per_second=rng.uniform(30, 300),
                deployments=deps,
                aliases=(f"{mid}-latest",),
            )
        )
    return Catalog.build(models)


def synthetic_snapshot(catalog: Catalog, seed: int = 11) -> Snapshot:
    """Measured TTFTs around nominal, and 5 % of deployments with an open breaker."""
    rng = random.Random(seed)
    deps = list(catalog.deployments())
    ttft = {d.key: d.nominal_ttft_ms * rng.uniform(0.6, 1.6) for d in deps}
    opened = {d.key for d in deps if rng.random() < 0.05}
    return Snapshot.build(catalog, ttft, opened, {k: rng.random() for k in opened})


def intent_bodies() -> dict[str, dict[str, Any]]:
    bodies: dict[str, dict[str, Any]] = {}
    for prefer in PREFERS:
        for tier in (None, *TIERS):
            body: dict[str, Any] = {"model": "auto", "prefer": prefer, "messages": MESSAGES}
            if tier:
                body["tier"] = tier
            bodies[f"prefer={prefer} tier={tier or 'any'}"] = body
    bodies["bare auto"] = {"model": "auto", "messages": MESSAGES}
    bodies["min_coding_score=60"] = {"model": "auto", "min_coding_score": 60, "messages": MESSAGES}
    bodies["tools+json balanced"] = {
        "model": "auto:premium",
        "messages": MESSAGES,
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}],
        "response_format": {"type": "json_object"},
    }
    bodies["pinned"] = {"model": "synthetic-0123", "messages": MESSAGES}
    bodies["pinned fallback list"] = {
        "model": "synthetic-0007-latest",
        "models": ["synthetic-0100", "synthetic-0200"],
        "messages": MESSAGES,
    }
    return bodies


def _time_ns(fn: Callable[[], object], iters: int) -> list[float]:
    """Per-call times in microseconds."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(iters):
        t0 = clock()
        fn()
        out.append((clock() - t0) / 1000.0)
    return out


def run(ctx: Context) -> dict[str, Any]:
    iters = ctx.size.routing_iters
    ctx.display.phase(f"{NAME}: plan() over a {MODELS}-model catalog, {iters} calls per intent")
    catalog = synthetic_catalog()
    snap = synthetic_snapshot(catalog)
    per_intent: dict[str, dict[str, float]] = {}
    everything: list[float] = []
    gc.collect()
    for i, (label, body) in enumerate(intent_bodies().items()):
        intent = parse_intent(body, "chat")
        plan(intent, catalog, snap, 3)  # raises here, not in the loop, if a case is broken
        samples = _time_ns(partial(plan, intent, catalog, snap, 3), iters)
        per_intent[label] = stats(samples)
        everything += samples
        ctx.display.bar("plan()", i + 1, len(intent_bodies()))

    # The snapshot routing reads is rebuilt when TTFTs changed and 50 ms passed (or a breaker
    # moved): one request in that window pays for it. A clock that jumps forces the rebuild.
    fake_now = [0.0]

    def tick() -> float:
        fake_now[0] += 1.0
        return fake_now[0]

    health = Health(catalog, LatencyTable(300.0), BreakerBoard(BreakerPolicy()), clock=tick)
    rebuild = _time_ns(health.snapshot, max(iters // 10, 5))

    raw = orjson.dumps(intent_bodies()["prefer=fast tier=any"])

    def parse() -> None:
        body = orjson.loads(raw)
        parse_intent(body, "chat")
        forwarded_body(body)

    parsing = _time_ns(parse, iters)
    return {
        "models": len(catalog.models),
        "deployments": sum(1 for _ in catalog.deployments()),
        "plan_us": stats(everything),
        "plan_us_by_intent": per_intent,
        "snapshot_rebuild_us": stats(rebuild),
        "parse_intent_us": stats(parsing),
    }


def checks(result: dict[str, Any]) -> list[Check]:
    p99 = result["plan_us"]["p99"]
    return [Check("(e) routing decision p99, 500 models", "< 50 us", f"{p99:.1f} us", p99 < 50)]
