"""Warm upstream connections: pre-connected at start, re-used before they expire, and shared
by probes and live requests. The simulator counts the client connections it has seen."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from proxy.assembly.warming import WARMER
from proxy.sim.catalogs import only_models, sim_model
from proxy.sim.script import Profile
from tests.conftest import Proxy, StartProxy, config_for

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


async def test_the_router_keeps_an_idle_client_connection_for_its_keepalive(
    start_proxy: StartProxy,
) -> None:
    # The client leg of "the first request after a pause": within limits.keepalive_timeout_s
    # the client's connection to the router is still there; past it the router closes it.
    cfg = data()
    cfg["limits"] = {"keepalive_timeout_s": 1.0}
    proxy = await start_proxy(cfg)
    opened = 0

    async def created(*_: object) -> None:
        nonlocal opened
        opened += 1

    trace = aiohttp.TraceConfig()
    trace.on_connection_create_end.append(created)
    connector = aiohttp.TCPConnector(keepalive_timeout=60.0)
    body = {"model": "m-a", "stream": True, "messages": MSG}
    async with aiohttp.ClientSession(connector=connector, trace_configs=[trace]) as session:

        async def stream() -> None:
            url = f"{proxy.url}/v1/chat/completions"
            async with session.post(url, json=body) as resp:
                assert resp.status == 200
                await resp.read()

        await stream()
        await asyncio.sleep(0.3)  # a pause well inside the keep-alive
        await stream()
        assert opened == 1
        await asyncio.sleep(2.0)  # past it: the router has closed the idle connection
        await stream()
        assert opened == 2


async def slow_stream_proxy(start_proxy: StartProxy) -> Proxy:
    """A proxy whose one model streams slowly, once its upstream connection is warm."""
    proxy = await start_proxy(data())
    state = proxy.sim.state
    state.profiles["sim/m-a"] = Profile(ttft_ms=5.0, gap_ms=200.0, tokens=20)
    await eventually(lambda: len(state.connections) == 1)
    return proxy


async def test_a_connection_a_cancelled_stream_closes_is_replaced_before_the_next_request(
    start_proxy: StartProxy,
) -> None:
    # Editors cancel the completion in flight at the next keystroke, and cancelling a stream
    # closes its upstream connection: the next completion must still find a warm one.
    proxy = await slow_stream_proxy(start_proxy)
    state = proxy.sim.state
    conns = state.connections
    await cancel_mid_answer(proxy)
    await eventually(lambda: state.cancelled == 1)
    # The replacement is opened in the background, before any request needs it ...
    await eventually(lambda: len(conns) == 2)
    assert state.requests["sim/m-a"] == 1  # a connection, not another model request
    state.profiles["sim/m-a"] = Profile(ttft_ms=5.0, gap_ms=1.0, tokens=3)
    await stream_once(proxy)
    assert len(conns) == 2  # ... and the next completion used it


async def cancel_mid_answer(proxy: Proxy) -> None:
    """A stream whose client leaves mid-answer, which closes its upstream connection."""
    body = {"model": "m-a", "stream": True, "messages": MSG}
    async with (
        aiohttp.ClientSession() as session,
        session.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        await resp.content.readuntil(b'"content":"')


async def test_once_the_app_shuts_down_a_closed_connection_is_not_replaced(
    start_proxy: StartProxy,
) -> None:
    # Shutting down closes connections (drained streams, cancelled probes) after the warmer
    # has stopped: a HEAD then would only meet a closing connector (an INFO line each).
    proxy = await slow_stream_proxy(start_proxy)
    state = proxy.sim.state
    warmer = proxy.app[WARMER]
    await warmer.close()
    sent = warmer.warmed
    await cancel_mid_answer(proxy)
    await eventually(lambda: state.cancelled == 1)
    await asyncio.sleep(0.2)  # where a replacement's HEAD would have been sent
    assert warmer.warmed == sent and len(state.connections) == 1


async def test_a_server_that_closes_every_connection_is_not_warmed_in_a_loop(
    start_proxy: StartProxy,
) -> None:
    """Replacing closed connections must not feed on itself: the warmer's own HEAD closed by
    the server is not replaced, so each closed request costs at most one HEAD."""
    heads = 0

    async def answer(request: web.Request) -> web.StreamResponse:
        nonlocal heads
        if request.method == "HEAD":
            heads += 1
            return web.Response(status=404, headers={"Connection": "close"})
        resp = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "Connection": "close"}
        )
        await resp.prepare(request)
        chunk = {"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": None}]}
        await resp.write(b"data: " + orjson.dumps(chunk) + b"\n\ndata: [DONE]\n\n")
        return resp

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        proxy = await start_proxy(config=config_for(f"http://127.0.0.1:{port}", data()))
        await eventually(lambda: heads == 1)  # the pre-connect
        for _ in range(3):
            await stream_once(proxy)
        await asyncio.sleep(0.5)
        assert heads <= 1 + 3
    finally:
        await runner.cleanup()
