"""Deadline: a movable per-task deadline; and the relay's two deadlines that use it (an
upstream gone quiet mid-stream, a client that stopped reading), over real sockets."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest

from probes.deadline import Deadline
from proxy.serve.record import RequestRecord
from proxy.sim.script import Fault, Profile
from tests.conftest import StartProxy


async def test_raises_timeout_once_the_deadline_passes() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(loop.time() + 0.05, 0.05):
            await asyncio.sleep(5)
    assert 0.04 <= loop.time() - started < 1.0


async def test_moving_the_deadline_forward_keeps_the_task_alive() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    # Each move leaves 0.3 s: a loaded box may wake a 0.1 s sleep late by up to 0.2 s.
    async with Deadline(loop.time() + 0.3, 0.3) as d:
        for _ in range(6):
            await asyncio.sleep(0.1)
            d.at = loop.time() + 0.3
    assert not d.expired
    assert loop.time() - started > 0.3  # it outlived the deadline it started with


async def test_a_deadline_moved_earlier_still_fires_on_time() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(loop.time() + 10.0, 0.05) as d:
            d.at = loop.time() + 0.1
            await asyncio.sleep(5)
    assert loop.time() - started < 1.0


async def test_time_the_loop_did_not_run_is_not_counted_against_the_deadline() -> None:
    loop = asyncio.get_running_loop()
    async with Deadline(loop.time() + 0.5, 0.25) as d:
        time.sleep(1.5)  # noqa: ASYNC251 -- the loop does not run, as when the process is stopped
        assert d.paused() > 1.0  # known before the late check has run
        await asyncio.sleep(0.05)
        assert not d.expired
    assert 1.0 < d.paused() < 1.6


async def test_reschedule_to_now_fires_at_once_and_later_moves_are_cheap() -> None:
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        async with Deadline(loop.time() + 10.0, 5.0) as d:
            d.reschedule(loop.time() + 20.0)  # later: no timer work, still alive
            await asyncio.sleep(0.02)
            d.reschedule(loop.time())  # what the drain's cut does
            await asyncio.sleep(5)
    assert loop.time() - started < 1.0


async def test_a_cancellation_from_outside_stays_a_cancellation() -> None:
    loop = asyncio.get_running_loop()

    async def guarded() -> None:
        async with Deadline(loop.time() + 10.0, 1.0):
            await asyncio.sleep(5)

    task = asyncio.create_task(guarded())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


def outcomes(proxy_router: object) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    proxy_router.sinks.append(lambda outcome, seconds: seen.append(outcome))  # type: ignore[attr-defined]
    return seen


async def test_an_upstream_quiet_mid_stream_ends_with_an_error_event(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"server": {"upstream_idle_s": 0.3}})
    proxy.sim.state.set_fault("*", Fault(mode="stall", after_chunks=2))
    seen = outcomes(proxy.router)
    body = {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    reader, writer = await asyncio.open_connection(*proxy.url[7:].split(":"))
    payload = orjson.dumps(body)
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Connection: close\r\nContent-Length: "
        + str(len(payload)).encode()
        + b"\r\n\r\n"
        + payload
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    assert b"upstream went quiet for 0.3 s mid-stream" in raw
    assert b"data: [DONE]" not in raw
    assert seen[-1].error == "timeout" and seen[-1].status == 502


async def test_a_client_that_stops_reading_is_cut_off(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"server": {"write_stall_s": 0.3}})
    # An answer far larger than the kernel's socket buffers, sent as fast as it can go.
    proxy.sim.state.default = Profile(ttft_ms=0, gap_ms=0, tokens=60_000)
    seen = outcomes(proxy.router)
    body = orjson.dumps(
        {"model": "auto", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    host, port = proxy.url[7:].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    try:
        for _ in range(200):  # never read; wait for the proxy to give up on us
            if seen:
                break
            await asyncio.sleep(0.05)
    finally:
        sock.close()
    assert seen and seen[-1].error == "client_stalled" and seen[-1].status == 499
