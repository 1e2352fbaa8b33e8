"""A client that leaves while the upstream has its request but has sent no response head yet
(LiteLLM and several other servers send their head only with the first chunk, or with the
whole answer) is still charged the attempt's prompt: in the record, the usage log and the
daily spend, streaming or not, over the OpenAI and Anthropic wires, as a hedged race's
cancelled attempt, and on top of the first answer of an escalation. An attempt that never
left (its connect still pending) is not charged. The proxy is the real app, the upstreams
small aiohttp apps on 127.0.0.1 and the simulator, the client the OpenAI SDK."""

from __future__ import annotations

import asyncio
import socket
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from proxy.sim.catalogs import only_models, sim_model, upstream_id
from proxy.sim.script import Fault, Profile
from tests.conftest import Proxy, Sim, StartProxy, config_for, with_server
from tests.test_fault_matrix import MSG, NANO, eventually, outcomes, serve, with_base_url
from tests.test_fault_matrix import settings as row_settings
from tests.test_hedge import FAST, SLOW
from tests.test_hedge import data as hedge_data

# Long enough that its prompt's cost shows in the status page's spend (rounded to 1e-6 USD).
LONG = [{"role": "user", "content": "summarise this " * 4000}]


@dataclass
class Withheld:
    """An upstream that reads the whole request and then sends nothing, not even its head,
    until the router hangs up."""

    got: int = 0
    ended: int = 0


WITHHELD = web.AppKey("withheld", Withheld)


async def withhold(request: web.Request) -> web.StreamResponse:
    state = request.app[WITHHELD]
    await request.read()
    state.got += 1
    try:
        await asyncio.sleep(60)
    finally:
        state.ended += 1
    return web.Response(status=500)


@pytest.fixture
async def withheld() -> AsyncIterator[tuple[Withheld, str]]:
    state = Withheld()
    runner, url = await serve(withhold, WITHHELD, state)
    yield state, url
    await runner.cleanup()


async def usage_rows(db: Path, columns: str) -> list[tuple[Any, ...]]:
    """The usage log's rows, once its writer has flushed one."""

    def rows() -> list[tuple[Any, ...]]:
        if not db.exists():
            return []
        with sqlite3.connect(db) as conn:
            return conn.execute(f"SELECT {columns} FROM usage").fetchall()

    await eventually(lambda: bool(rows()), "a usage row written")
    return rows()


async def spent_today(proxy: Proxy) -> float:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/router/status") as resp:
        status = await resp.json()
    return float(status["spend"]["today_usd"])


async def leave_once(proxy: Proxy, until: Any, *, stream: bool, **kw: Any) -> None:
    """Send one request with the SDK and abandon it once ``until()`` holds."""
    client = proxy.client()
    call = asyncio.ensure_future(
        client.chat.completions.create(model=NANO, messages=LONG, stream=stream, **kw)  # type: ignore[call-overload]
    )
    try:
        await eventually(until, "the upstream has the request")
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_a_client_leaving_before_the_upstreams_head_is_charged_its_prompt(
    stream: bool,
    withheld: tuple[Withheld, str],
    start_proxy: StartProxy,
    sim: Sim,
    tmp_path: Path,
) -> None:
    state, url = withheld
    config = with_base_url(config_for(sim.url, row_settings()), "openai", f"{url}/v1")
    proxy = await start_proxy(config=config)
    seen = outcomes(proxy)
    await leave_once(proxy, lambda: state.got == 1, stream=stream)
    await eventually(lambda: len(seen) == 1, "the request recorded")
    await eventually(lambda: state.ended == 1, "the upstream's request closed")
    (record,) = seen
    assert (record.status, record.error) == (499, "client_disconnected")
    assert (record.model, record.provider) == (NANO, "openai")
    model = proxy.router.catalog.get(NANO)
    assert model is not None
    assert record.prompt_tokens > 0 and record.completion_tokens == 0
    assert record.cost == round(model.cost_usd(record.prompt_tokens, 0), 10) > 0
    assert record.estimated
    ((status, prompt, cost, estimated),) = await usage_rows(
        tmp_path / "model-router.db", "status, prompt_tokens, cost, estimated"
    )
    assert (status, prompt, cost, estimated) == (499, record.prompt_tokens, record.cost, 1)
    assert await spent_today(proxy) == pytest.approx(record.cost, abs=1e-6)


def backlog_full() -> tuple[socket.socket, socket.socket, int]:
    """A listener whose accept queue is full: a further connect to it hangs (its SYN is
    dropped), so a request to it never leaves."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    filler = socket.create_connection(("127.0.0.1", port))  # the queue's one place
    return listener, filler, port


def connecting(port: int) -> bool:
    """Some socket on this host is in SYN_SENT towards ``port`` (/proc/net/tcp, state 02)."""
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] == "02" and int(fields[2].rsplit(":", 1)[1], 16) == port:
                return True
    return False


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_a_client_leaving_while_the_connect_is_pending_is_not_charged(
    stream: bool, start_proxy: StartProxy, sim: Sim
) -> None:
    listener, filler, port = backlog_full()
    try:
        config = with_base_url(
            config_for(sim.url, row_settings()), "openai", f"http://127.0.0.1:{port}/v1"
        )
        proxy = await start_proxy(config=with_server(config, warm_connections=False))
        seen = outcomes(proxy)
        await leave_once(proxy, lambda: connecting(port), stream=stream)
        await eventually(lambda: len(seen) == 1, "the request recorded")
    finally:
        filler.close()
        listener.close()
    (record,) = seen
    assert (record.status, record.error) == (499, "client_disconnected")
    assert (record.prompt_tokens, record.completion_tokens, record.cost) == (0, 0, 0.0)
    assert record.model is None


async def test_a_hedges_cancelled_primary_without_a_head_is_charged_its_prompt(
    withheld: tuple[Withheld, str], start_proxy: StartProxy, sim: Sim, tmp_path: Path
) -> None:
    state, url = withheld
    config = with_base_url(config_for(sim.url, hedge_data()), "openai", f"{url}/v1")
    proxy = await start_proxy(config=config)
    sim.state.profiles[FAST] = Profile(ttft_ms=20.0, gap_ms=1.0, tokens=6)
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto:fast",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
    )
    async for _ in raw.parse():
        pass
    assert raw.headers["x-router-hedged"] == "hedge"
    assert raw.headers["x-router-model"] == "m-b"
    assert state.got == 1 and sim.state.requests[SLOW] == 0  # the primary was the withholder
    await eventually(lambda: state.ended == 1, "the primary's request closed")
    ((hedged, hedge_cost, hedge_tokens, cost),) = await usage_rows(
        tmp_path / "model-router.db", "hedged, hedge_cost, hedge_tokens, cost"
    )
    assert hedged == "hedge" and hedge_tokens == 0
    assert 0 < hedge_cost < cost  # the primary's prompt, on top of the winner's answer


@pytest.mark.parametrize("stream", [True, False], ids=["stream", "non-stream"])
async def test_the_anthropic_wire_charges_a_request_that_left_too(
    stream: bool, start_proxy: StartProxy, sim: Sim
) -> None:
    """The simulator's Anthropic API holding back its head (``hang_headers``)."""
    proxy = await start_proxy({**only_models(sim_model("claude-x", provider="anthropic"))})
    sim.state.set_fault(upstream_id("claude-x"), Fault(mode="hang_headers"))
    seen = outcomes(proxy)
    client = proxy.client()
    call = asyncio.ensure_future(
        client.chat.completions.create(model="claude-x", messages=LONG, stream=stream)  # type: ignore[call-overload]
    )
    try:
        await eventually(lambda: sim.state.requests[upstream_id("claude-x")] == 1, "sent")
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    await eventually(lambda: len(seen) == 1, "the request recorded")
    (record,) = seen
    assert (record.status, record.model, record.provider) == (499, "claude-x", "anthropic")
    assert record.prompt_tokens > 0 and record.cost > 0 and record.estimated


async def test_a_client_leaving_an_escalation_pays_for_the_first_answer_and_the_second_prompt(
    start_proxy: StartProxy, sim: Sim
) -> None:
    """The economy answer is cut off (max_tokens), the standard tier's upstream holds back
    its head, and the client leaves: both were billed upstream."""
    cheap = sim_model("cheap", provider="openai", tier="economy")
    better = sim_model("better", provider="openrouter", tier="standard")
    proxy = await start_proxy(only_models(cheap, better))
    sim.state.set_fault(upstream_id("better"), Fault(mode="hang_headers"))
    seen = outcomes(proxy)
    client = proxy.client()
    call = asyncio.ensure_future(
        client.chat.completions.create(
            model="auto:economy",
            messages=MSG,  # type: ignore[arg-type]
            max_tokens=2,
            extra_body={"escalate": True},
        )
    )
    try:
        await eventually(lambda: sim.state.requests[upstream_id("better")] == 1, "escalated")
    finally:
        call.cancel()
        await asyncio.gather(call, return_exceptions=True)
    await eventually(lambda: len(seen) == 1, "the request recorded")
    (record,) = seen
    assert record.status == 499
    assert sim.state.last_body[upstream_id("cheap")]["max_tokens"] == 2
    # The first answer (its usage: a prompt and 2 completion tokens) and the second's
    # estimated prompt; both models at $1/M in, $2/M out.
    assert record.completion_tokens == 2 and record.prompt_tokens > 0 and record.estimated
    assert record.cost == pytest.approx((record.prompt_tokens * 1.0 + 2 * 2.0) / 1e6)
