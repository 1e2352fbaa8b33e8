"""Warm pools: the first completion after a pause, over TLS, with the upstream pools kept warm
and without. The real proxy (its own process, uvloop, production server settings) streams from
the simulator serving HTTPS with a certificate made at start (``proxy/sim/tls.py``), so a cold
request pays TCP and a full TLS handshake as against a real provider (on loopback: no network
round trips, only the handshake's CPU, so the gap is smaller than in production).

    python -m benchmarks.warm_pool            # ~3 min
    python -m benchmarks.warm_pool --smoke    # tiny

Time is compressed 20x: the 60 s pause is 3 s; "off" keeps the old pool (30 s keep-alive, no
warming: 1.5 s here), "on" the new defaults (60 s keep-alive, pre-connect and re-use before
expiry: 3 s here). The simulator keeps idle connections 75 s (3.75 s here), like aiohttp's
server and many load balancers. Probes are off in both runs so only the pool differs. During
the pause the router is kept busy with another model on another simulator (another origin,
so another pool): the request after it then finds the code paths as warm as the requests it
is compared with, and only its own upstream connection has been idle.

Per setup: TTFT at the client of the first request after each pause, and of requests on the
connection already open right after it; the ratio of their medians is the figure (target: on
within 1.1x). Output: a table, and JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.sim.catalogs import only_models, sim_model
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from proxy.sim.tls import make_sim_tls

OUT = Path(__file__).resolve().parent / "out"
SCALE = 20.0  # seconds of production per second here


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    warm: bool
    keepalive_s: float  # production seconds; divided by SCALE


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int
    open_requests: int
    idle_s: float  # production seconds


FULL = Size(rounds=30, open_requests=5, idle_s=60.0)
SMOKE = Size(rounds=1, open_requests=2, idle_s=20.0)
SETUPS = (Setup("off", warm=False, keepalive_s=30.0), Setup("on", warm=True, keepalive_s=60.0))


@dataclass(slots=True)
class Result:
    setup: Setup
    after_idle_ms: list[float] = field(default_factory=list)
    open_ms: list[float] = field(default_factory=list)
    connections: int = 0
    ratio: float = 0.0


def config_data(setup: Setup) -> dict[str, Any]:
    return {
        **only_models(
            sim_model("m-a", provider="openai", nominal_ttft_ms=100.0),
            sim_model("m-b", provider="openrouter", nominal_ttft_ms=100.0),
        ),
        "probes": {"enabled": False},
        "server": {
            "upstream_keepalive_s": setup.keepalive_s / SCALE,
            "warm_connections": setup.warm,
        },
    }


def serve_proxy(
    data: dict[str, Any],
    sim_url: str,
    busy_url: str,
    ca_file: str,
    conn: multiprocessing.connection.Connection,
) -> None:
    import uvloop

    from proxy.app import make_app, start_server
    from proxy.assembly.demo import demo_config
    from proxy.config import parse_config

    async def main() -> None:
        cfg = demo_config(parse_config(data), sim_url, ca_file)
        # m-b's provider is another simulator (another origin, so another pool).
        busy = replace(cfg.providers["openrouter"], base_url=f"{busy_url}/v1")
        cfg = cfg.with_providers({**cfg.providers, "openrouter": busy})
        app = make_app(cfg, environ={"OPENAI_API_KEY": "bench", "OPENROUTER_API_KEY": "bench"})
        runner, port = await start_server(app, "127.0.0.1", 0)
        conn.send(port)
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)
        await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def ttft_ms(session: aiohttp.ClientSession, url: str, model: str = "m-a") -> float:
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "go"}]}
    started = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"proxy answered {resp.status}")
        first = None
        async for line in resp.content:
            if first is None and line.startswith(b"data: {") and b'"content":"' in line:
                first = (time.perf_counter() - started) * 1000
    if first is None:
        raise RuntimeError("a stream ended without content")
    return first


async def idle(session: aiohttp.ClientSession, url: str, seconds: float) -> None:
    """No traffic to m-a's upstream for ``seconds``, while the router stays busy: the client
    streams from m-b (another provider, another simulator) every 50 ms, as other users keep a
    real router busy. So the request after the pause finds the proxy's and the simulator's code
    as warm as the requests it is compared with; only m-a's connection pool has been idle."""
    loop = asyncio.get_running_loop()
    until = loop.time() + seconds
    while loop.time() < until:
        await ttft_ms(session, url, "m-b")
        await asyncio.sleep(0.05)


async def measure(setup: Setup, size: Size, workdir: Path) -> Result:
    tls = make_sim_tls(workdir / setup.name)
    state = SimState(default=Profile(ttft_ms=2.0, gap_ms=0.0, tokens=4))
    sim_runner, sim_url = await start_sim(state, tls=tls.server, keepalive_timeout_s=75 / SCALE)
    busy_state = SimState(default=Profile(ttft_ms=2.0, gap_ms=0.0, tokens=4))
    busy_runner, busy_url = await start_sim(busy_state, tls=tls.server)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    args = (config_data(setup), sim_url, busy_url, str(tls.ca_file), theirs)
    proc = ctx.Process(target=serve_proxy, args=args, daemon=True)
    proc.start()
    result = Result(setup)
    try:
        if not await asyncio.get_running_loop().run_in_executor(None, ours.poll, 30):
            raise RuntimeError("the proxy did not start")
        url = f"http://127.0.0.1:{ours.recv()}"
        # The client's own connection to the proxy stays open throughout: only the upstream
        # side differs between the setups.
        connector = aiohttp.TCPConnector(keepalive_timeout=10 * size.idle_s)
        async with aiohttp.ClientSession(connector=connector) as session:
            await ttft_ms(session, url)  # the client's connection, and a first upstream one
            for _ in range(size.rounds):
                await idle(session, url, size.idle_s / SCALE)
                result.after_idle_ms.append(await ttft_ms(session, url))
                for _ in range(size.open_requests):
                    result.open_ms.append(await ttft_ms(session, url))
        result.connections = len(state.connections)
    finally:
        ours.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # by its own handle, i.e. its PID
            proc.join(5)
        await sim_runner.cleanup()
        await busy_runner.cleanup()
    result.ratio = statistics.median(result.after_idle_ms) / statistics.median(result.open_ms)
    return result


def report(results: Sequence[Result], size: Size) -> str:
    lines = [
        f"first request after {size.idle_s:g} s idle (at 1/{SCALE:g} time) vs requests on an "
        "open connection, TTFT at the client over TLS upstream",
        f"  {'warm':>4} {'keep-alive':>10} {'after idle p50':>14} {'open p50':>9} "
        f"{'ratio':>6} {'upstream conns':>14}",
    ]
    for r in results:
        lines.append(
            f"  {r.setup.name:>4} {r.setup.keepalive_s:>9g}s "
            f"{statistics.median(r.after_idle_ms):>12.2f}ms "
            f"{statistics.median(r.open_ms):>7.2f}ms {r.ratio:>6.2f} {r.connections:>14}"
        )
    return "\n".join(lines)


async def run(size: Size) -> list[Result]:
    with tempfile.TemporaryDirectory(prefix="warm-pool-") as tmp:
        return [await measure(s, size, Path(tmp)) for s in SETUPS]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    results = asyncio.run(run(size))
    print(report(results, size))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"warm_pool-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"size": asdict(size), "scale": SCALE, "results": [asdict(r) for r in results]}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
