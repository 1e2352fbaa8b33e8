"""Warm upstream connections: pre-connected at start, re-used before they expire, and shared
by probes and live requests. The simulator counts the client connections it has seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from proxy.assembly.warming import WARMER
from proxy.sim.catalogs import only_models, sim_model
from tests.conftest import Proxy, StartProxy

MSG = [{"role": "user", "content": "hi"}]


def data(**server: Any) -> dict[str, Any]:
    return {
        **only_models(sim_model("m-a", nominal_ttft_ms=100.0)),
        "probes": {"enabled": False},
        "server": server,
    }


async def eventually(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """A bound on liveness, not a timing assertion."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError("never happened")
        await asyncio.sleep(0.01)


async def stream_once(proxy: Proxy) -> None:
    stream = await proxy.client().chat.completions.create(model="m-a", messages=MSG, stream=True)
    async for _ in stream:
        pass


async def test_the_upstream_is_connected_at_start_and_that_connection_is_reused(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(data())
    conns = proxy.sim.state.connections
    await eventually(lambda: len(conns) == 1)
    assert proxy.sim.state.requests.total() == 0  # a connection, not a model request
    for _ in range(3):
        await stream_once(proxy)
    assert len(conns) == 1


async def test_an_idle_connection_is_reused_before_it_expires(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(data(upstream_keepalive_s=0.4))
    conns = proxy.sim.state.connections
    await eventually(lambda: len(conns) == 1)
    await asyncio.sleep(1.5)  # almost four keep-alives of silence
    await stream_once(proxy)
    assert len(conns) == 1
    assert proxy.app[WARMER].warmed >= 3


async def test_without_warming_an_idle_connection_expires(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(data(upstream_keepalive_s=0.4, warm_connections=False))
    conns = proxy.sim.state.connections
    await stream_once(proxy)
    assert len(conns) == 1
    await asyncio.sleep(1.0)
    await stream_once(proxy)
    assert len(conns) == 2


async def test_a_probe_leaves_its_connection_for_live_requests(start_proxy: StartProxy) -> None:
    cfg = data(warm_connections=False)
    cfg["probes"] = {"interval_s": 0.2, "jitter": 0.0, "max_daily_spend_usd": 100.0}
    proxy = await start_proxy(cfg)
    state = proxy.sim.state
    await eventually(lambda: state.requests["sim/m-a"] >= 3)
    # Probes one after another reused one connection, and so does the live request.
    assert len(state.connections) == 1
    await stream_once(proxy)
    assert len(state.connections) == 1
