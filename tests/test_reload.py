"""Config reload in process: the swap is atomic, in-flight requests finish on the old Router
and its providers, unchanged providers and health carry over, broken configs change nothing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from probes.breaker import BreakerBoard, BreakerPolicy
from probes.latency import LatencyTable
from probes.loop import ProbeLoop, ProbeSettings
from proxy.app import RUNTIME
from proxy.service.reload import ReloadError
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from tests.conftest import Proxy, Sim, StartProxy

MSG = [{"role": "user", "content": "say something"}]


def sim_toml(openai_url: str, others_url: str, extra: str = "") -> str:
    """A config with every provider on a simulator; ``openai`` may be on another one."""
    return (
        "[probes]\nenabled = false\n"
        f'[providers.openai]\nbase_url = "{openai_url}/v1"\n'
        f'[providers.google]\nbase_url = "{others_url}/v1"\n'
        f'[providers.openrouter]\nbase_url = "{others_url}/v1"\n'
        f'[providers.deepseek]\nbase_url = "{others_url}/v1"\n'
        f'[providers.anthropic]\nbase_url = "{others_url}"\n'
        f'[providers.bedrock]\nendpoint_url = "{others_url}"\n' + extra
    )


@pytest.fixture
async def second_sim() -> AsyncIterator[Sim]:
    state = SimState(default=Profile(ttft_ms=5.0, gap_ms=1.0, tokens=8))
    runner, url = await start_sim(state)
    yield Sim(state, url)
    await runner.cleanup()


async def proxy_from_file(start_proxy: StartProxy, path: Path, text: str) -> Proxy:
    from proxy.config import load_config

    await asyncio.to_thread(path.write_text, text)
    return await start_proxy(config=load_config(path), config_path=str(path))


async def test_in_flight_stream_finishes_on_the_old_provider_and_new_requests_use_the_new(
    start_proxy: StartProxy, sim: Sim, second_sim: Sim, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    proxy = await proxy_from_file(start_proxy, path, sim_toml(sim.url, sim.url))
    old = proxy.router
    sim.state.profiles["gpt-5-nano"] = Profile(ttft_ms=5, gap_ms=15, tokens=40)
    chunks = await proxy.client().chat.completions.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
    )
    first = await anext(aiter(chunks))
    path.write_text(sim_toml(second_sim.url, sim.url))
    summary = await proxy.app[RUNTIME].reload()
    assert "1 new, 1 retiring" in summary
    new = proxy.router
    assert new is not old
    assert proxy.app[RUNTIME].retiring == 1  # the old openai provider waits for the stream
    rest = [c async for c in chunks]
    text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
    assert len(text.split()) == 40
    assert rest[-1].choices[0].finish_reason == "stop"
    for _ in range(100):
        if proxy.app[RUNTIME].retiring == 0:
            break
        await asyncio.sleep(0.02)
    assert proxy.app[RUNTIME].retiring == 0
    await proxy.client().chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    assert second_sim.state.requests["gpt-5-nano"] == 1
    assert sim.state.requests["gpt-5-nano"] == 1
    # Unchanged providers and the health state are shared, not rebuilt.
    assert new.providers["anthropic"] is old.providers["anthropic"]
    assert new.providers["bedrock"] is old.providers["bedrock"]
    assert new.providers["openai"] is not old.providers["openai"]
    assert new.health is old.health


async def test_reload_keeps_measured_latency_and_open_breakers(
    start_proxy: StartProxy, sim: Sim, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    proxy = await proxy_from_file(start_proxy, path, sim_toml(sim.url, sim.url))
    health = proxy.router.health
    for _ in range(health.board.policy.consecutive_failures):
        health.failure("gpt-5-nano@openai", "server")
    assert "gpt-5-nano@openai" in health.snapshot().open
    await proxy.app[RUNTIME].reload()
    assert "gpt-5-nano@openai" in proxy.router.health.snapshot().open


@pytest.mark.parametrize(
    "broken",
    [
        pytest.param("[server]\nno_such_key = 1\n", id="unknown-key"),
        pytest.param("[server\n", id="not-toml"),
        pytest.param('[overrides.no-such-model]\ntier = "economy"\n', id="unknown-model"),
    ],
)
async def test_a_broken_config_is_rejected_and_the_old_router_keeps_serving(
    start_proxy: StartProxy, sim: Sim, tmp_path: Path, broken: str
) -> None:
    path = tmp_path / "config.toml"
    proxy = await proxy_from_file(start_proxy, path, sim_toml(sim.url, sim.url))
    before = proxy.router
    path.write_text(sim_toml(sim.url, sim.url, "[overrides.gpt-5-nano]\nenabled = false\n"))
    path.write_text(path.read_text() + broken)
    with pytest.raises(ReloadError):
        await proxy.app[RUNTIME].reload()
    assert proxy.router is before
    assert before.catalog.get("gpt-5-nano") is not None
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto:cheap",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert raw.headers["x-router-model"] == "gpt-5-nano"


async def test_a_missing_config_file_is_rejected(
    start_proxy: StartProxy, sim: Sim, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    proxy = await proxy_from_file(start_proxy, path, sim_toml(sim.url, sim.url))
    path.unlink()
    with pytest.raises(ReloadError, match="no such file"):
        await proxy.app[RUNTIME].reload()


async def test_a_changed_catalog_routes_the_next_request(
    start_proxy: StartProxy, sim: Sim, tmp_path: Path
) -> None:
    path = tmp_path / "config.toml"
    proxy = await proxy_from_file(start_proxy, path, sim_toml(sim.url, sim.url))
    path.write_text(sim_toml(sim.url, sim.url, "[overrides.gpt-5-nano]\nenabled = false\n"))
    await proxy.app[RUNTIME].reload()
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto:cheap",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert raw.headers["x-router-model"] != "gpt-5-nano"
    assert proxy.router.catalog.get("gpt-5-nano") is None


async def test_probe_accounting_survives_a_reload() -> None:
    settings = ProbeSettings(interval_s=60.0, max_daily_spend_usd=1.0)
    table, board = LatencyTable(60.0), BreakerBoard(BreakerPolicy())

    async def send(key: str) -> float:
        return 50.0

    old = ProbeLoop(settings, send, table, board, cost_per_probe={"a": 0.01, "b": 0.02})
    await old.probe_once("a")
    await old.probe_once("b")
    new = ProbeLoop(settings, send, table, board, cost_per_probe={"b": 0.02, "c": 0.03})
    new.adopt(old)
    st = new.stats()
    assert (st.sent, st.spend_today_usd) == (2, pytest.approx(0.03))
    assert set(st.last_run) == {"a", "b"}
