"""/metrics over a real socket: the Prometheus text parses and its numbers follow the traffic."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.sim.script import Fault, Profile
from tests.conftest import Proxy, StartProxy

MSG = [{"role": "user", "content": "say something"}]
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(proxy: Proxy) -> Samples:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics") as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def stream(proxy: Proxy, **kw: Any) -> str:
    chunks = await proxy.client().chat.completions.create(
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        **kw,
    )
    return "".join([c.choices[0].delta.content or "" async for c in chunks if c.choices])


async def test_counters_move_with_requests(proxy: Proxy) -> None:
    before = await scrape(proxy)
    for _ in range(3):
        await stream(proxy, model="gpt-5-nano")
    await proxy.client().chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):
        await proxy.client().chat.completions.create(model="auto", messages=[])
    after = await scrape(proxy)
    ok = {"model": "gpt-5-nano", "provider": "openai", "status": "200"}
    assert value(after, "model_router_requests_total", **ok) - value(
        before, "model_router_requests_total", **ok
    ) == pytest.approx(4)
    bad = {"model": "none", "provider": "none", "status": "400"}
    assert value(after, "model_router_requests_total", **bad) == pytest.approx(1)
    dep = {"deployment": "gpt-5-nano@openai"}
    assert value(after, "model_router_ttft_seconds_count", **dep) == pytest.approx(3)
    assert value(after, "model_router_ttft_seconds_bucket", le="+Inf", **dep) == pytest.approx(3)
    cost = value(after, "model_router_cost_usd_total", model="gpt-5-nano", provider="openai")
    assert cost > 0
    completion = value(
        after, "model_router_tokens_total", model="gpt-5-nano", provider="openai", kind="completion"
    )
    assert completion == pytest.approx(4 * 8)  # the sim's default profile answers 8 tokens
    assert value(after, "model_router_request_duration_seconds_count", endpoint="chat") == 5


async def test_a_fallback_is_counted_by_the_model_that_answered(proxy: Proxy) -> None:
    proxy.sim.state.set_fault("gpt-5-nano", Fault(mode="status", status=500))
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        extra_body={"models": ["gpt-5-nano", "gpt-4o-mini"]},
    )
    assert raw.headers["x-router-attempts"] == "2"
    samples = await scrape(proxy)
    answered = {"model": raw.headers["x-router-model"], "provider": "openai"}
    assert value(samples, "model_router_fallbacks_total", **answered) == 1


async def test_breaker_state_gauge_follows_failures(proxy: Proxy) -> None:
    samples = await scrape(proxy)
    for d in proxy.router.catalog.deployments():
        assert value(samples, "model_router_breaker_state", deployment=d.key) == 0.0
    assert sum(1 for name, _ in samples if name == "model_router_breaker_state") == len(
        list(proxy.router.catalog.deployments())
    )
    key = "gpt-5-nano@openai"
    for _ in range(proxy.router.health.board.policy.consecutive_failures):
        proxy.router.health.failure(key, "server")
    samples = await scrape(proxy)
    assert value(samples, "model_router_breaker_state", deployment=key) == 2.0  # open
    assert value(samples, "model_router_breaker_openings_total", deployment=key) == 1.0


async def test_open_streams_gauge_counts_streams_being_relayed(proxy: Proxy) -> None:
    proxy.sim.state.profiles["gpt-5-nano"] = Profile(ttft_ms=5, gap_ms=20, tokens=200)
    chunks = await proxy.client().chat.completions.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
    )
    async for _ in chunks:
        break
    during = await scrape(proxy)
    await chunks.close()
    assert value(during, "model_router_open_streams") == 1.0
    assert value(during, "model_router_requests_in_flight") == 2.0  # the stream and the scrape
    for _ in range(100):  # the proxy notices the client left on its next read
        after = await scrape(proxy)
        if value(after, "model_router_open_streams") == 0.0:
            break
        await asyncio.sleep(0.02)
    assert value(after, "model_router_open_streams") == 0.0


async def test_probes_and_their_spend_are_exported(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {"probes": {"enabled": True, "interval_s": 0.2, "jitter": 0.0, "max_daily_spend_usd": 1.0}}
    )
    samples: Samples = {}
    for _ in range(100):
        samples = await scrape(proxy)
        if value(samples, "model_router_probes_sent_total") >= 3:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "model_router_probes_sent_total") >= 3
    assert value(samples, "model_router_probe_spend_today_usd") > 0
    assert value(samples, "model_router_probe_spend_cap_usd") == 1.0


async def test_event_loop_lag_is_measured(proxy: Proxy) -> None:
    samples: Samples = {}
    for _ in range(60):
        samples = await scrape(proxy)
        if value(samples, "model_router_event_loop_lag_seconds_count") >= 1:
            break
        await asyncio.sleep(0.05)
    assert value(samples, "model_router_event_loop_lag_seconds_count") >= 1
    assert ("model_router_event_loop_lag_last_seconds", ()) in samples


async def test_each_app_has_its_own_registry(start_proxy: StartProxy) -> None:
    one, two = await start_proxy(), await start_proxy()
    await stream(one, model="gpt-5-nano")
    labels = {"model": "gpt-5-nano", "provider": "openai", "status": "200"}
    assert value(await scrape(one), "model_router_requests_total", **labels) == 1
    assert value(await scrape(two), "model_router_requests_total", **labels) == 0
