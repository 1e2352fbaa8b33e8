"""What usage logging and cost accounting add to each request.

Starts the simulated provider (zero delay) and two proxies as subprocesses on 127.0.0.1:
"off" (no usage log, no budget, no cache) and "on" (SQLite usage log, a daily budget, the
response cache: the defaults plus a budget). Then it sends streaming chat requests through
each at every concurrency level, alternating the arms round by round so drift on the box
hits both alike, and reports per-request latency and the on-minus-off difference.

    python benchmarks/accounting_overhead.py                 # 5 rounds x 400 requests
    python benchmarks/accounting_overhead.py --json --requests 50 --rounds 1

Bounded: --requests per arm, level and round; --max-seconds for the whole measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import selectors
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson

ARMS = ("off", "on")
MODEL = "gpt-5-nano"
BODY = orjson.dumps(
    {
        "model": MODEL,
        "messages": [{"role": "user", "content": "complete this line of code"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
)
PROVIDERS_OFF = ("anthropic", "google", "openrouter", "deepseek", "bedrock")


def serve_sim() -> None:
    """Child mode: the simulator with zero delay, until SIGTERM."""
    import uvloop

    from proxy.sim.launch import start_sim
    from proxy.sim.server import SimState

    async def run() -> None:
        runner, url = await start_sim(SimState(scale=0.0))
        print(f"sim ready on {url}", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await runner.cleanup()

    uvloop.run(run())


def config_text(arm: str, sim_url: str, db: Path) -> str:
    lines = [
        "[probes]",
        "enabled = false",
        "[providers.openai]",
        f'base_url = "{sim_url}/v1"',
        "enabled = true",
    ]
    for name in PROVIDERS_OFF:
        lines += [f"[providers.{name}]", "enabled = false"]
    on = arm == "on"
    lines += ["[usage]", f"enabled = {str(on).lower()}", f'path = "{db}"']
    lines += ["[cache]", f"enabled = {str(on).lower()}"]
    lines += ["[budget]", f"daily_usd = {1_000_000.0 if on else 0.0}"]
    return "\n".join(lines) + "\n"


def spawn(
    args: list[str], env: dict[str, str], log: Path, timeout: float = 30.0
) -> tuple[subprocess.Popen[bytes], str]:
    """Start a child that prints '... ready on URL'; returns it and the URL."""
    proc = subprocess.Popen(
        args, stdout=subprocess.PIPE, stderr=log.open("wb"), env=env, start_new_session=True
    )
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{args[1:3]} exited {proc.returncode}; see {log}")
        if sel.select(timeout=0.2):
            line = proc.stdout.readline().decode()
            if "ready on " in line:
                return proc, line.split("ready on ")[1].split()[0]
    stop(proc)
    raise RuntimeError(f"{args[1:3]} did not become ready; see {log}")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()


async def one(session: aiohttp.ClientSession, url: str) -> float:
    started = time.perf_counter()
    async with session.post(url, data=BODY, headers={"Content-Type": "application/json"}) as resp:
        body = await resp.read()
    elapsed = time.perf_counter() - started
    if resp.status != 200 or not body.endswith(b"data: [DONE]\n\n"):
        raise RuntimeError(f"bad answer {resp.status}: {body[:200]!r}")
    return elapsed


async def measure(
    session: aiohttp.ClientSession, url: str, requests: int, concurrency: int, deadline: float
) -> tuple[list[float], float]:
    """``requests`` requests, ``concurrency`` at a time; returns latencies (s) and wall time."""
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            latencies.append(await one(session, url))

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, time.perf_counter() - started


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(p / 100 * len(ordered)) - 1))]


async def bench(
    urls: dict[str, str], requests: int, rounds: int, levels: list[int], max_seconds: float
) -> dict[str, Any]:
    deadline = time.monotonic() + max_seconds
    samples: dict[tuple[str, int], list[float]] = {(a, c): [] for a in ARMS for c in levels}
    round_p50: dict[tuple[str, int], list[float]] = {(a, c): [] for a in ARMS for c in levels}
    wall: dict[tuple[str, int], float] = {(a, c): 0.0 for a in ARMS for c in levels}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        for arm in ARMS:  # warm up both: connections, caches, first-request costs
            await measure(session, urls[arm], max(20, max(levels)), max(levels), deadline)
        for r in range(rounds):
            for c in levels:
                order = ARMS if r % 2 == 0 else ARMS[::-1]
                for arm in order:
                    lat, took = await measure(session, urls[arm], requests, c, deadline)
                    if lat:
                        samples[arm, c] += lat
                        round_p50[arm, c].append(statistics.median(lat))
                        wall[arm, c] += took
    results = []
    for c in levels:
        row: dict[str, Any] = {"concurrency": c}
        for arm in ARMS:
            lat = samples[arm, c]
            row[arm] = {
                "requests": len(lat),
                "p50_ms": round(statistics.median(lat) * 1e3, 3),
                "p95_ms": round(pct(lat, 95) * 1e3, 3),
                "mean_ms": round(statistics.fmean(lat) * 1e3, 3),
                "rps": round(len(lat) / wall[arm, c], 1) if wall[arm, c] else None,
                # Spread of the per-round medians: how much the same arm moves on its own.
                "round_p50_spread_ms": round(
                    (max(round_p50[arm, c]) - min(round_p50[arm, c])) * 1e3, 3
                ),
            }
        row["added_p50_ms"] = round(row["on"]["p50_ms"] - row["off"]["p50_ms"], 3)
        row["added_mean_ms"] = round(row["on"]["mean_ms"] - row["off"]["mean_ms"], 3)
        row["added_p50_pct"] = round(100 * row["added_p50_ms"] / row["off"]["p50_ms"], 1)
        row["noise_ms"] = max(row["off"]["round_p50_spread_ms"], row["on"]["round_p50_spread_ms"])
        results.append(row)
    return {"levels": results, "timed_out": time.monotonic() >= deadline}


def child_env(state_dir: str) -> dict[str, str]:
    """No real credentials reach the children: only the simulator's dummy key."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("AWS_")
    }
    env |= {
        "OPENAI_API_KEY": "sim-key",
        "STATE_DIRECTORY": state_dir,
        "MODEL_ROUTER_LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    return env


def run(args: argparse.Namespace) -> dict[str, Any]:
    levels = [int(c) for c in args.concurrency.split(",")]
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="accounting-bench-") as tmp:
        tmpdir = Path(tmp)
        env = child_env(tmp)
        try:
            sim, sim_url = spawn([sys.executable, __file__, "--serve-sim"], env, tmpdir / "sim.log")
            procs.append(sim)
            urls = {}
            for arm in ARMS:
                cfg = tmpdir / f"{arm}.toml"
                cfg.write_text(config_text(arm, sim_url, tmpdir / f"{arm}.db"))
                proxy, url = spawn(
                    [sys.executable, "-m", "proxy", "serve", "--config", str(cfg), "--port", "0"],
                    env,
                    tmpdir / f"{arm}.log",
                )
                procs.append(proxy)
                urls[arm] = f"{url}/v1/chat/completions"
            result = asyncio.run(bench(urls, args.requests, args.rounds, levels, args.max_seconds))
        finally:
            for proc in reversed(procs):
                stop(proc)  # SIGTERM: the "on" proxy flushes its usage log
        conn = sqlite3.connect(tmpdir / "on.db")
        result["on_rows_logged"] = conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0]
        conn.close()
        result["off_db_created"] = (tmpdir / "off.db").exists()
    result["settings"] = {
        "requests": args.requests,
        "rounds": args.rounds,
        "concurrency": levels,
        "cpus": os.cpu_count(),
    }
    return result


def render(result: dict[str, Any]) -> str:
    lines = [
        f"accounting overhead: streaming chat via {MODEL}, simulator at zero delay, "
        f"{result['settings']['rounds']} rounds x {result['settings']['requests']} requests "
        f"per arm and level, {result['settings']['cpus']} CPUs",
        f"{'c':>3}  {'arm':<4} {'p50 ms':>8} {'p95 ms':>8} {'mean ms':>8} {'req/s':>8}",
    ]
    for row in result["levels"]:
        for arm in ARMS:
            a = row[arm]
            lines.append(
                f"{row['concurrency']:>3}  {arm:<4} {a['p50_ms']:>8.3f} {a['p95_ms']:>8.3f} "
                f"{a['mean_ms']:>8.3f} {a['rps']:>8}"
            )
        lines.append(
            f"     added by accounting: p50 {row['added_p50_ms']:+.3f} ms "
            f"({row['added_p50_pct']:+.1f}%), mean {row['added_mean_ms']:+.3f} ms; "
            f"round-to-round p50 spread {row['noise_ms']:.3f} ms"
        )
    lines.append(f"rows in the 'on' usage log: {result['on_rows_logged']}")
    if result["timed_out"]:
        lines.append("(stopped at --max-seconds; fewer requests than asked)")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400, help="per arm, level and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,64", help="comma-separated levels")
    parser.add_argument("--max-seconds", type=float, default=240.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--serve-sim", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_sim:
        serve_sim()
        return 0
    result = run(args)
    print(
        orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() if args.json else render(result)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
