"""How fast a client's disconnect reaches the upstream: the time from a client closing its
socket to the upstream's handler being cancelled, through the real proxy (production server
settings, uvloop), before the first token and mid-stream. Goal: under 100 ms.

    python benchmarks/cancel_latency.py [--n 200] [--batch 50]

Everything runs on 127.0.0.1; the upstream is a small aiohttp app that stamps the moment
each of its streams is cancelled.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass, field

import orjson
import uvloop
from aiohttp import web

from benchmarks import procs
from proxy.app import make_app, start_server
from proxy.config import parse_config
from proxy.sim.launch import bound_port

CHUNK = b"data: " + orjson.dumps(
    {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "gpt-5-nano",
        "choices": [{"index": 0, "delta": {"content": "tick "}, "finish_reason": None}],
    }
)
ROLE = CHUNK.replace(b'"content":"tick "', b'"role":"assistant","content":""')


@dataclass
class Upstream:
    mid_stream: bool = False
    started: dict[str, asyncio.Event] = field(default_factory=dict)
    cancelled: dict[str, asyncio.Event] = field(default_factory=dict)
    cancelled_at: dict[str, float] = field(default_factory=dict)

    def event(self, events: dict[str, asyncio.Event], rid: str) -> asyncio.Event:
        return events.setdefault(rid, asyncio.Event())


UPSTREAM = web.AppKey("upstream", Upstream)


async def handle(request: web.Request) -> web.StreamResponse:
    state = request.app[UPSTREAM]
    body = orjson.loads(await request.read())
    rid = body["messages"][0]["content"]
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    try:
        await resp.write(ROLE + b"\n\n")
        state.event(state.started, rid).set()
        while True:
            if state.mid_stream:
                await resp.write(CHUNK + b"\n\n")
            await asyncio.sleep(0.02)
    except asyncio.CancelledError:
        state.cancelled_at[rid] = time.perf_counter()
        state.event(state.cancelled, rid).set()
        raise


def request_bytes(rid: str) -> bytes:
    body = orjson.dumps(
        {"model": "gpt-5-nano", "stream": True, "messages": [{"role": "user", "content": rid}]}
    )
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    ) + body


async def one(port: int, state: Upstream, rid: str) -> float:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request_bytes(rid))
    if state.mid_stream:
        await reader.readuntil(b"tick")  # the proxy has committed and is relaying
    else:
        await state.event(state.started, rid).wait()
    closed_at = time.perf_counter()
    writer.close()
    await writer.wait_closed()
    await state.event(state.cancelled, rid).wait()
    return (state.cancelled_at[rid] - closed_at) * 1000


async def run(n: int, batch: int) -> None:
    state = Upstream()
    app = web.Application()
    app[UPSTREAM] = state
    app.router.add_post("/v1/chat/completions", handle)
    up_runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await up_runner.setup()
    site = web.TCPSite(up_runner, "127.0.0.1", 0)
    await site.start()
    config = parse_config(
        {
            "probes": {"enabled": False},
            "routing": {"ttft_deadline_ms": {"pinned": 600_000.0}},
            "providers": {
                "openai": {"base_url": f"http://127.0.0.1:{bound_port(site)}/v1", "enabled": True}
            },
        }
    )
    with procs.private_state() as state_dir:
        runner, port = await start_server(
            make_app(config, environ={"OPENAI_API_KEY": "bench", "STATE_DIRECTORY": state_dir}),
            "127.0.0.1",
            0,
        )
        try:
            for mid_stream in (False, True):
                state.mid_stream = mid_stream
                where = "mid-stream" if mid_stream else "before the first token"
                for size in (1, batch):
                    samples: list[float] = []
                    for i in range(0, n, size):
                        tag = f"{int(mid_stream)}-{size}-{i}"
                        samples += await asyncio.gather(
                            *(one(port, state, f"{tag}-{j}") for j in range(size))
                        )
                    samples.sort()
                    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
                    print(
                        f"{where:>22}, {size:>3} at a time: n={len(samples)} "
                        f"p50={statistics.median(samples):.1f} ms p99={p99:.1f} ms "
                        f"max={samples[-1]:.1f} ms (goal < 100 ms)"
                    )
        finally:
            await runner.cleanup()
            await up_runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="disconnects per case")
    parser.add_argument("--batch", type=int, default=50, help="clients leaving at once")
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(run(args.n, args.batch))


if __name__ == "__main__":
    main()
