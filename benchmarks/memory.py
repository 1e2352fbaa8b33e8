"""(d) Memory: RSS of a freshly started, idle process, and RSS per open stream with many idle
streams held open. Each target is started fresh here; the simulator sends the first chunk at
once and then nothing for ten minutes, so every stream is committed and relaying, yet idle.
"""

from __future__ import annotations

import time
from typing import Any

from .common import Check, Context, Held, ratio
from .procs import Service

NAME = "memory"
IDLE_PROFILE = {"ttft_ms": 0.0, "gap_ms": 600_000.0, "tokens": 2}
WARM_STREAMS = 50


def _measure(ctx: Context, svc: Service, model: str) -> dict[str, Any]:
    time.sleep(ctx.size.settle_s)
    idle = svc.rss_kib()
    job = {
        "kind": "hold",
        "target": {"name": svc.name, "url": f"{svc.url}/v1", "model": model, "key": "x"},
        "max_tokens": IDLE_PROFILE["tokens"],
    }
    # Warm the pools and allocator once, so the per-stream figure is the marginal cost.
    Held(ctx, {**job, "n": WARM_STREAMS}, f"{svc.name} warm-up").release()
    time.sleep(ctx.size.settle_s)
    warm = svc.rss_kib()
    n = ctx.size.held
    held = Held(ctx, {**job, "n": n}, f"{svc.name} hold {n}")
    try:
        time.sleep(ctx.size.settle_s)
        loaded = svc.rss_kib()
    finally:
        released = held.release()
    return {
        "idle_rss_kib": idle,
        "warm_rss_kib": warm,
        "held_rss_kib": loaded,
        "held_streams": released.get("held", 0),
        "per_stream_kib": (loaded - warm) / n,
    }


def run(ctx: Context) -> dict[str, Any]:
    ctx.display.phase(f"{NAME}: fresh simulator (first chunk, then idle), forwarder, model-router")
    sim = ctx.start_sim(IDLE_PROFILE, name="sim-idle")
    per: dict[str, Any] = {}
    try:
        for name, start, model in (
            ("forwarder", ctx.start_forwarder, "gpt-4o-mini"),
            ("model-router", ctx.start_router, "auto"),
        ):
            svc = start(sim.url, name=f"{name}-memory")
            try:
                ctx.display.phase(
                    f"{NAME}: {name}: idle RSS, then {ctx.size.held} idle streams held"
                )
                per[name] = _measure(ctx, svc, model)
            finally:
                ctx.stop(svc)
    finally:
        ctx.stop(sim)
    fwd = per["forwarder"]
    router = per["model-router"]
    return {
        "targets": per,
        "ratios": {
            "model-router": {
                "idle_rss": ratio(router["idle_rss_kib"], fwd["idle_rss_kib"]),
                "per_stream": ratio(router["per_stream_kib"], fwd["per_stream_kib"]),
            }
        },
    }


def checks(result: dict[str, Any]) -> list[Check]:
    r = result["targets"]["model-router"]
    idle_mib = r["idle_rss_kib"] / 1024
    per = r["per_stream_kib"]
    return [
        Check("(d) idle RSS", "<= 60 MiB", f"{idle_mib:.1f} MiB", idle_mib <= 60),
        Check(
            "(d) memory per open stream",
            "<= 25 KiB",
            f"{per:.1f} KiB ({r['held_streams']} held)",
            per <= 25 and r["held_streams"] > 0,
        ),
    ]
