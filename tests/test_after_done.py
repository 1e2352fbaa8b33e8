"""What happens after an upstream says ``data: [DONE]``. Servers on uvicorn (LiteLLM's proxy,
vLLM) end the HTTP body a moment after it; an SDK may close as soon as it reads it. The
answer is whole at [DONE]: the client gets its end at once, a client that then hangs up is
no 499, and the upstream's late end is still read so its connection is pooled. The proxy is
the real app, the upstream a small aiohttp app on 127.0.0.1 that lingers after [DONE]."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import openai
import orjson
import pytest
from aiohttp import web

from proxy.app import SESSIONS
from tests.conftest import Proxy, Sim, StartProxy, config_for, server_log, spawn_server, stop_server
from tests.test_fault_matrix import MSG, NANO, outcomes, serve, with_base_url
from tests.test_fault_matrix import settings as row_settings

STATE = web.AppKey("state", dict)


async def answer(request: web.Request) -> web.StreamResponse:
    """A two-chunk stream, paced, [DONE], then the body's end only after ``linger`` seconds."""
    state = request.app[STATE]
    state["peers"].append(
        request.transport.get_extra_info("peername") if request.transport else None
    )
    body = await request.json()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    base: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "model": body["model"]}
    for choices in (
        [{"index": 0, "delta": {"role": "assistant", "content": "hello"}}],
        [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    ):
        await resp.write(b"data: " + orjson.dumps({**base, "choices": choices}) + b"\n\n")
        await asyncio.sleep(0.02)  # paced: [DONE] comes after the router has committed
    await resp.write(b"data: [DONE]\n\n")
    state["ended"] = asyncio.Event()
    await asyncio.sleep(state["linger"])
    state["ended"].set()
    return resp


async def lingering_proxy(
    start_proxy: StartProxy, sim: Sim, linger: float
) -> tuple[web.AppRunner, Proxy, dict[str, Any]]:
    state: dict[str, Any] = {"linger": linger, "peers": []}
    runner, url = await serve(answer, STATE, state)
    # A wide idle limit, so the grace after [DONE] is the full second, not the idle limit.
    settings = row_settings(server={"upstream_idle_s": 30.0, "write_stall_s": 5.0})
    config = with_base_url(config_for(sim.url, settings), "openai", f"{url}/v1")
    return runner, await start_proxy(config=config), state


async def until(done: Callable[[], bool]) -> None:
    """Until ``done()`` (polled: what it reads has no event to wait on), within 10 s."""
    async with asyncio.timeout(10):
        while not done():  # noqa: ASYNC110
            await asyncio.sleep(0.01)


async def settled(seen: list[Any], n: int = 1) -> None:
    """Until the router has recorded ``n`` requests (it settles after the client's end)."""
    await until(lambda: len(seen) >= n)


@pytest.mark.parametrize("linger", [0.0003, 0.3])
async def test_a_client_that_hangs_up_right_after_done_is_a_complete_answer(
    start_proxy: StartProxy, sim: Sim, linger: float
) -> None:
    runner, proxy, _ = await lingering_proxy(start_proxy, sim, linger)
    try:
        seen = outcomes(proxy)
        for n in range(1, 21):
            await hang_up_at_done(proxy)
            await settled(seen, n)
        assert [(o.status, o.error) for o in seen] == [(200, None)] * 20
        assert all(o.completion_tokens == 1 for o in seen)
    finally:
        await runner.cleanup()


async def hang_up_at_done(proxy: Proxy) -> None:
    """A stream read up to [DONE] and no further, then the connection dropped, as an SDK
    that stops reading there does."""
    writer, got = await raw_stream(proxy, b"data: [DONE]\n\n")
    writer.transport.abort()
    assert got.startswith(b"HTTP/1.1 200")


async def raw_stream(proxy: Proxy, until_seen: bytes) -> tuple[asyncio.StreamWriter, bytes]:
    """A streamed request over a plain socket, read until ``until_seen`` has come."""
    body = orjson.dumps({"model": NANO, "messages": MSG, "stream": True})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(body)}\r\n\r\n".encode()
        + body
    )
    got = b""
    while until_seen not in got:
        got += await reader.read(65536)
    return writer, got


async def test_the_client_gets_its_end_without_waiting_for_the_upstreams(
    start_proxy: StartProxy, sim: Sim
) -> None:
    runner, proxy, state = await lingering_proxy(start_proxy, sim, linger=3.0)
    try:
        seen = outcomes(proxy)
        # Read to the end of the chunked body (the OpenAI SDK stops at [DONE]; others read
        # on): it comes while the upstream still lingers, not when the upstream ends.
        writer, got = await raw_stream(proxy, b"\r\n0\r\n\r\n")
        writer.close()
        assert b"data: [DONE]\n\n" in got and not state["ended"].is_set()
        await settled(seen)
        assert seen[0].status == 200 and seen[0].error is None
    finally:
        await runner.cleanup()


async def test_an_upstream_that_ends_soon_after_done_keeps_its_connection(
    start_proxy: StartProxy, sim: Sim
) -> None:
    runner, proxy, state = await lingering_proxy(start_proxy, sim, linger=0.05)
    try:
        seen = outcomes(proxy)
        for n in (1, 2):
            stream = await proxy.client().chat.completions.create(
                model=NANO, messages=MSG, stream=True
            )
            assert "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
            await settled(seen, n)
            # The upstream's end is read after the client's: until then it holds the connection.
            await until(lambda: sum(s.in_use for s in proxy.app[SESSIONS].values()) == 0)
        # The second request went over the connection the first one used: its end was read.
        assert len(state["peers"]) == 2 and state["peers"][0] == state["peers"][1]
    finally:
        await runner.cleanup()


class UvicornLike(BaseHTTPRequestHandler):
    """A chunked stream whose body ends a moment after [DONE], as uvicorn's does (LiteLLM's
    proxy: 0.1-0.3 ms; here 50 ms, so the SDK has surely hung up by then, as it had in a
    third of the streams through LiteLLM); in a thread: the gap is real time."""

    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet
        return

    def do_POST(self) -> None:
        body = orjson.loads(self.rfile.read(int(self.headers["Content-Length"])))
        base = {"id": "c", "object": "chat.completion.chunk", "created": 1, "model": body["model"]}
        events = [
            b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"
            for choice in (
                {"index": 0, "delta": {"role": "assistant", "content": "hello"}},
                {"index": 0, "delta": {}, "finish_reason": "stop"},
            )
        ] + [b"data: [DONE]\n\n"]
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for event in events:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
            self.wfile.flush()
        time.sleep(0.05)
        self.wfile.write(b"0\r\n\r\n")


SERVED = """
[probes]
enabled = false
[providers.upstream]
kind = "openai"
base_url = "{url}"
api_key_env = "UPSTREAM_KEY"
[[models]]
id = "ok"
name = "ok"
owned_by = "test"
tier = "standard"
context_length = 128000
max_output_tokens = 16384
input_price = 0.15
output_price = 0.6
pricing_source = "test"
capabilities = ["chat"]
quality = {{ value = 60, source = "test", date = "2026-01" }}
coding = {{ value = 60, source = "test", date = "2026-01" }}
nominal_ttft_ms = 100
tokens_per_second = 50
deployments = [{{ provider = "upstream", upstream_id = "ok" }}]
"""


def test_served_streams_the_sdk_reads_to_done_are_logged_complete(tmp_path: Path) -> None:
    # `model-router serve` (uvloop, its own process) between the SDK and an upstream whose
    # end trails [DONE]: before, some of them were logged as 499s (through LiteLLM's proxy,
    # 20 of 60), each with a "client stopped reading" warning, although the SDK had read
    # every one to [DONE].
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), UvicornLike)
    upstream.daemon_threads = True
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    config = tmp_path / "config.toml"
    config.write_text(SERVED.format(url=f"http://127.0.0.1:{upstream.server_address[1]}/v1"))
    proc, url = spawn_server(
        ["serve", "--config", str(config), "--port", "0"],
        {"UPSTREAM_KEY": "k", "STATE_DIRECTORY": str(tmp_path)},
    )
    try:
        ids = []
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            for _ in range(30):
                raw = client.chat.completions.with_raw_response.create(
                    model="ok", messages=MSG, stream=True
                )
                parts = [c.choices[0].delta.content or "" for c in raw.parse() if c.choices]
                assert "".join(parts) == "hello"
                ids.append(raw.headers["x-request-id"])
    finally:
        stop_server(proc)
        upstream.shutdown()
        upstream.server_close()
    log = server_log(proc)
    lines = [orjson.loads(line) for line in log.splitlines() if line.startswith("{")]
    status = {line["request_id"]: line["status"] for line in lines if "request_id" in line}
    assert [status.get(i) for i in ids] == [200] * 30
    assert "client stopped reading" not in log
