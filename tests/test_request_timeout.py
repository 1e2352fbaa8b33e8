"""``routing.request_timeout_s`` on a non-streaming request: a deployment that does not
answer in time is given up as a timeout and the next one answers; a client that leaves
first is not mistaken for that deadline. The proxy is the real app, upstreams the simulator,
the client the OpenAI SDK."""

from __future__ import annotations

import asyncio

import openai
import pytest

from proxy.serve.record import RequestRecord
from proxy.sim.script import Fault
from tests.conftest import Proxy, Sim, StartProxy
from tests.test_fault_matrix import KEY, MSG, NANO, PINNED, SMALL, UPSTREAM, breakers, outcomes
from tests.test_fault_matrix import settings as row_settings


async def hung_nano(
    start_proxy: StartProxy, sim: Sim, timeout_s: float
) -> tuple[Proxy, list[RequestRecord]]:
    """A proxy with ``request_timeout_s``, its records, and nano hanging before its headers."""
    proxy = await start_proxy(row_settings(routing={"request_timeout_s": timeout_s}))
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="hang_headers"))
    return proxy, outcomes(proxy)


async def test_an_upstream_past_the_request_timeout_is_given_up_and_the_next_answers(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy, seen = await hung_nano(start_proxy, sim, 0.5)
    raw = await proxy.client(timeout=10.0).chat.completions.with_raw_response.create(
        messages=MSG, **PINNED
    )
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-router-model"] == SMALL and raw.headers["x-router-attempts"] == "2"
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker_detail"]["consecutive_failures"] == 1
    assert [(o.status, o.attempts, o.model) for o in seen] == [(200, 2, SMALL)]


async def test_every_upstream_past_the_request_timeout_is_a_502_naming_the_deadline(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(row_settings(routing={"request_timeout_s": 0.3}))
    for model in (NANO, SMALL, "kimi-k2"):
        sim.state.set_fault(UPSTREAM[model], Fault(mode="hang_headers"))
    with pytest.raises(openai.APIStatusError) as caught:
        await proxy.client(timeout=10.0, max_retries=0).chat.completions.create(
            messages=MSG, **PINNED
        )
    assert caught.value.status_code == 502
    assert "no answer within 0.3 s" in caught.value.message


async def test_a_client_that_leaves_first_is_not_a_timeout(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy, seen = await hung_nano(start_proxy, sim, 30.0)
    with pytest.raises(openai.APITimeoutError):
        await proxy.client(timeout=0.3, max_retries=0).chat.completions.create(
            messages=MSG, **PINNED
        )
    for _ in range(100):
        if seen:
            break
        await asyncio.sleep(0.05)
    assert [(o.status, o.error, o.attempts) for o in seen] == [(499, "client_disconnected", 1)]
    assert not sim.state.requests[UPSTREAM[SMALL]]  # no fallback on a leave
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker_detail"]["consecutive_failures"] == 0
