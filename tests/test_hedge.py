"""Hedged first-token races, end to end: a slow primary is raced against a second provider,
the client sees one clean stream from the winner, the loser's upstream is closed at once and
its cost is charged; budget, breakers, non-streaming requests and opt-outs keep it bounded."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from proxy.config import ConfigError, parse_config
from proxy.sim.catalogs import only_models, sim_model
from proxy.sim.script import Profile
from tests.conftest import Proxy, StartProxy

MSG = [{"role": "user", "content": "complete this"}]
SLOW, FAST = "sim/m-a", "sim/m-b"


def data(**hedging: Any) -> dict[str, Any]:
    """m-a (openai) is the prefer=fast choice by its nominal; m-b (openrouter) the other."""
    return {
        **only_models(
            sim_model("m-a", provider="openai", nominal_ttft_ms=100.0),
            sim_model("m-b", provider="openrouter", nominal_ttft_ms=150.0),
        ),
        "probes": {"enabled": False},
        "hedging": {"min_delay_ms": 50.0, "max_delay_ms": 200.0, **hedging},
    }


async def start(start_proxy: StartProxy, slow_ms: float = 1500.0, **hedging: Any) -> Proxy:
    proxy = await start_proxy(data(**hedging))
    proxy.sim.state.profiles[SLOW] = Profile(ttft_ms=slow_ms, gap_ms=1.0, tokens=6)
    proxy.sim.state.profiles[FAST] = Profile(ttft_ms=20.0, gap_ms=1.0, tokens=6)
    return proxy


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """A bound on liveness, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.005)


async def raw_stream(proxy: Proxy, **extra: Any) -> tuple[dict[str, str], list[bytes], float]:
    """Headers, the data payloads, and the loop time the first content chunk arrived."""
    loop = asyncio.get_running_loop()
    body = {"model": "auto:fast", "stream": True, "messages": MSG, **extra}
    first = -1.0
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        assert resp.status == 200, await resp.text()
        events: list[bytes] = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip())
                if first < 0 and b'"content":"' in line and b'"content":""' not in line:
                    first = loop.time()
        return dict(resp.headers), events, first


async def test_a_slow_primary_is_hedged_and_the_client_gets_one_stream_from_the_winner(
    start_proxy: StartProxy,
) -> None:
    proxy = await start(start_proxy)
    headers, events, first = await raw_stream(proxy)
    assert headers["x-router-hedged"] == "hedge"
    assert (headers["x-router-model"], headers["x-router-provider"]) == ("m-b", "openrouter")
    assert headers["x-router-attempts"] == "2"
    assert events[-1] == b"[DONE]" and events.count(b"[DONE]") == 1
    chunks = [orjson.loads(e) for e in events[:-1]]
    assert {c["model"] for c in chunks} == {"m-b"}  # nothing of the loser's
    state = proxy.sim.state
    assert state.requests[SLOW] == 1 and state.requests[FAST] == 1
    # The loser's upstream saw its connection closed right after the winner's first token.
    await eventually(lambda: state.cancelled == 1)
    assert state.cancel_times[0] - first < 0.1
    assert state.open_streams == 0


async def test_the_sdk_reads_a_hedged_stream_as_any_other(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy)
    stream = await proxy.client().chat.completions.create(
        model="auto:fast",
        messages=MSG,
        stream=True,  # type: ignore[arg-type]
    )
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text


async def test_a_primary_that_answers_in_time_is_not_hedged(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy, slow_ms=10.0)
    headers, _, _ = await raw_stream(proxy)
    assert "x-router-hedged" not in headers
    assert proxy.sim.state.requests[FAST] == 0


async def test_a_hedge_never_fires_past_the_budget(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy, slow_ms=400.0, budget_percent=0.0, burst=1.0)
    first, _, _ = await raw_stream(proxy)
    assert first["x-router-hedged"] == "hedge"
    # Now whichever routing picks is slow: each request would hedge, but the budget is spent.
    proxy.sim.state.profiles[FAST] = Profile(ttft_ms=400.0, gap_ms=1.0, tokens=6)
    for _ in range(2):
        headers, _, _ = await raw_stream(proxy)
        assert "x-router-hedged" not in headers
        assert headers["x-router-model"] in {"m-a", "m-b"}
    assert proxy.router.dispatcher.hedge.budget.used == 1
    assert proxy.router.dispatcher.hedge.budget.denied >= 1


async def test_no_hedge_for_a_non_streaming_request(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy, slow_ms=400.0)
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto:fast",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert "x-router-hedged" not in raw.headers
    assert raw.headers["x-router-model"] == "m-a"
    assert proxy.sim.state.requests[FAST] == 0


async def test_no_hedge_when_the_alternatives_breaker_is_not_closed(
    start_proxy: StartProxy,
) -> None:
    proxy = await start(start_proxy, slow_ms=400.0)
    for _ in range(10):
        proxy.router.health.failure("m-b@openrouter", "server")
    headers, _, _ = await raw_stream(proxy)
    assert "x-router-hedged" not in headers
    assert headers["x-router-model"] == "m-a"
    assert proxy.sim.state.requests[FAST] == 0


async def test_a_request_can_opt_out_with_hedge_false(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy, slow_ms=400.0)
    headers, _, _ = await raw_stream(proxy, hedge=False)
    assert "x-router-hedged" not in headers
    assert proxy.sim.state.requests[FAST] == 0


async def test_prefer_cheap_is_not_hedged_unless_the_request_asks(
    start_proxy: StartProxy,
) -> None:
    proxy = await start(start_proxy, slow_ms=400.0)
    proxy.sim.state.profiles[FAST] = Profile(ttft_ms=400.0, gap_ms=1.0, tokens=6)
    headers, _, _ = await raw_stream(proxy, prefer="cheap")
    assert "x-router-hedged" not in headers
    headers, _, _ = await raw_stream(proxy, prefer="cheap", hedge=True)
    assert headers["x-router-hedged"] in {"primary", "hedge"}


async def test_a_bad_hedge_value_is_a_400_naming_the_field(start_proxy: StartProxy) -> None:
    proxy = await start(start_proxy)
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(
            model="auto:fast",
            messages=MSG,  # type: ignore[arg-type]
            stream=True,
            extra_body={"hedge": "no"},
        )
    assert info.value.body["param"] == "hedge"  # type: ignore[index]
    assert proxy.sim.state.requests.total() == 0


async def test_the_losers_cost_is_in_the_usage_log_and_metrics(
    start_proxy: StartProxy, tmp_path: Path
) -> None:
    proxy = await start(start_proxy)
    await raw_stream(proxy)
    db = tmp_path / "model-router.db"

    def rows() -> list[tuple[Any, ...]]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            return conn.execute("SELECT hedged, hedge_cost, cost FROM usage").fetchall()

    await eventually(lambda: bool(rows()))
    ((hedged, hedge_cost, cost),) = rows()
    assert hedged == "hedge"
    assert 0 < hedge_cost < cost  # the loser's prompt, charged on top of the answer
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    assert 'model_router_hedges_total{winner="hedge"} 1.0' in text
    assert "model_router_hedge_cost_usd_total" in text


def test_hedging_config_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"hedging\.prefer"):
        parse_config({"hedging": {"prefer": ["speedy"]}})
    with pytest.raises(ConfigError, match=r"hedging\.min_delay_ms"):
        parse_config({"hedging": {"min_delay_ms": 500.0, "max_delay_ms": 100.0}})
    key = {"id": "k", "sha256": "a" * 64, "hedge": "sometimes"}
    with pytest.raises(ConfigError, match=r"keys\[0\]\.hedge"):
        parse_config({"keys": [key]})


async def test_a_key_can_turn_hedging_off_for_its_streams(start_proxy: StartProxy) -> None:
    from proxy.http.auth import hash_key

    cfg = data()
    cfg["keys"] = [
        {"id": "no-hedge", "sha256": hash_key("sk-no-hedge"), "hedge": False},
        {"id": "default", "sha256": hash_key("sk-default")},
    ]
    proxy = await start_proxy(cfg)
    # Both slow, so whichever routing picks first is past its delay: a race, for keys that allow.
    for upstream in (SLOW, FAST):
        proxy.sim.state.profiles[upstream] = Profile(ttft_ms=400.0, gap_ms=1.0, tokens=6)
    hedged = {}
    for secret in ("sk-no-hedge", "sk-default"):
        async with openai.AsyncOpenAI(
            base_url=f"{proxy.url}/v1", api_key=secret, max_retries=0
        ) as client:
            raw = await client.chat.completions.with_raw_response.create(
                model="auto:fast",
                messages=MSG,  # type: ignore[arg-type]
                stream=True,
            )
            async for _ in raw.parse():
                pass
        hedged[secret] = raw.headers.get("x-router-hedged")
    assert hedged["sk-no-hedge"] is None
    assert hedged["sk-default"] in {"primary", "hedge"}


async def test_a_race_both_attempts_lose_is_not_reported_as_won_by_the_hedge(
    start_proxy: StartProxy,
) -> None:
    """The primary misses its deadline, the hedge fails, a third deployment answers: a race
    happened, but neither racer won it."""
    from proxy.sim.script import Fault

    cfg = data()
    cfg["models"].append(sim_model("m-c", provider="deepseek", nominal_ttft_ms=200.0))
    cfg["routing"] = {"ttft_deadline_ms": {"fast": 400.0}}
    proxy = await start_proxy(cfg)
    state = proxy.sim.state
    state.set_fault(SLOW, Fault(mode="hang_first_token"))
    state.set_fault(FAST, Fault(mode="status", status=500))
    headers, events, _ = await raw_stream(proxy)
    assert (headers["x-router-model"], headers["x-router-attempts"]) == ("m-c", "3")
    assert headers["x-router-hedged"] == "neither"
    assert events[-1] == b"[DONE]"
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics") as resp:
        text = await resp.text()
    assert 'model_router_hedges_total{winner="neither"} 1.0' in text
    assert 'winner="hedge"' not in text
