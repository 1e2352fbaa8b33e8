"""What /metrics costs: the per-request sink (plain counts, exported by a collector) and a
scrape of the full bundled catalog. Run: ``python benchmarks/metrics_sink.py``.

The sink runs once per request after the answer; the budget it is judged against is the
proxy's own per-request overhead (hundreds of microseconds), so a few microseconds is noise.
"""

from __future__ import annotations

import asyncio
import statistics
import time

from aiohttp import web
from prometheus_client import disable_created_metrics, generate_latest

from proxy.assembly.providers import make_session
from proxy.assembly.router import build_router
from proxy.config import parse_config
from proxy.http.metrics import Metrics
from proxy.serve.record import Asked, RequestRecord
from proxy.serve.state import ROUTER, RouterHolder

REQUESTS = 200_000
SCRAPES = 200
ROUNDS = 5


def outcome(i: int) -> RequestRecord:
    # A realistic spread of label values: 8 models x 2 providers x 2 statuses.
    return RequestRecord(
        Asked(request_id=f"r{i}", endpoint="chat", stream=True),
        model=f"model-{i % 8}",
        provider=("openai", "openrouter")[i % 2],
        attempts=1 + (i % 20 == 0),
        status=200 if i % 50 else 502,
        ttft_ms=150.0 + i % 400,
        prompt_tokens=900,
        completion_tokens=40,
        cost=0.0004,
    )


def per_call_us(fn: object, n: int) -> float:
    assert callable(fn)
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n * 1e6


async def main() -> None:
    disable_created_metrics()  # as `model-router serve` does
    app = web.Application()
    metrics = Metrics(app)
    env = {"OPENAI_API_KEY": "x", "ANTHROPIC_API_KEY": "x", "AWS_ACCESS_KEY_ID": "x"}
    config = parse_config({"probes": {"enabled": False}})
    sessions = {"openai": make_session(config), "anthropic": make_session(config)}
    router = build_router(config, sessions, environ=env, demo=True)
    app[ROUTER] = RouterHolder(router)
    outcomes = [outcome(i) for i in range(1000)]

    def sink(n: int) -> None:
        for i in range(n):
            metrics.sink(outcomes[i % 1000], 0.8)

    def baseline(n: int) -> None:
        for i in range(n):
            _ = outcomes[i % 1000]  # the loop alone, to subtract

    def scrape(n: int) -> None:
        for _ in range(n):
            metrics_text = metrics.registry.collect()
            for _family in metrics_text:
                pass

    sink_us = [per_call_us(sink, REQUESTS) - per_call_us(baseline, REQUESTS) for _ in range(ROUNDS)]
    scrape_ms = [per_call_us(scrape, SCRAPES) / 1000 for _ in range(ROUNDS)]
    start = time.perf_counter()
    for _ in range(SCRAPES):
        body = generate_latest(metrics.registry)
    encode_ms = (time.perf_counter() - start) / SCRAPES * 1000
    print(f"sink per request: median {statistics.median(sink_us):.2f} us over {ROUNDS} rounds")
    print(f"collect per scrape: median {statistics.median(scrape_ms):.2f} ms")
    print(
        f"collect + encode per scrape: {encode_ms:.2f} ms, {len(body)} bytes, "
        f"{len(router.catalog.models)} models"
    )
    for session in sessions.values():
        await session.close()


if __name__ == "__main__":
    asyncio.run(main())
