"""(c) Maximum non-streaming requests per second at zero delay, per target, from a fixed
number of closed-loop workers.
"""

from __future__ import annotations

from typing import Any

from .common import ZERO, Check, Context, ratio, run_load, set_profile, stats

NAME = "throughput"


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.stack()
    size = ctx.size
    set_profile(ctx.sim_url(), ZERO)
    per: dict[str, Any] = {}
    for t in targets:
        ctx.display.phase(
            f"{NAME}: non-streaming, {size.rps_concurrency} workers, {size.rps_s:g} s -> {t.name}"
        )
        r = run_load(
            ctx,
            {
                "kind": "throughput",
                "target": t.job(),
                "concurrency": size.rps_concurrency,
                "duration_s": size.rps_s,
                "warmup_s": size.rps_warmup_s,
                "max_tokens": ZERO["tokens"],
            },
            f"{t.name} rps",
        )
        per[t.name] = {
            "requests_per_s": r["requests_per_s"],
            "latency_ms": stats(r["total_ms"]),
            "errors": r["errors"],
            "concurrency": r["concurrency"],
        }
    fwd = per["forwarder"]["requests_per_s"]
    ratios = {
        n: ratio(r["requests_per_s"], fwd)
        for n, r in per.items()
        if n not in ("direct", "forwarder")
    }
    return {"targets": per, "ratios": ratios}


def checks(result: dict[str, Any]) -> list[Check]:
    r = result["ratios"].get("model-router")
    if r is None:
        return []
    rps = result["targets"]["model-router"]["requests_per_s"]
    return [
        Check("(c) requests per second", ">= 0.75x forwarder", f"{r:.2f}x ({rps:.0f}/s)", r >= 0.75)
    ]
