"""The floor: a thin aiohttp+uvloop byte forwarder. It relays any request to one upstream and
the answer back as bytes arrive; no parsing, no routing. ``python -m benchmarks.forwarder``.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

import aiohttp
import uvloop
from aiohttp import web

UPSTREAM = web.AppKey("upstream", str)
SESSION = web.AppKey("session", aiohttp.ClientSession)
HOP = {"host", "content-length", "transfer-encoding", "connection", "keep-alive"}


async def forward(request: web.Request) -> web.StreamResponse:
    headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP}
    url = request.app[UPSTREAM] + request.path_qs
    async with request.app[SESSION].request(
        request.method, url, data=await request.read(), headers=headers
    ) as up:
        resp = web.StreamResponse(status=up.status)
        resp.content_type = up.content_type
        await resp.prepare(request)
        async for chunk in up.content.iter_any():
            await resp.write(chunk)
        await resp.write_eof()
        return resp


async def main(upstream: str, port: int, keepalive_s: float = 15.0) -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[UPSTREAM] = upstream.rstrip("/")
    app[SESSION] = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=keepalive_s)
    )
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=1024)
    await site.start()
    port = runner.addresses[0][1]
    print(f"forwarder ready on http://127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()
    await app[SESSION].close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--upstream", required=True, help="base URL, e.g. http://127.0.0.1:9000")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument(
        "--keepalive-s", type=float, default=15.0, help="upstream pool keep-alive (aiohttp's)"
    )
    args = parser.parse_args()
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main(args.upstream, args.port, args.keepalive_s))
