"""Scale-out figures (issue 16), run on its own: ``python -m benchmarks.scale_out``.

1. Requests per second, non-streaming, zero upstream delay, with ``serve --workers 1`` and
   ``--workers 2`` on this box, and the router's CPU per request (all its processes), from
   which the 8-core expectation is calculated.
2. Latency added by ``[cluster] redis_url`` at one request at a time: two routers on the
   same simulator, one with a local ``redis-server`` and one without, asked in turn.

The load generator and the simulator share the box's cores with the router: on 2 cores the
workers-2 figure is bounded by them too, which is why the 8-core figure is a calculation
from CPU per request rather than a measurement.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from . import procs
from .common import ZERO, percentile


def load(job: dict[str, Any]) -> Any:
    """One job of benchmarks.load in its own process."""
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.load"],
        input=orjson.dumps(job).decode() + "\n",
        capture_output=True,
        text=True,
        env=procs.child_env(),
        cwd=procs.ROOT,
        timeout=600,
    )
    for line in proc.stdout.splitlines():
        if line.startswith("result "):
            return orjson.loads(line[len("result ") :])
    raise RuntimeError(f"load generator failed: {proc.stderr[-2000:]}")


def family(pid: int) -> list[int]:
    """The process and its children (the workers under --workers)."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as fh:
                out += [int(c) for c in fh.read().split()]
    except OSError:
        pass
    return out


def cpu(pids: Sequence[int]) -> float:
    return sum(procs.cpu_seconds(p) for p in pids)


def target(url: str, name: str) -> dict[str, str]:
    return {"name": name, "url": f"{url}/v1", "model": "gpt-4o-mini", "key": "bench"}


def throughput(config: Path, workers: int, seconds: float, concurrency: int) -> dict[str, Any]:
    router = procs.spawn(
        f"router-w{workers}",
        [*procs.router_argv(config), "--workers", str(workers)],
        cpus=None,
        env=procs.router_env(),
        timeout=90,
    )
    try:
        pids = family(router.pid)
        load({"kind": "throughput", "target": target(router.url, "r"), "concurrency": 4,
              "duration_s": 1.0, "warmup_s": 0.5, "max_tokens": ZERO["tokens"]})  # fmt: skip
        before = cpu(pids)
        r = load(
            {
                "kind": "throughput",
                "target": target(router.url, "router"),
                "concurrency": concurrency,
                "duration_s": seconds,
                "warmup_s": 0.0,
                "max_tokens": ZERO["tokens"],
            }
        )
        used = cpu(pids) - before
        done = r["requests_per_s"] * seconds
        return {
            "workers": workers,
            "requests_per_s": round(r["requests_per_s"], 1),
            "errors": r["errors"],
            "router_cpu_s": round(used, 2),
            "router_cpu_us_per_request": round(used / done * 1e6, 1) if done else None,
            "p50_ms": round(percentile(r["total_ms"], 50), 3),
            "p99_ms": round(percentile(r["total_ms"], 99), 3),
        }
    finally:
        router.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def redis_latency(base: str, tmp: Path, n: int) -> dict[str, Any]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    redis = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    routers = []
    try:
        time.sleep(0.5)
        plain = tmp / "plain.toml"
        plain.write_text(base)
        shared = tmp / "redis.toml"
        shared.write_text(base + f'\n[cluster]\nredis_url = "redis://127.0.0.1:{port}/0"\n')
        for name, cfg in (("local", plain), ("redis", shared)):
            env = {**procs.router_env(), "STATE_DIRECTORY": str(tmp / name)}
            (tmp / name).mkdir()
            routers.append(procs.spawn(name, procs.router_argv(cfg), cpus=None, env=env))
        r = load(
            {
                "kind": "sequential",
                "targets": [target(s.url, s.name) for s in routers],
                "n": n,
                "warmup": 100,
                "stream": True,
                "max_tokens": 16,
                "think_ms": 1.0,
            }
        )
        out: dict[str, Any] = {}
        for name in ("local", "redis"):
            for what in ("ttft_ms", "total_ms"):
                values = r[name][what]
                out.setdefault(name, {})[what] = {
                    "p50": round(percentile(values, 50), 3),
                    "p99": round(percentile(values, 99), 3),
                    "n": len(values),
                }
            out[name]["errors"] = r[name]["errors"]
        out["added_ms"] = {
            what: {
                q: round(out["redis"][what][q] - out["local"][what][q], 3) for q in ("p50", "p99")
            }
            for what in ("ttft_ms", "total_ms")
        }
        return out
    finally:
        for s in routers:
            s.stop()
        redis.terminate()
        redis.wait(10)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.scale_out", description=__doc__)
    parser.add_argument("--seconds", type=float, default=8.0, help="per throughput run")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--n", type=int, default=1500, help="requests per router at c=1")
    args = parser.parse_args(argv)
    sim = procs.spawn("sim", procs.sim_argv(0.0, 0.0, int(ZERO["tokens"])), cpus=None)
    try:
        with tempfile.TemporaryDirectory() as tmpdir:
            tmp = Path(tmpdir)
            base = procs.router_config(sim.url) + "\n[usage]\nenabled = false\n"
            config = tmp / "router.toml"
            config.write_text(base)
            runs = [throughput(config, w, args.seconds, args.concurrency) for w in (1, 2)]
            per_req_s = (runs[0]["router_cpu_us_per_request"] or math.nan) / 1e6
            result = {
                "cores": os.cpu_count(),
                "throughput": runs,
                "scaling_2_over_1": round(runs[1]["requests_per_s"] / runs[0]["requests_per_s"], 2),
                # 8 workers on 8 cores given to the router alone (clients and upstreams on
                # other machines), at the CPU per request measured with one worker.
                "expected_8_core_requests_per_s": round(8 / per_req_s) if per_req_s else None,
                "redis_c1": redis_latency(base, tmp, args.n),
            }
    finally:
        sim.stop()
    print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
