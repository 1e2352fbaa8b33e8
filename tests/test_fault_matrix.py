"""The fault matrix: each row a failure injected into simulated upstreams (or a raw upstream
written here) on 127.0.0.1, asserting what the client got and what the breakers and the
upstream saw. The proxy is the real app served by ``start_server``; the client is the OpenAI
SDK where the row is about what a user sees, and raw sockets where it is about bytes or
about clients that misbehave.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from proxy.app import SESSIONS
from proxy.config import Config
from proxy.serve.record import RequestRecord
from proxy.sim.launch import bound_port
from proxy.sim.script import Fault, Profile
from tests.conftest import Proxy, Sim, StartProxy, config_for

MSG = [{"role": "user", "content": "count to ten"}]

# Single-deployment models, so the order candidates are tried in is the order pinned here
# whatever the latency table has learnt: nano on `openai`, then two on `openrouter`.
NANO, SMALL, KIMI = "gpt-5-nano", "mistral-small", "kimi-k2"
UPSTREAM = {
    NANO: "gpt-5-nano",
    SMALL: "mistralai/mistral-small-3.2-24b-instruct",
    KIMI: "moonshotai/kimi-k2-0905",
}
KEY = {NANO: "gpt-5-nano@openai", SMALL: "mistral-small@openrouter", KIMI: "kimi-k2@openrouter"}
PINNED: dict[str, Any] = {"model": NANO, "extra_body": {"models": [SMALL, KIMI]}}

Row = Callable[[StartProxy, Sim], Awaitable[None]]


def settings(**sections: dict[str, Any]) -> dict[str, Any]:
    """Config for one row: short idle and stall deadlines so mid-stream faults show quickly,
    no jitter so breaker timings are exact; ``sections`` are merged over these. The TTFT
    deadlines are wide: on a loaded box a healthy first token can take longer than 300 ms,
    and a deadline firing there turns a row about another fault into a fallback (the rows
    about the TTFT deadline set their own)."""
    data: dict[str, Any] = {
        "server": {"upstream_idle_s": 0.3, "write_stall_s": 0.3},
        "routing": {"ttft_deadline_ms": {"pinned": 10_000.0, "fast": 10_000.0}},
        "breaker": {"jitter": 0.0},
    }
    for name, table in sections.items():
        data[name] = {**data.get(name, {}), **table}
    return data


def with_base_url(config: Config, provider: str, url: str) -> Config:
    providers = dict(config.providers)
    providers[provider] = replace(providers[provider], base_url=url)
    return config.with_providers(providers)


def closed_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def eventually(
    check: Callable[[], bool],
    what: str,
    within: float = 30.0,
    state: Callable[[], object] | None = None,
) -> None:
    """Wait for ``check`` to hold; a bound on liveness, not a timing assertion (generous:
    a hundred connections at once on a loaded 2-core box have taken more than 5 s).
    ``state``, if given, is what the failure reports as having happened instead."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            seen = f" (instead: {state()})" if state is not None else ""
            raise AssertionError(f"never happened: {what}{seen}")
        await asyncio.sleep(0.005)


async def router_status(proxy: Proxy) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/router/status") as resp:
        assert resp.status == 200
        data: dict[str, Any] = await resp.json()
    return data


async def breakers(proxy: Proxy) -> dict[str, dict[str, Any]]:
    return {row["deployment"]: row for row in (await router_status(proxy))["deployments"]}


async def consume(client: openai.AsyncOpenAI, **kw: Any) -> tuple[Any, str, str | None]:
    """Stream one answer with the SDK: (response headers, text, finish reason)."""
    raw = await client.chat.completions.with_raw_response.create(messages=MSG, stream=True, **kw)
    text, finish = "", None
    async for chunk in raw.parse():
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    return raw.headers, text, finish


async def post_raw(proxy: Proxy, body: dict[str, Any]) -> tuple[int, Any, bytes]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        return resp.status, resp.headers, await resp.read()


def pinned_body(**extra: Any) -> dict[str, Any]:
    return {"model": NANO, "models": [SMALL, KIMI], "messages": MSG, "stream": True, **extra}


def http_post(body: dict[str, Any]) -> bytes:
    data = orjson.dumps(body)
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    )
    return head.encode() + data


def outcomes(proxy: Proxy) -> list[RequestRecord]:
    """Every request's RequestRecord, through the router's own sink plug point."""
    seen: list[RequestRecord] = []
    proxy.router.sinks.append(lambda outcome, _seconds: seen.append(outcome))
    return seen


# --- rows 1-4: failures before the first byte fall back ------------------------------------


async def row1_falls_back_when_the_first_choice_refuses_connection(
    start_proxy: StartProxy, sim: Sim
) -> None:
    config = config_for(sim.url, settings(breaker={"consecutive_failures": 1}))
    proxy = await start_proxy(
        config=with_base_url(config, "openai", f"http://127.0.0.1:{closed_port()}/v1")
    )
    # gpt-4o-mini is served by openai (tried first: lower nominal TTFT) and by openrouter.
    headers, text, finish = await consume(proxy.client(), model="gpt-4o-mini")
    assert text and finish == "stop"
    assert headers["x-router-model"] == "gpt-4o-mini"
    assert headers["x-router-provider"] == "openrouter"
    assert headers["x-router-attempts"] == "2"
    assert dict(sim.state.requests) == {"openai/gpt-4o-mini": 1}
    rows = await breakers(proxy)
    assert rows["gpt-4o-mini@openai"]["breaker"] == "open"
    assert rows["gpt-4o-mini@openrouter"]["breaker"] == "closed"


async def row2_a_429_falls_back_and_the_deployment_rests_for_retry_after(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(settings())
    # Every request nano sees gets a 429: any request during the cooldown would be counted.
    # The rest is long enough that the first fallback and the status read fit inside it on a
    # loaded box (at 1.5 s it had once run out before the first read).
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="status", status=429, retry_after=4.0))
    client = proxy.client()
    headers, text, _ = await consume(client, **PINNED)
    assert text and headers["x-router-model"] == SMALL and headers["x-router-attempts"] == "2"
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker"] == "open"
    assert 0 < row["breaker_detail"]["retry_after_remaining_s"] <= 4.0
    assert row["breaker_detail"]["consecutive_failures"] == 0  # a rate limit is not ill health
    for _ in range(5):
        headers, text, _ = await consume(client, **PINNED)
        assert text and headers["x-router-model"] == SMALL and headers["x-router-attempts"] == "1"
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker"] == "open" and sim.state.requests[UPSTREAM[NANO]] == 1
    # After Retry-After, one live trial is let through again.
    sim.state.faults.clear()
    await asyncio.sleep(row["breaker_detail"]["retry_after_remaining_s"] + 0.05)
    headers, text, _ = await consume(client, **PINNED)
    assert headers["x-router-model"] == NANO and sim.state.requests[UPSTREAM[NANO]] == 2


async def row3_falls_back_on_an_error_before_the_first_byte(
    fault: Fault, kind: str, start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(settings())
    sim.state.set_fault(UPSTREAM[NANO], fault)
    headers, text, finish = await consume(proxy.client(), **PINNED)
    assert text and finish == "stop"
    assert headers["x-router-model"] == SMALL and headers["x-router-attempts"] == "2"
    assert sim.state.requests[UPSTREAM[NANO]] == 1
    assert sim.state.requests[UPSTREAM[SMALL]] == 1
    assert sim.state.open_streams == 0
    detail = (await breakers(proxy))[KEY[NANO]]["breaker_detail"]
    assert detail["consecutive_failures"] == 1, kind


async def row3_a_non_streaming_request_falls_back_too(start_proxy: StartProxy, sim: Sim) -> None:
    proxy = await start_proxy(settings())
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="status", status=500))
    raw = await proxy.client().chat.completions.with_raw_response.create(messages=MSG, **PINNED)
    assert raw.parse().choices[0].message.content
    assert raw.headers["x-router-model"] == SMALL and raw.headers["x-router-attempts"] == "2"
    assert sim.state.requests[UPSTREAM[NANO]] == 1


async def row4_a_hang_before_the_first_token_hits_the_ttft_deadline(
    mode: str, start_proxy: StartProxy, sim: Sim
) -> None:
    # The deadline holds for the fallback too: wide enough for mistral-small's first token
    # on a loaded box (a hang is caught by any deadline).
    deadline_ms = 1000.0
    proxy = await start_proxy(settings(routing={"ttft_deadline_ms": {"pinned": deadline_ms}}))
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode=mode))  # type: ignore[arg-type]
    headers, text, _ = await consume(proxy.client(timeout=10.0), **PINNED)
    assert text and headers["x-router-model"] == SMALL and headers["x-router-attempts"] == "2"
    # The hung attempt was abandoned, not left running upstream.
    await eventually(lambda: sim.state.open_streams == 0, "hung upstream closed")
    if mode == "hang_first_token":
        assert sim.state.cancelled == 1
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker_detail"]["consecutive_failures"] == 1
    # The deadline is a censored TTFT sample: nano no longer looks fast.
    assert row["ttft_mean_ms"] >= deadline_ms


async def row4_prefer_fast_uses_its_own_tight_deadline(start_proxy: StartProxy, sim: Sim) -> None:
    # The pinned deadline is far beyond the client's patience: only the fast deadline can
    # rescue this request. It holds for the fallback too, hence 1 s and not less.
    proxy = await start_proxy(
        settings(routing={"ttft_deadline_ms": {"fast": 1000.0, "pinned": 60_000.0}})
    )
    chat = {m.id for m in proxy.router.catalog.models if "chat" in m.capabilities}
    fastest = next(
        d for d in proxy.router.health.snapshot().fast_order["any"] if d.model_id in chat
    )
    sim.state.set_fault(fastest.upstream_id, Fault(mode="hang_first_token"))
    headers, text, _ = await consume(proxy.client(timeout=10.0), model="auto:fast")
    assert text and headers["x-router-attempts"] == "2"
    assert headers["x-router-reason"].startswith("prefer=fast")
    assert headers["x-router-model"] != fastest.model_id or (
        headers["x-router-provider"] != fastest.provider
    )
    assert sim.state.requests[fastest.upstream_id] == 1


# --- rows 5-7: failures after the first byte become an error event -------------------------


async def rows5to7_a_mid_stream_failure_becomes_an_error_event(
    fault: Fault, never_forwarded: bytes | None, start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(settings())
    sim.state.profiles[UPSTREAM[NANO]] = Profile(ttft_ms=5.0, gap_ms=2.0, tokens=8)
    sim.state.set_fault(UPSTREAM[NANO], replace(fault))

    # What the SDK user sees: some text, then an APIError (not a silent end, not a bare
    # JSONDecodeError).
    client = proxy.client()
    stream = await client.chat.completions.create(messages=MSG, stream=True, **PINNED)  # type: ignore[call-overload]
    received = ""
    with pytest.raises(openai.APIError) as err:
        async for chunk in stream:
            received += chunk.choices[0].delta.content or "" if chunk.choices else ""
    assert received  # the failure came after the first byte: no fallback was possible
    assert "failed mid-stream" in err.value.message
    assert not isinstance(err.value, openai.APIStatusError)  # in-band, after a 200

    # The bytes: an error event is the last thing sent; no [DONE]; nothing raw from upstream.
    sim.state.set_fault(UPSTREAM[NANO], replace(fault))
    status, headers, raw = await post_raw(proxy, pinned_body())
    assert status == 200 and headers["x-router-model"] == NANO
    events = [e for e in raw.split(b"\n\n") if e]
    assert b"[DONE]" not in raw
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert set(last["error"]) == {"message", "type", "param", "code"}
    assert last["error"]["code"] == "upstream_error"
    for event in events[:-1]:
        assert "error" not in orjson.loads(event.removeprefix(b"data: "))
    if never_forwarded is not None:
        assert never_forwarded not in raw

    # Upstream: the broken stream was closed; the breaker counted the failures.
    await eventually(lambda: sim.state.open_streams == 0, "upstream stream closed")
    assert sim.state.requests[UPSTREAM[NANO]] == 2 and not sim.state.requests[UPSTREAM[SMALL]]
    # Two answers, both broken: two failed requests (not two successes and two failures).
    detail = (await breakers(proxy))[KEY[NANO]]["breaker_detail"]
    assert detail["failure_rate"] == 1.0 and detail["consecutive_failures"] == 1


# --- row 8: client disconnects ---------------------------------------------------------------


@dataclass
class Resources:
    tasks: int
    fds: int
    pooled: int
    acquired: int

    def within(self, baseline: Resources) -> bool:
        return (
            self.tasks <= baseline.tasks
            and self.fds <= baseline.fds
            and self.pooled <= baseline.pooled
            and self.acquired <= baseline.acquired
        )


async def close_clients(writers: Iterable[asyncio.StreamWriter]) -> None:
    """Close raw client connections (a no-op for those already closed), bounded: this runs
    while a row fails, and must not hang it."""
    closing = []
    for writer in writers:
        writer.transport.abort()
        closing.append(writer.wait_closed())
    async with asyncio.timeout(10.0):
        await asyncio.gather(*closing, return_exceptions=True)


def resources(proxy: Proxy) -> Resources:
    """Open tasks, file descriptors and the upstream pool of this process (the proxy and
    the simulator share it)."""
    pooled = acquired = 0
    for session in proxy.app[SESSIONS].values():
        pooled += session.pooled
        acquired += session.in_use
    return Resources(
        tasks=len(asyncio.all_tasks()),
        fds=len(os.listdir("/proc/self/fd")),
        pooled=pooled,
        acquired=acquired,
    )


async def row8_client_disconnects_cancel_the_upstream_and_leak_nothing(
    mid_stream: bool, start_proxy: StartProxy, sim: Sim
) -> None:
    # No deadline may end the streams: only the disconnect may. Not the TTFT deadline (the
    # hung attempts), nor the upstream idle limit (the mid-stream answers pause 500 ms between
    # tokens, and a loaded batch takes longer than 0.3 s from its first content to its close),
    # nor the write-stall limit (the clients stop reading after their first event).
    proxy = await start_proxy(
        settings(
            server={"upstream_idle_s": 60.0, "write_stall_s": 60.0},
            routing={"ttft_deadline_ms": {"pinned": 60_000.0}},
        )
    )
    port = int(proxy.url.rsplit(":", 1)[1])
    status, _, raw = await post_raw(proxy, pinned_body())  # warm the pool and the code paths
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    await eventually(lambda: sim.state.open_streams == 0, "warm-up finished")
    await asyncio.sleep(0.05)
    baseline = resources(proxy)
    seen = outcomes(proxy)
    if mid_stream:
        # Streams that outlast the row (250 s): at 20 ms a token they ended on their own after
        # 10 s, and on a loaded box a batch's first streams finished before its last opened.
        sim.state.profiles[UPSTREAM[NANO]] = Profile(ttft_ms=1.0, gap_ms=500.0, tokens=500)
    else:
        sim.state.set_fault(UPSTREAM[NANO], Fault(mode="hang_first_token"))

    def upstream() -> str:
        ends = Counter((o.status, o.error) for o in seen)
        counts = f"{sim.state.requests[UPSTREAM[NANO]]} sent to nano, {sim.state.open_streams} open"
        done = f"{sim.state.cancelled} cancelled, {sim.state.completed} completed"
        return f"{counts}, {done}; the router's ends {ends}"

    batch, batches = 100, 10
    conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for _ in range(batches):
            conns = await asyncio.gather(
                *(asyncio.open_connection("127.0.0.1", port) for _ in range(batch))
            )
            for _, writer in conns:
                writer.write(http_post(pinned_body()))
            if mid_stream:
                # Each client has its headers and first content: the proxy is past its commit
                # point.
                await asyncio.gather(*(reader.readuntil(b"data: ") for reader, _ in conns))
            await eventually(
                lambda: sim.state.open_streams == batch,
                "every upstream stream open",
                state=upstream,
            )
            for _, writer in conns:
                writer.close()
            await eventually(
                lambda: sim.state.open_streams == 0,
                "every upstream stream cancelled",
                state=upstream,
            )
            await asyncio.gather(*(writer.wait_closed() for _, writer in conns))
    finally:
        # A failed batch closes its hundred clients here: left to the garbage collector, their
        # sockets' ResourceWarnings surface in a later test and fail that one too.
        await close_clients(writer for _, writer in conns)

    assert sim.state.cancelled == batch * batches
    assert sim.state.requests[UPSTREAM[NANO]] == 1 + batch * batches  # no fallback on a leave
    assert not sim.state.requests[UPSTREAM[SMALL]]
    await eventually(lambda: len(seen) == batch * batches, "every request accounted for")
    assert {(o.status, o.error) for o in seen} == {(499, "client_disconnected")}
    await eventually(lambda: resources(proxy).within(baseline), "resources back to baseline")
    budget = proxy.router.dispatcher.budget
    assert (budget.active, budget.retrying) == (0, 0)
    row = (await breakers(proxy))[KEY[NANO]]
    assert row["breaker"] == "closed" and row["breaker_detail"]["consecutive_failures"] == 0


async def row8_a_client_leaving_a_half_open_trial_gives_the_slot_back(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(
        settings(
            routing={"ttft_deadline_ms": {"pinned": 60_000.0}},
            breaker={"consecutive_failures": 1, "base_open_s": 0.1, "half_open_successes": 2},
        )
    )
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="status", status=500, remaining=1))
    status, headers, _ = await post_raw(proxy, pinned_body())
    assert status == 200 and headers["x-router-model"] == SMALL
    await asyncio.sleep(0.12)
    assert (await breakers(proxy))[KEY[NANO]]["breaker"] == "half_open"

    # The trial request hangs before its first token, and its client leaves.
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="hang_first_token"))
    port = int(proxy.url.rsplit(":", 1)[1])
    _, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(http_post(pinned_body()))
    await eventually(lambda: sim.state.open_streams == 1, "the trial reached nano")
    writer.close()
    await writer.wait_closed()
    await eventually(lambda: sim.state.open_streams == 0, "the trial's upstream closed")

    # Nano is healthy again; the next request must be admitted as the trial, not turned away
    # for a slot the departed client still holds.
    sim.state.faults.clear()
    status, headers, raw = await post_raw(proxy, pinned_body())
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    assert headers["x-router-model"] == NANO and headers["x-router-attempts"] == "1"


# --- row 9: a client that never reads ---------------------------------------------------------


@dataclass
class Firehose:
    """An upstream that streams content for as long as anyone takes it."""

    sent: int = 0
    open: int = 0
    ended: int = 0


FIREHOSE = web.AppKey("firehose", Firehose)
_CHUNK = (
    b"data: "
    + orjson.dumps(
        {
            "id": "chatcmpl-fire",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "gpt-5-nano",
            "choices": [{"index": 0, "delta": {"content": "word " * 200}, "finish_reason": None}],
        }
    )
    + b"\n\n"
)


async def firehose(request: web.Request) -> web.StreamResponse:
    state = request.app[FIREHOSE]
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    state.open += 1
    try:
        await resp.prepare(request)
        while True:
            await resp.write(_CHUNK)
            state.sent += len(_CHUNK)
            await asyncio.sleep(0)  # write() only yields once its buffer is over the high mark
    except (asyncio.CancelledError, ConnectionError):
        state.ended += 1
        raise
    finally:
        state.open -= 1


async def serve(handler: Any, key: web.AppKey[Any], state: Any) -> tuple[web.AppRunner, str]:
    """A one-route upstream on loopback, cancelling its handler when the proxy hangs up."""
    app = web.Application()
    app[key] = state
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{bound_port(site)}"


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


async def row9_a_client_that_never_reads_is_cut_off_and_memory_stays_bounded(
    start_proxy: StartProxy, sim: Sim
) -> None:
    fire = Firehose()
    runner, url = await serve(firehose, FIREHOSE, fire)
    try:
        config = config_for(sim.url, settings(server={"write_stall_s": 0.3}))
        proxy = await start_proxy(config=with_base_url(config, "openai", f"{url}/v1"))
        seen = outcomes(proxy)
        port = int(proxy.url.rsplit(":", 1)[1])
        before = rss_bytes()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(http_post({"model": NANO, "messages": MSG, "stream": True}))
        await eventually(lambda: fire.open == 1, "the answer started")
        # An endless answer to a client that reads nothing: only the write-stall limit ends it.
        await eventually(lambda: fire.ended == 1, "the stream ended", within=20.0)
        grown = rss_bytes() - before
        await eventually(lambda: len(seen) == 1, "the request finished")
        assert seen[0].error == "client_stalled" and seen[0].status == 499
        assert seen[0].model == NANO
        # The proxy dropped the connection: reading now ends (reset or EOF), never hangs.
        with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
            async with asyncio.timeout(5.0):
                while True:
                    await reader.readexactly(1 << 20)
        writer.close()
        # Backpressure held all the way up: the upstream was slowed to what the buffers hold,
        # and the proxy did not take the answer into memory.
        assert fire.sent < 64 * 1024 * 1024, fire.sent
        assert grown < 64 * 1024 * 1024, grown
        row = (await breakers(proxy))[KEY[NANO]]
        assert row["breaker_detail"]["consecutive_failures"] == 0  # not the upstream's fault
    finally:
        await runner.cleanup()


# --- row 10: everything failing ----------------------------------------------------------------


async def row10_every_deployment_failing_gives_one_clear_error(
    fault: Fault, expected: int, start_proxy: StartProxy, sim: Sim
) -> None:
    # Every fault here answers at once; the deadline is long so that on a loaded box an
    # attempt is not cut by it first (that would turn a row of 429s into a 502).
    routing = {"max_attempts": 3, "ttft_deadline_ms": {"pinned": 2000.0}}
    proxy = await start_proxy(settings(routing=routing))
    sim.state.set_fault("*", fault)
    client = proxy.client(max_retries=2)  # the SDK's default: x-should-retry must stop it
    n = 8

    async def one() -> openai.APIStatusError:
        with pytest.raises(openai.APIStatusError) as err:
            await consume(client, **PINNED)
        return err.value

    errors = await asyncio.gather(*(one() for _ in range(n)))
    for e in errors:
        assert e.status_code == expected
        assert e.response.headers["x-should-retry"] == "false"
        assert e.code == "upstream_unavailable" and "attempt(s) failed" in e.message
        assert 1 <= int(e.response.headers["x-router-attempts"]) <= 3
    if expected == 429:
        assert isinstance(errors[0], openai.RateLimitError)
        assert errors[0].response.headers["Retry-After"] == "1"
    status, _, raw = await post_raw(proxy, pinned_body())
    assert status == expected
    assert set(orjson.loads(raw)["error"]) == {"message", "type", "param", "code"}
    upstream = sum(sim.state.requests.values())
    assert n + 1 <= upstream <= 3 * (n + 1)


async def row10_with_every_breaker_open_the_least_bad_is_still_tried(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(
        settings(breaker={"consecutive_failures": 1, "base_open_s": 30.0, "max_open_s": 30.0})
    )
    sim.state.set_fault("*", Fault(mode="status", status=500))
    status, headers, _ = await post_raw(proxy, pinned_body())
    assert status == 502 and headers["x-router-attempts"] == "3"
    rows = await breakers(proxy)
    assert all(rows[KEY[m]]["breaker"] == "open" for m in (NANO, SMALL, KIMI))
    # The upstreams recovered before the breakers knew: one try at the least bad succeeds.
    sim.state.faults.clear()
    headers, text, _ = await consume(proxy.client(), **PINNED)
    assert text
    assert headers["x-router-reason"].endswith("forced=all_open_least_bad")
    assert headers["x-router-attempts"] == "1"
    assert headers["x-router-model"] == NANO  # opened first, so soonest to half-open
    # While they stay open, a failing forced try is one attempt, not a volley.
    sim.state.set_fault("*", Fault(mode="status", status=500))
    status, headers, _ = await post_raw(proxy, pinned_body())
    assert status == 502 and headers["x-router-attempts"] == "1"
    assert sum(sim.state.requests.values()) == 3 + 1 + 1


@dataclass
class Tarpit:
    """An upstream that accepts every request and never answers; counts them per model."""

    requests: Counter[str] = field(default_factory=Counter)
    in_flight: Counter[str] = field(default_factory=Counter)
    peak: Counter[str] = field(default_factory=Counter)
    fallback_models: frozenset[str] = frozenset()
    fallback_peak: int = 0


TARPIT = web.AppKey("tarpit", Tarpit)


async def tarpit(request: web.Request) -> web.StreamResponse:
    state = request.app[TARPIT]
    model = str(orjson.loads(await request.read())["model"])
    state.requests[model] += 1
    state.in_flight[model] += 1
    state.peak[model] = max(state.peak[model], state.in_flight[model])
    fallbacks = sum(state.in_flight[m] for m in state.fallback_models)
    state.fallback_peak = max(state.fallback_peak, fallbacks)
    try:
        await asyncio.Event().wait()
    finally:
        state.in_flight[model] -= 1
    raise AssertionError("unreachable")


async def row10_the_retry_budget_caps_fallbacks_in_an_outage(
    start_proxy: StartProxy, sim: Sim
) -> None:
    floor, ratio, n = 2, 0.2, 20
    pit = Tarpit(fallback_models=frozenset({UPSTREAM[SMALL], UPSTREAM[KIMI]}))
    runner, url = await serve(tarpit, TARPIT, pit)
    try:
        config = config_for(
            sim.url,
            settings(
                routing={
                    "max_attempts": 3,
                    "retry_budget_min": floor,
                    "retry_budget_ratio": ratio,
                    # Long enough that all twenty reach the primary before the first gives
                    # up, even when the test process shares a loaded box.
                    "ttft_deadline_ms": {"pinned": 2000.0},
                }
            ),
        )
        for provider in ("openai", "openrouter"):
            config = with_base_url(config, provider, f"{url}/v1")
        proxy = await start_proxy(config=config)
        # Everything hangs, so every fallback holds its budget slot for a whole deadline.
        results = await asyncio.gather(*(post_raw(proxy, pinned_body()) for _ in range(n)))
        for status, headers, raw in results:
            assert status == 502 and headers["x-should-retry"] == "false"
            assert b"no first token within 2000 ms" in raw
        cap = max(floor, int(ratio * n))
        # Twenty requests wanted a fallback at the same moment; never more than the budget's
        # share of them were in flight to the fallback deployments at once.
        assert pit.peak[UPSTREAM[NANO]] == n
        assert 1 <= pit.fallback_peak <= cap, pit.fallback_peak
        assert sum(pit.requests.values()) <= 3 * n
        budget = (await router_status(proxy))["retry_budget"]
        assert budget["denied"] > 0
        assert (budget["retrying"], budget["active"]) == (0, 0)
        await eventually(lambda: sum(pit.in_flight.values()) == 0, "every hung attempt closed")
    finally:
        await runner.cleanup()


# --- rows 11-12: a provider goes down, and comes back ----------------------------------------


async def row11_one_provider_down_under_200_streams_is_invisible(
    start_proxy: StartProxy, sim: Sim
) -> None:
    # The whole test shares one process: under this load tight deadlines would fire on
    # healthy deployments and blur the row. The fault here is a reset, not a hang.
    proxy = await start_proxy(
        settings(
            server={"upstream_idle_s": 10.0},
            routing={"max_attempts": 3, "ttft_deadline_ms": {"pinned": 10_000.0}},
        )
    )
    # Two models, each on openai and openrouter: openai goes down, openrouter stays up.
    openai_ids = ("gpt-4o-mini", "gpt-4.1-mini")
    for up in (*openai_ids, "openai/gpt-4o-mini", "openai/gpt-4.1-mini"):
        sim.state.profiles[up] = Profile(ttft_ms=5.0, gap_ms=3.0, tokens=40)
    client = proxy.client(timeout=30.0)
    workers, rounds = 200, 2
    peak = 0
    errors: list[BaseException] = []
    done = 0

    async def worker(i: int) -> None:
        nonlocal done
        for _ in range(rounds):
            try:
                _, text, finish = await consume(
                    client,
                    model="gpt-4o-mini",
                    max_tokens=10 + i % 30,  # staggered lengths: requests keep arriving
                    extra_body={"models": ["gpt-4.1-mini"]},
                )
                assert text and finish == "length"
                done += 1
            except Exception as exc:
                errors.append(exc)

    async def watch() -> None:
        nonlocal peak
        while True:
            peak = max(peak, proxy.router.dispatcher.budget.active)
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    tasks = [asyncio.create_task(worker(i)) for i in range(workers)]
    # The provider fails once the first wave of streams is running.
    await eventually(lambda: sim.state.open_streams >= workers // 2, "first wave streaming")
    for up in openai_ids:
        sim.state.set_fault(up, Fault(mode="reset"))
    await asyncio.gather(*tasks)
    watcher.cancel()
    assert not errors, errors[:3]
    assert done == workers * rounds
    assert peak >= workers // 2
    # The downed deployments' breakers opened (they may be half-open again by now, probing
    # with live trials that fail; never closed while the fault lasts).
    rows = await breakers(proxy)
    tripped = [rows[f"{m}@openai"] for m in openai_ids if rows[f"{m}@openai"]["breaker_detail"]]
    assert any(r["breaker_detail"]["opened_count"] >= 1 for r in tripped)
    assert all(r["breaker"] != "closed" for r in tripped if r["breaker_detail"]["opened_count"])
    assert (await router_status(proxy))["retry_budget"]["denied"] == 0


async def row12_a_healed_provider_is_closed_by_probes_and_gets_traffic_back(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(
        settings(
            probes={"enabled": True, "interval_s": 0.2, "jitter": 0.1, "concurrency": 8},
            breaker={
                "consecutive_failures": 2,
                "base_open_s": 0.2,
                "max_open_s": 0.5,
                "half_open_successes": 2,
            },
        )
    )
    sim.state.set_fault(UPSTREAM[NANO], Fault(mode="status", status=500))
    client = proxy.client()
    for _ in range(2):
        headers, text, _ = await consume(client, model=NANO, extra_body={"models": [SMALL]})
        assert text and headers["x-router-model"] == SMALL

    async def state() -> str:
        return str((await breakers(proxy))[KEY[NANO]]["breaker"])

    assert await state() != "closed"
    # Heal it, and send no live traffic: only the probes can close the breaker now.
    sim.state.faults.clear()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 15.0
    while await state() != "closed":
        assert loop.time() < deadline, "the probes never closed the healed deployment's breaker"
        await asyncio.sleep(0.05)
    status = await router_status(proxy)
    assert status["probes"]["sent"] > 0
    row = {r["deployment"]: r for r in status["deployments"]}[KEY[NANO]]
    assert row["breaker_detail"]["opened_count"] >= 1
    assert row["last_sample_source"] == "probe"
    before = sim.state.requests[UPSTREAM[NANO]]
    for _ in range(3):
        headers, text, _ = await consume(client, model=NANO, extra_body={"models": [SMALL]})
        assert text and headers["x-router-model"] == NANO and headers["x-router-attempts"] == "1"
    assert sim.state.requests[UPSTREAM[NANO]] >= before + 3


# fmt: off
ROWS = [
    pytest.param(row1_falls_back_when_the_first_choice_refuses_connection, id="row01-refused-connection"),
    pytest.param(row2_a_429_falls_back_and_the_deployment_rests_for_retry_after, id="row02-429-retry-after"),
    pytest.param(partial(row3_falls_back_on_an_error_before_the_first_byte, Fault(mode="status", status=500), "500"), id="row03-500-before-first-byte"),
    pytest.param(partial(row3_falls_back_on_an_error_before_the_first_byte, Fault(mode="status", status=503), "503"), id="row03-503-before-first-byte"),
    pytest.param(partial(row3_falls_back_on_an_error_before_the_first_byte, Fault(mode="reset"), "reset"), id="row03-reset-before-first-byte"),
    pytest.param(partial(row3_falls_back_on_an_error_before_the_first_byte, Fault(mode="close", after_chunks=0), "close"), id="row03-close-before-first-token"),
    pytest.param(partial(row3_falls_back_on_an_error_before_the_first_byte, Fault(mode="bad_json", after_chunks=0), "bad_json"), id="row03-bad-json-before-first-token"),
    pytest.param(row3_a_non_streaming_request_falls_back_too, id="row03-500-non-streaming"),
    pytest.param(partial(row4_a_hang_before_the_first_token_hits_the_ttft_deadline, "hang_headers"), id="row04-hang-before-headers"),
    pytest.param(partial(row4_a_hang_before_the_first_token_hits_the_ttft_deadline, "hang_first_token"), id="row04-hang-before-first-token"),
    pytest.param(row4_prefer_fast_uses_its_own_tight_deadline, id="row04-fast-deadline"),
    pytest.param(partial(rows5to7_a_mid_stream_failure_becomes_an_error_event, Fault(mode="stall", after_chunks=3), None), id="row05-stall-mid-stream"),
    pytest.param(partial(rows5to7_a_mid_stream_failure_becomes_an_error_event, Fault(mode="malformed", after_chunks=3), b"this line is not server-sent events"), id="row06-malformed-sse-line"),
    pytest.param(partial(rows5to7_a_mid_stream_failure_becomes_an_error_event, Fault(mode="bad_json", after_chunks=3), b'{"id": "broken"'), id="row06-invalid-json-chunk"),
    pytest.param(partial(rows5to7_a_mid_stream_failure_becomes_an_error_event, Fault(mode="close", after_chunks=3), None), id="row07-upstream-closes-mid-stream"),
    pytest.param(partial(rows5to7_a_mid_stream_failure_becomes_an_error_event, Fault(mode="error_event", after_chunks=3), None), id="row07-upstream-error-event-mid-stream"),
    pytest.param(partial(row8_client_disconnects_cancel_the_upstream_and_leak_nothing, False), id="row08-1000-disconnects-before-first-token"),
    pytest.param(partial(row8_client_disconnects_cancel_the_upstream_and_leak_nothing, True), id="row08-1000-disconnects-mid-stream"),
    pytest.param(row8_a_client_leaving_a_half_open_trial_gives_the_slot_back, id="row08-disconnect-returns-half-open-trial"),
    pytest.param(row9_a_client_that_never_reads_is_cut_off_and_memory_stays_bounded, id="row09-client-never-reads"),
    pytest.param(partial(row10_every_deployment_failing_gives_one_clear_error, Fault(mode="status", status=500), 502), id="row10-all-500-gives-502"),
    pytest.param(partial(row10_every_deployment_failing_gives_one_clear_error, Fault(mode="reset"), 502), id="row10-all-reset-gives-502"),
    pytest.param(partial(row10_every_deployment_failing_gives_one_clear_error, Fault(mode="status", status=503), 503), id="row10-all-503-gives-503"),
    pytest.param(partial(row10_every_deployment_failing_gives_one_clear_error, Fault(mode="status", status=429, retry_after=1.0), 429), id="row10-all-429-gives-429"),
    pytest.param(row10_with_every_breaker_open_the_least_bad_is_still_tried, id="row10-all-open-tries-least-bad"),
    pytest.param(row10_the_retry_budget_caps_fallbacks_in_an_outage, id="row10-retry-budget-caps-fallbacks"),
    pytest.param(row11_one_provider_down_under_200_streams_is_invisible, id="row11-provider-down-under-200-streams"),
    pytest.param(row12_a_healed_provider_is_closed_by_probes_and_gets_traffic_back, id="row12-provider-heals"),
]
# fmt: on


@pytest.mark.parametrize("row", ROWS)
async def test_fault_matrix(row: Row, start_proxy: StartProxy, sim: Sim) -> None:
    await row(start_proxy, sim)
