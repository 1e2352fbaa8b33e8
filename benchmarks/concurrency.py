"""(b) A sweep of concurrent paced streams (64 chunks, 20 ms apart): TTFT, stalls (a gap
over twice the pacing) and streams per second, per target and level.
"""

from __future__ import annotations

from typing import Any

from .common import ZERO, Check, Context, ratio, run_load, set_profile, stats

NAME = "concurrency"


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.stack()
    size = ctx.size
    paced = size.paced
    # One stream lasts ~(tokens - 1) x gap; worker starts are spread over that so load is steady.
    stream_s = (paced["tokens"] - 1) * paced["gap_ms"] / 1e3
    set_profile(ctx.sim_url(), paced)
    levels: dict[str, dict[str, Any]] = {t.name: {} for t in targets}
    try:
        for c in size.levels:
            for t in targets:
                ctx.display.phase(f"{NAME}: {c} concurrent paced streams -> {t.name}")
                cpu0 = t.service.cpu_seconds() if t.service else None
                r = run_load(
                    ctx,
                    {
                        "kind": "concurrent",
                        "target": t.job(),
                        "concurrency": c,
                        "ramp_s": stream_s if c > 1 else 0.0,
                        "duration_s": max(size.level_s, stream_s) if c > 1 else size.level_s,
                        "max_tokens": paced["tokens"],
                        "stall_ms": size.stall_ms,
                    },
                    f"{t.name} c={c}",
                )
                # CPU the target spent per relayed chunk (its per-request work included): a
                # figure that other load on the machine disturbs less than latency.
                chunks = max(r["count"], 1) * (paced["tokens"] + 4)  # role, finish, usage, DONE
                cpu_us = (
                    (t.service.cpu_seconds() - cpu0) * 1e6 / chunks
                    if t.service and cpu0 is not None
                    else None
                )
                levels[t.name][str(c)] = {
                    "cpu_us_per_chunk": cpu_us,
                    "ttft_ms": stats(r["ttft_ms"]),
                    "total_ms": stats(r["total_ms"]),
                    "stalls": r["stalls"],
                    "max_gap_ms": r["max_gap_ms"],
                    "streams": r["ok"],
                    "errors": r["errors"],
                    "streams_per_s": r["streams_per_s"],
                }
    finally:
        set_profile(ctx.sim_url(), ZERO)
    result: dict[str, Any] = {"levels": levels, "stall_ms": size.stall_ms, "paced": paced}
    result["ratios"] = {}
    fwd = levels.get("forwarder", {})
    for name, by_level in levels.items():
        if name in ("direct", "forwarder"):
            continue
        result["ratios"][name] = {
            c: {
                "ttft_p99": ratio(r["ttft_ms"]["p99"], fwd[c]["ttft_ms"]["p99"]),
                "ttft_p50": ratio(r["ttft_ms"]["p50"], fwd[c]["ttft_ms"]["p50"]),
                "streams_per_s": ratio(r["streams_per_s"], fwd[c]["streams_per_s"]),
            }
            for c, r in by_level.items()
            if c in fwd
        }
    return result


def checks(result: dict[str, Any]) -> list[Check]:
    levels = result["levels"].get("model-router")
    if not levels:
        return []
    top = max(levels, key=int)
    r = levels[top]
    ratio_p99 = result["ratios"]["model-router"][top]["ttft_p99"]
    errors = sum(r["errors"].values())
    return [
        Check(
            f"(b) {top} concurrent streams: stalls",
            f"zero stalls (gap > {result['stall_ms']:g} ms), zero errors",
            f"{r['stalls']} stalls, {errors} errors in {r['streams']} streams",
            r["stalls"] == 0 and errors == 0,
        ),
        Check(
            f"(b) {top} concurrent streams: TTFT p99",
            "<= 2x forwarder",
            f"{ratio_p99:.2f}x ({r['ttft_ms']['p99']:.1f} ms)",
            ratio_p99 <= 2.0,
        ),
    ]
