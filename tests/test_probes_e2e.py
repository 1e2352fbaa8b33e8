"""The probe loop and the decayed TTFT table driving prefer=fast, end to end: the real proxy, the
simulated providers and the OpenAI SDK, all on 127.0.0.1.

Latency shift: model A answers in 80 ms, B in 150 ms; A slows to 400 ms and prefer=fast must move
to B within two probe intervals (plus the slow probe's own 400 ms), then back when A recovers.
With a 0.2 s interval the time constants are chosen so one slow probe is enough:

- half_life_s = 0.3: A's weight just before a probe settles near 1.1 (``settled_weight``); the
  first 400 ms sample arrives ~0.6 s after the previous one, by which time the older samples
  weigh ~0.5, so it carries two thirds of the weight. The decayed mean moves to ~290 ms and the
  p90 to 400 ms at once, so the estimate (half mean, half p90) is ~350 ms against B's ~150 ms
  (~210 ms with its nominal's 5 % share at its lightest). The p90 term is what makes a single
  sample enough: it jumps as soon as the new regime holds over 10 % of the weight, so even the
  shipped 300 s half-life (weight ~14) needs only two slow probes.
- Back to 80 ms: the p90 alone would hold A at ~400 ms until the slow spell fell under 10 % of
  the weight (~3.3 half-lives); the regime test (two probes in a row 50 % under A's p10) drops
  the slow history after two fast probes instead. The test waits for it without a number.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from probes.latency import settled_weight
from proxy.app import RUNTIME
from proxy.serve.health import FALSE_ALARM, SNAPSHOT_MAX_AGE_S
from proxy.sim.catalogs import only_models, sim_model, upstream_id
from proxy.sim.script import Fault, Profile
from tests.conftest import Proxy, Sim, StartProxy

MSG: Any = [{"role": "user", "content": "complete this"}]

INTERVAL_S = 0.2
JITTER = 0.1
HALF_LIFE_S = 0.3
# The nominal priors are deliberately backwards (A looks slower on paper): measurements must win.
A = sim_model("fast-a", nominal_ttft_ms=900)
B = sim_model("steady-b", nominal_ttft_ms=790)


def probing(**changes: Any) -> dict[str, Any]:
    probes = {
        "enabled": True,
        "interval_s": INTERVAL_S,
        "jitter": JITTER,
        "half_life_s": HALF_LIFE_S,
        "timeout_s": 2.0,
        # At 0.2 s, pacing for a $1 cap would stretch the interval; the test wants it as set.
        "max_daily_spend_usd": 1000.0,
    }
    probes.update(changes)
    return probes


def set_ttft(sim: Sim, model: dict[str, Any], ttft_ms: float) -> None:
    sim.state.profiles[upstream_id(model["id"])] = Profile(ttft_ms=ttft_ms, gap_ms=1.0, tokens=4)


async def routed_model(client: openai.AsyncOpenAI) -> str:
    """Where prefer=fast goes now. Non-streaming, so it adds no TTFT sample of its own: what
    moves routing in these tests is the probes."""
    raw = await client.chat.completions.with_raw_response.create(
        model="auto:fast", messages=MSG, max_tokens=2
    )
    return raw.headers["x-router-model"]


async def stream_once(proxy: Proxy, model: str) -> str:
    stream = await proxy.client().chat.completions.create(model=model, messages=MSG, stream=True)
    text = ""
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            text += chunk.choices[0].delta.content
    return text


async def status(proxy: Proxy) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/router/status") as resp:
        assert resp.status == 200
        data: dict[str, Any] = orjson.loads(await resp.read())
        return data


def row(data: dict[str, Any], model_id: str) -> dict[str, Any]:
    (found,) = (r for r in data["deployments"] if r["model"] == model_id)
    return found


async def until(condition: Any, *, timeout_s: float, every_s: float = 0.05) -> float:
    """Poll ``condition`` until it holds; returns the seconds it took (a bounded wait, not a
    timing assertion)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for _ in range(math.ceil(timeout_s / every_s)):
        if await condition():
            return loop.time() - started
        await asyncio.sleep(every_s)
    raise AssertionError(f"{condition.__name__} did not hold within {timeout_s:g} s")


async def test_prefer_fast_follows_a_latency_shift_within_two_probe_intervals_and_back(
    sim: Sim, start_proxy: StartProxy
) -> None:
    set_ttft(sim, A, 80.0)
    set_ttft(sim, B, 150.0)
    proxy = await start_proxy({**only_models(A, B), "probes": probing()})
    # One client, made and used before measuring starts: building one blocks the event loop
    # (TLS context) that the probes in flight are timed on, in this single-process setup.
    client = proxy.client()
    await routed_model(client)

    async def both_measured() -> bool:
        data = await status(proxy)
        return all(row(data, m["id"])["samples"] >= 5 for m in (A, B))

    await until(both_measured, timeout_s=10.0)
    assert [await routed_model(client) for _ in range(3)] == ["fast-a"] * 3

    set_ttft(sim, A, 400.0)
    # Two jittered intervals until the first probe that sees 400 ms is sent, its own 400 ms,
    # and the snapshot cache; a probe already in flight at the switch reports 80 ms first.
    slowest_interval = INTERVAL_S * (1 + JITTER)
    await asyncio.sleep(2 * slowest_interval + 0.4 + SNAPSHOT_MAX_AGE_S + 0.1)
    assert [await routed_model(client) for _ in range(3)] == ["steady-b"] * 3
    slow = row(await status(proxy), "fast-a")
    assert slow["ttft_p90_ms"] > 300.0 and slow["last_sample_source"] == "probe"

    async def slow_regime_adopted() -> bool:
        return bool(row(await status(proxy), "fast-a")["regime_changes"] >= 1)

    # A second slow probe makes 400 ms A's whole history (the regime test going up).
    await until(slow_regime_adopted, timeout_s=5.0)
    changes = row(await status(proxy), "fast-a")["regime_changes"]

    set_ttft(sim, A, 80.0)

    async def back_on_a() -> bool:
        return await routed_model(client) == "fast-a"

    await until(back_on_a, timeout_s=10.0, every_s=0.1)
    # Back on A by the regime test, not by waiting out the slow spell's decay.
    assert row(await status(proxy), "fast-a")["regime_changes"] > changes


async def test_probe_settings_reach_the_loop_and_the_table_from_config(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        {
            **only_models(A, B),
            "probes": probing(live_quiet_s=7.0, live_interval_factor=3.0, p90_weight=0.25),
        }
    )
    loop = proxy.router.probe_loop
    assert loop is not None
    s = loop.settings
    assert (s.interval_s, s.jitter, s.concurrency, s.timeout_s) == (INTERVAL_S, JITTER, 4, 2.0)
    assert (s.live_quiet_s, s.live_interval_factor) == (7.0, 3.0)
    table = proxy.router.health.table
    assert table.high_weight == 0.25
    assert (table.shift_samples, table.shift_span_s) == (2, INTERVAL_S / 2)
    assert table.prior_weight == pytest.approx(
        0.05 / 0.95 * settled_weight(INTERVAL_S, HALF_LIFE_S)
    )


async def test_suspicion_is_on_with_the_regime_test_and_off_without_it(
    start_proxy: StartProxy,
) -> None:
    on = await start_proxy({**only_models(A, B), "probes": probing()})
    assert on.router.health.table.false_alarm == FALSE_ALARM
    off = await start_proxy({**only_models(A, B), "probes": probing(shift_samples=0)})
    assert off.router.health.table.false_alarm == 0.0


async def test_a_suspected_slowdown_reaches_routing_at_once_not_after_the_cache_age(
    start_proxy: StartProxy,
) -> None:
    """Two slow answers that arrive together make a steady busy deployment suspected; the next
    request is planned without it, not up to SNAPSHOT_MAX_AGE_S later."""
    proxy = await start_proxy({**only_models(A, B), "probes": probing(enabled=False)})
    health = proxy.router.health
    table = health.table
    keys = {d.model_id: d.key for d in health.snapshot().fast_order["any"]}
    for _ in range(200):
        table.observe(keys["fast-a"], 80.0, "live")
        table.observe(keys["steady-b"], 150.0, "live")

    def first() -> str:
        return health.snapshot().fast_order["any"][0].model_id

    await asyncio.sleep(SNAPSHOT_MAX_AGE_S + 0.01)  # the measurements are in the next plan
    assert first() == "fast-a"
    table.observe(keys["fast-a"], 400.0, "live")
    table.observe(keys["fast-a"], 400.0, "live")
    assert table.suspected(keys["fast-a"])
    assert first() == "steady-b"


async def test_a_deployment_with_live_traffic_is_probed_less(
    sim: Sim, start_proxy: StartProxy
) -> None:
    set_ttft(sim, A, 5.0)
    set_ttft(sim, B, 5.0)
    proxy = await start_proxy(
        {
            **only_models(A, B),
            # Regime detection off: on a loaded box a 5 ms deployment's live TTFTs jitter past
            # its band, and the probe that confirms such a run is a third probe of A (2 of 16
            # runs failed so). Confirming probes have tests of their own; this one is about
            # live traffic stretching the interval (here to 10 s, beyond any run of the test).
            "probes": probing(
                interval_s=0.1, live_quiet_s=60.0, live_interval_factor=100.0, shift_samples=0
            ),
        }
    )
    requests = proxy.sim.state.requests
    live = 0
    # Live streaming traffic to A for ~1.5 s, and on until B has had 6 probes (a starved loop
    # on a loaded box probes less often): A's TTFTs land in the table as "live" samples.
    async with asyncio.timeout(20.0):
        loop = asyncio.get_running_loop()
        until_t = loop.time() + 1.5
        while loop.time() < until_t or requests[upstream_id("steady-b")] < 6:
            assert await stream_once(proxy, "fast-a")
            live += 1
            await asyncio.sleep(0.02)
    probes_a = requests[upstream_id("fast-a")] - live
    probes_b = requests[upstream_id("steady-b")]
    # B, quiet, is probed every ~0.1 s (~12 times); A at most once before its first live sample
    # and then every 10 s.
    assert probes_b >= 6
    assert probes_a <= 2 < probes_b
    data = await status(proxy)
    assert row(data, "fast-a")["last_sample_source"] == "live"
    assert row(data, "steady-b")["last_sample_source"] == "probe"


async def test_status_reports_every_deployment_and_probe_spend_over_http(
    sim: Sim, start_proxy: StartProxy
) -> None:
    set_ttft(sim, A, 20.0)
    set_ttft(sim, B, 40.0)
    proxy = await start_proxy({**only_models(A, B), "probes": probing()})
    assert await stream_once(proxy, "steady-b")

    async def probed() -> bool:
        data = await status(proxy)
        return data["probes"]["sent"] >= 4 and row(data, "fast-a")["samples"] >= 2

    await until(probed, timeout_s=10.0)
    data = await status(proxy)
    assert {r["deployment"] for r in data["deployments"]} == {
        "fast-a@openrouter",
        "steady-b@openrouter",
    }
    a = row(data, "fast-a")
    assert a["provider"] == "openrouter"
    assert a["breaker"] == "closed"
    assert a["last_sample_source"] == "probe"
    assert 0.0 <= a["last_sample_age_s"] < 5.0
    # Measured ~20 ms (more on a loaded machine) against a 900 ms nominal: the measurements,
    # not the prior, set the figures.
    assert 15.0 < a["ttft_mean_ms"] < 450.0
    assert a["ttft_mean_ms"] <= a["ttft_p90_ms"] * 1.05
    assert a["nominal_ms"] == 900.0
    assert a["regime_changes"] >= 0 and a["ttft_estimate_ms"] > 0
    probes = data["probes"]
    # Each probe is billed as 8 input and 1 output token at $1 / $2 per million.
    assert probes["spend_today_usd"] >= probes["sent"] * 10e-6 * 0.99
    assert probes["spend_cap_usd"] == 1000.0
    assert probes["interval_s"] == INTERVAL_S
    assert probes["failed"] == 0


async def test_a_hanging_probe_never_makes_a_live_request_wait(
    sim: Sim, start_proxy: StartProxy
) -> None:
    stalled = sim_model("stalled-c", nominal_ttft_ms=100)
    # Before the proxy starts: its first probe must already hang.
    sim.state.set_fault(upstream_id("stalled-c"), Fault(mode="hang_first_token"))
    set_ttft(sim, A, 5.0)
    proxy = await start_proxy(
        {
            **only_models(A, stalled),
            # One probe at a time, and the stalled one holds that slot for the whole test.
            "probes": probing(concurrency=1, interval_s=0.05, timeout_s=30.0),
        }
    )
    loop = proxy.router.probe_loop
    assert loop is not None

    async def probe_hanging() -> bool:
        return proxy.sim.state.requests[upstream_id("stalled-c")] >= 1

    await until(probe_hanging, timeout_s=5.0)
    sent = loop.stats().sent
    client = proxy.client(timeout=10.0)

    async def live() -> str:
        raw = await client.chat.completions.with_raw_response.create(
            model="fast-a", messages=MSG, stream=True
        )
        chunks = [c async for c in raw.parse()]
        assert raw.headers["x-router-model"] == "fast-a"
        return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    answers = await asyncio.gather(*(live() for _ in range(20)))
    assert all(answers)
    # The probe loop was stuck behind the hanging probe the whole time.
    assert loop.stats().sent == sent
    assert loop.stats().in_flight >= 1


async def test_probes_hanging_on_bedrock_do_not_starve_its_live_requests(
    sim: Sim, start_proxy: StartProxy
) -> None:
    """Probes and live traffic share each adapter's connection pool; a bounded pool (botocore's
    default is 10) would make them queue behind each other."""
    stalled = [sim_model(f"stalled-{i}", provider="bedrock") for i in range(12)]
    target = sim_model("bedrock-live", provider="bedrock", nominal_ttft_ms=100)
    for m in stalled:
        sim.state.set_fault(upstream_id(m["id"]), Fault(mode="hang_first_token"))
    set_ttft(sim, target, 5.0)
    proxy = await start_proxy(
        {
            **only_models(target, *stalled),
            "probes": probing(concurrency=13, interval_s=0.05, timeout_s=30.0),
        }
    )

    async def pool_full() -> bool:
        return proxy.sim.state.open_streams >= 10

    await until(pool_full, timeout_s=10.0)
    client = proxy.client(timeout=10.0)
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model="bedrock-live", messages=MSG
        )
    except openai.APITimeoutError:
        raise AssertionError("the live request queued behind hanging probes") from None
    assert raw.headers["x-router-provider"] == "bedrock"
    assert raw.parse().choices[0].message.content


async def test_a_reload_keeps_the_table_and_says_its_settings_need_a_restart(
    sim: Sim, start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from proxy.config import load_config

    def toml(p90_weight: float) -> str:
        return (
            f"[probes]\nenabled = false\np90_weight = {p90_weight}\n"
            f'[providers.openrouter]\nbase_url = "{sim.url}/v1"\n'
        )

    path = tmp_path / "config.toml"
    path.write_text(toml(0.5))
    proxy = await start_proxy(config=load_config(path), config_path=str(path))
    table = proxy.router.health.table
    path.write_text(toml(0.2))
    with caplog.at_level(logging.WARNING, logger="model_router"):
        await proxy.app[RUNTIME].reload()
    assert proxy.router.health.table is table and table.high_weight == 0.5
    assert "probes.p90_weight changed (0.5 -> 0.2); it takes effect on restart" in caplog.text


async def test_a_stream_still_waiting_makes_the_first_slow_answer_enough_to_leave(
    sim: Sim, start_proxy: StartProxy
) -> None:
    """Two streams to fast-a, the second sent while the first waits: when the first answers
    slowly, the second, still waiting past the band, counts as the second slow answer, so routing
    leaves fast-a before it answers; a client that goes away stops counting."""
    proxy = await start_proxy(
        {**only_models(A, B), "probes": probing(enabled=False, half_life_s=300.0)}
    )
    health = proxy.router.health
    table = health.table
    keys = {d.model_id: d.key for d in health.snapshot().fast_order["any"]}
    for _ in range(200):
        table.observe(keys["fast-a"], 80.0, "live")
        table.observe(keys["steady-b"], 150.0, "live")
    await asyncio.sleep(SNAPSHOT_MAX_AGE_S + 0.01)
    client = proxy.client()
    a = keys["fast-a"]

    async def stream() -> str:
        # The proxy answers with headers at the first token: by then its TTFT is in the table.
        raw = await client.chat.completions.with_raw_response.create(
            model="auto:fast", messages=MSG, stream=True
        )
        await raw.parse().close()
        return raw.headers["x-router-model"]

    async def sent(n: int) -> bool:
        return table.waiting(a) == n

    set_ttft(sim, A, 1_000.0)
    first = asyncio.create_task(stream())
    await until(lambda: sent(1), timeout_s=10.0)
    set_ttft(sim, A, 30_000.0)  # the second waits on, whatever the box's load
    second = asyncio.create_task(stream())
    await until(lambda: sent(2), timeout_s=10.0)
    assert await first == "fast-a"
    assert table.row(a).samples == 201  # one slow answer so far
    assert table.suspected(a)
    assert await routed_model(client) == "steady-b"
    second.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await second

    await until(lambda: sent(0), timeout_s=10.0)  # a client that left stops counting


async def test_a_leader_turning_slow_gets_a_recovered_runner_up_probed_at_once(
    sim: Sim, start_proxy: StartProxy
) -> None:
    """back-c slowed from 80 to 400 ms earlier and has recovered since, unseen. When fast-a,
    which carries the traffic, turns slow, the running probe loop probes back-c over the wire
    at once instead of at its next turn 30 s later or more, and prefer=fast goes there."""
    c = sim_model("back-c", nominal_ttft_ms=850)
    for model in (A, c):
        set_ttft(sim, model, 20.0)
    set_ttft(sim, B, 60.0)
    proxy = await start_proxy(
        {**only_models(A, B, c), "probes": probing(interval_s=30.0, jitter=0.02, half_life_s=300)}
    )
    table = proxy.router.health.table
    keys = {d.model_id: d.key for d in proxy.router.health.snapshot().fast_order["any"]}

    async def seeded() -> bool:
        return all(table.row(k).probe_samples for k in keys.values())

    await until(seeded, timeout_s=10.0)  # within interval * jitter of start-up
    for _ in range(200):
        table.observe(keys["fast-a"], 20.0, "live")
        table.observe(keys["back-c"], 20.0, "live")
    for _ in range(10):  # ten in a row beyond the band: adopted however short the span
        table.observe(keys["back-c"], 400.0, "live")
    assert table.slowed_from(keys["back-c"]) is not None
    data = await status(proxy)
    assert data["probes"]["hurried"] == 0
    asked = sim.state.requests[upstream_id("back-c")]
    table.observe(keys["fast-a"], 500.0, "live")
    table.observe(keys["fast-a"], 500.0, "live")
    assert table.suspected(keys["fast-a"])

    async def found() -> bool:
        return table.slowed_from(keys["back-c"]) is None

    await until(found, timeout_s=10.0)
    assert sim.state.requests[upstream_id("back-c")] > asked
    assert (await status(proxy))["probes"]["hurried"] == 1
    await asyncio.sleep(SNAPSHOT_MAX_AGE_S + 0.01)
    assert await routed_model(proxy.client()) == "back-c"
