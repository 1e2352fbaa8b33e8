"""CPU per request and per relayed chunk of two model-router builds and the forwarder, in
interleaved rounds against one simulator: the before/after check for a change to the request
path, on a machine whose speed drifts between runs.

    git worktree add /tmp/before <commit>
    python -m benchmarks.compare --before /tmp/before            # ~2 min on 2 cores

Each round sends ``--n`` sequential non-streaming requests (``model: "auto"``) to each target,
then ``--streams`` concurrent paced streams (64 chunks, 20 ms apart); CPU is read from
/proc/PID/stat around each. The figures are the medians over rounds, and their ratio to the
forwarder's. Targets are pinned to the first core, the simulator and this client to the
second. The "before" checkout runs with this checkout's interpreter, so it needs the same
dependencies. Per chunk includes each stream's own per-request work, spread over its chunks.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

import aiohttp
import uvloop

from . import procs
from .common import ZERO, set_profile
from .opcodes import PROMPT

PACED = {"ttft_ms": 0.0, "gap_ms": 20.0, "tokens": 64}
HZ = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


async def sequential(url: str, model: str, n: int) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}]}
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                await resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}")


async def paced(url: str, model: str, streams: int) -> int:
    """``streams`` concurrent streams read to the end; returns the content chunks received."""
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def one() -> int:
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                return sum([line.startswith(b'data: {"') async for line in resp.content])

        return sum(await asyncio.gather(*(one() for _ in range(streams))))


def router(name: str, root: Path, sim_url: str, tmp: Path) -> procs.Service:
    config = tmp / f"{name}.toml"
    config.write_text(procs.router_config(sim_url))
    env = {**procs.router_env(), "PYTHONPATH": str(root)}
    argv = [sys.executable, "-m", "proxy", "serve", "--config", str(config), "--port", "0"]
    # Run from its own checkout: ``-m proxy`` imports the package in the working folder first.
    return procs.spawn(name, argv, cpus=frozenset({0}), env=env, cwd=root)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="the other checkout")
    parser.add_argument("--n", type=int, default=2000, help="non-streaming requests a round")
    parser.add_argument("--streams", type=int, default=64, help="paced streams a round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        sys.exit("needs two cores: targets on one, the simulator and the client on the other")
    os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[1]})
    sim_cpus = frozenset(os.sched_getaffinity(0))
    services: dict[str, tuple[procs.Service, str]] = {}
    with tempfile.TemporaryDirectory(prefix="mr-compare-") as tmp:
        sim = procs.spawn("sim", procs.sim_argv(), cpus=sim_cpus)
        try:
            fwd = procs.spawn("forwarder", procs.forwarder_argv(sim.url), cpus=frozenset({0}))
            services["forwarder"] = (fwd, "gpt-4o-mini")
            services["before"] = (
                router("before", args.before.resolve(), sim.url, Path(tmp)),
                "auto",
            )
            services["after"] = (router("after", procs.ROOT, sim.url, Path(tmp)), "auto")
            per_request: dict[str, list[float]] = {name: [] for name in services}
            per_chunk: dict[str, list[float]] = {name: [] for name in services}
            set_profile(sim.url, ZERO)
            for svc, model in services.values():
                uvloop.run(sequential(svc.url, model, 300))  # warm: pools, caches
            for r in range(args.rounds):
                set_profile(sim.url, ZERO)
                for name, (svc, model) in services.items():
                    start = cpu_s(svc.pid)
                    uvloop.run(sequential(svc.url, model, args.n))
                    per_request[name].append((cpu_s(svc.pid) - start) * 1e6 / args.n)
                set_profile(sim.url, PACED)
                for name, (svc, model) in services.items():
                    start = cpu_s(svc.pid)
                    chunks = uvloop.run(paced(svc.url, model, args.streams))
                    per_chunk[name].append((cpu_s(svc.pid) - start) * 1e6 / max(chunks, 1))
                print(
                    f"round {r + 1}: "
                    + "  ".join(
                        f"{n} {per_request[n][-1]:.0f} us/request {per_chunk[n][-1]:.1f} us/chunk"
                        for n in services
                    ),
                    flush=True,
                )
        finally:
            for svc, _ in services.values():
                svc.stop()
            sim.stop()
    floor_req = statistics.median(per_request["forwarder"])
    floor_chunk = statistics.median(per_chunk["forwarder"])
    print(f"medians of {args.rounds} rounds (ratio to the forwarder):")
    for name in services:
        req, chunk = statistics.median(per_request[name]), statistics.median(per_chunk[name])
        print(
            f"  {name:<9} {req:6.0f} us per request ({ratio(req, floor_req)})  "
            f"{chunk:5.1f} us per relayed chunk ({ratio(chunk, floor_chunk)})"
        )


def ratio(value: float, floor: float) -> str:
    """``1.21x``; "n/a" when the forwarder used less than one clock tick (10 ms) of CPU, as
    a tiny run can."""
    return f"{value / floor:.2f}x" if floor > 0 else "n/a"


if __name__ == "__main__":
    main()
