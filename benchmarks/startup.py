"""(f) Time from start to ready: spawn ``model-router serve`` (a new interpreter, the catalog,
the config, the sockets) and wait for its ready line; the forwarder beside it for scale.
"""

from __future__ import annotations

from typing import Any

from .common import ZERO, Check, Context, stats

NAME = "startup"


def run(ctx: Context) -> dict[str, Any]:
    runs = ctx.size.startup_runs
    ctx.display.phase(f"{NAME}: spawn to ready line, {runs} runs each")
    sim = ctx.start_sim(ZERO, name="sim-startup")
    times: dict[str, list[float]] = {"model-router": [], "forwarder": []}
    try:
        for i in range(runs):
            for name, start in (
                ("model-router", ctx.start_router),
                ("forwarder", ctx.start_forwarder),
            ):
                svc = start(sim.url, name=f"{name}-startup")
                times[name].append(svc.startup_s * 1000)
                ctx.stop(svc)
            ctx.display.bar("spawn -> ready", i + 1, runs)
    finally:
        ctx.stop(sim)
    return {"ready_ms": {n: stats(v) for n, v in times.items()}, "samples_ms": times}


def checks(result: dict[str, Any]) -> list[Check]:
    r = result["ready_ms"]["model-router"]
    return [
        Check(
            "(f) start to ready",
            "< 1.5 s",
            f"{r['p50'] / 1000:.2f} s p50, {r['max'] / 1000:.2f} s max",
            r["max"] < 1500,
        )
    ]
