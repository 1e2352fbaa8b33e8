"""Hedging: TTFT tail with hedged first-token races on and off. The real proxy (its own
process, uvloop, production server settings) routes ``auto:fast`` streams between a simulated
provider whose TTFT is heavy-tailed (95 % at 150 ms, 5 % at 1,500 ms) and a steadier one
(220 ms every time, on another provider). prefer=fast picks the heavy-tailed one (its decayed
mean/p90 mix is lower); with hedging on, a stream with no first token after that deployment's
p90 is raced against the steady one.

    python -m benchmarks.hedging            # ~1 min
    python -m benchmarks.hedging --smoke    # tiny

Per run: client-side TTFT p50/p95/p99/max, upstream requests per client request (from the
simulator's count), hedges and who won, and the extra spend (the cancelled attempts' cost from
``/metrics``). Probes run (the shipped interval/half-life ratio at 1/60 of the time) and are
not counted as upstream requests: those are live attempts only. Both runs replay the same
seeded tail. Targets: p99 at least 50 % lower with hedging, at most 10 % more upstream
requests. Output: a table, and JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.sim.catalogs import only_models, sim_model, upstream_id
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState

from . import procs
from .common import stream_once

OUT = Path(__file__).resolve().parent / "out"
TAILED = Profile(ttft_ms=150.0, gap_ms=5.0, tokens=8, tail_p=0.05, tail_ttft_ms=1500.0)
STEADY = Profile(ttft_ms=220.0, gap_ms=5.0, tokens=8)


@dataclass(frozen=True, slots=True)
class Size:
    requests: int
    workers: int


FULL = Size(requests=800, workers=4)
SMOKE = Size(requests=20, workers=2)


@dataclass(slots=True)
class Result:
    hedging: bool
    ttft_ms: list[float] = field(default_factory=list)
    upstream_requests: int = 0  # live attempts: the simulator's count less probes
    probes: int = 0
    hedged: dict[str, int] = field(default_factory=dict)  # winner -> count
    hedge_cost_usd: float = 0.0
    cost_usd: float = 0.0
    models: dict[str, int] = field(default_factory=dict)


def config_data(hedging: bool) -> dict[str, Any]:
    return {
        **only_models(
            sim_model("tailed", provider="openai", nominal_ttft_ms=200.0),
            sim_model("steady", provider="openrouter", nominal_ttft_ms=220.0),
        ),
        # The shipped probe interval / half-life ratio at 1/60 of the time, as latency_shift:
        # probes keep measuring the provider routing has left.
        "probes": {
            "interval_s": 0.5,
            "half_life_s": 5.0,
            "live_quiet_s": 0.5,
            "max_daily_spend_usd": 10_000.0,
        },
        "hedging": {"enabled": hedging},
    }


def serve_proxy(
    data: dict[str, Any], sim_url: str, conn: multiprocessing.connection.Connection
) -> None:
    import uvloop

    from proxy.app import make_app, start_server
    from proxy.assembly.demo import demo_config
    from proxy.config import parse_config

    async def main() -> None:
        cfg = demo_config(parse_config(data), sim_url)
        with procs.private_state() as state:
            env = {"OPENAI_API_KEY": "bench", "OPENROUTER_API_KEY": "bench"}
            app = make_app(cfg, environ={**env, "STATE_DIRECTORY": state})
            runner, port = await start_server(app, "127.0.0.1", 0)
            conn.send(port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * len(ordered)) - 1))]


def metric(text: str, name: str) -> dict[str, float]:
    """Samples of one metric family from the Prometheus text, by their label text."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith(name):
            key, _, value = line.rpartition(" ")
            out[key[len(name) :]] = float(value)
    return out


async def measure(hedging: bool, size: Size) -> Result:
    state = SimState(default=STEADY)
    state.rng = random.Random(7)  # the same tail in both runs
    state.profiles[upstream_id("tailed")] = TAILED
    state.profiles[upstream_id("steady")] = STEADY
    sim_runner, sim_url = await start_sim(state)
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(
        target=serve_proxy, args=(config_data(hedging), sim_url, theirs), daemon=True
    )
    proc.start()
    result = Result(hedging)
    try:
        if not await asyncio.get_running_loop().run_in_executor(None, ours.poll, 30):
            raise RuntimeError("the proxy did not start")
        url = f"http://127.0.0.1:{ours.recv()}"
        remaining = size.requests

        async def worker(session: aiohttp.ClientSession) -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                model, ttft = await stream_once(session, url)
                result.ttft_ms.append(ttft)
                result.models[model] = result.models.get(model, 0) + 1

        async with aiohttp.ClientSession() as session:
            await asyncio.gather(*(worker(session) for _ in range(size.workers)))
            async with session.get(f"{url}/metrics") as resp:
                text = await resp.text()
            async with session.get(f"{url}/v1/router/status") as resp:
                result.probes = int(orjson.loads(await resp.read())["probes"]["sent"])
        # Probes finishing after the status read would be miscounted: let them land first.
        await asyncio.sleep(0.3)
        result.upstream_requests = state.requests.total() - result.probes
        result.hedged = {
            k.split('"')[1]: int(v) for k, v in metric(text, "model_router_hedges_total").items()
        }
        result.hedge_cost_usd = sum(metric(text, "model_router_hedge_cost_usd_total").values())
        result.cost_usd = sum(metric(text, "model_router_cost_usd_total").values())
    finally:
        ours.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # by its own handle, i.e. its PID
            proc.join(5)
        await sim_runner.cleanup()
    return result


def summary(r: Result) -> dict[str, float]:
    n = len(r.ttft_ms)
    return {
        "p50": percentile(r.ttft_ms, 50),
        "p95": percentile(r.ttft_ms, 95),
        "p99": percentile(r.ttft_ms, 99),
        "max": max(r.ttft_ms),
        "upstream_per_request": r.upstream_requests / n,
        "hedges": sum(r.hedged.values()),
    }


def report(results: Sequence[Result]) -> str:
    lines = [
        "auto:fast streams; 'tailed' 95 % at 150 ms / 5 % at 1,500 ms TTFT, 'steady' 220 ms",
        f"  {'hedging':>7} {'requests':>8} {'p50 ms':>7} {'p95 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'upstream/req':>12} {'hedges (won by hedge)':>22} {'extra spend':>12}",
    ]
    for r in results:
        s = summary(r)
        won = r.hedged.get("hedge", 0)
        share = r.hedge_cost_usd / r.cost_usd if r.cost_usd else 0.0
        lines.append(
            f"  {'on' if r.hedging else 'off':>7} {len(r.ttft_ms):>8} {s['p50']:>7.0f} "
            f"{s['p95']:>7.0f} {s['p99']:>7.0f} {s['max']:>7.0f} "
            f"{s['upstream_per_request']:>12.3f} {int(s['hedges']):>13} ({won:>5}) "
            f"${r.hedge_cost_usd:.6f} ({share:.1%})"
        )
    off, on = (summary(r) for r in results)
    lines.append(
        f"  p99 {1 - on['p99'] / off['p99']:+.0%} lower with hedging; upstream requests "
        f"{on['upstream_per_request'] / off['upstream_per_request'] - 1:+.1%}"
    )
    return "\n".join(lines)


async def run(size: Size) -> list[Result]:
    return [await measure(False, size), await measure(True, size)]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    results = asyncio.run(run(size))
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"hedging-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {
        "size": asdict(size),
        "summary": [summary(r) for r in results],
        "results": [asdict(r) for r in results],
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
