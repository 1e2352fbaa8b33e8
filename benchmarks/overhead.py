"""(a) Added latency at one request at a time, against the direct call and the forwarder:
non-streaming total and streaming TTFT (zero-delay simulator), and the total time of a
64-chunk paced stream (does streaming add a per-chunk cost?).
"""

from __future__ import annotations

from typing import Any

from .common import ZERO, Check, Context, ratio, run_load, set_profile, stats

NAME = "overhead"
# Between requests: targets share a core, and one's after-answer work must not land on the next.
THINK_MS = 2.0


def _added(per: dict[str, dict[str, Any]], key: str) -> dict[str, dict[str, float]]:
    """Each target's percentile minus the direct call's: what the hop adds."""
    base = stats(per["direct"][key])
    out = {}
    for name, r in per.items():
        s = stats(r[key])
        out[name] = {"p50": s["p50"] - base["p50"], "p99": s["p99"] - base["p99"]}
    return out


def run(ctx: Context) -> dict[str, Any]:
    targets = ctx.stack()
    size = ctx.size
    sim = ctx.sim_url()
    jobs = [t.job() for t in targets]
    result: dict[str, Any] = {}

    set_profile(sim, ZERO)
    for mode, stream in (("nonstream", False), ("stream", True)):
        ctx.display.phase(f"{NAME}: {mode}, one request at a time, {size.seq_n} per target")
        cpu0 = {t.name: t.service.cpu_seconds() for t in targets if t.service}
        per = run_load(
            ctx,
            {
                "kind": "sequential",
                "targets": jobs,
                "n": size.seq_n,
                "warmup": size.seq_warmup,
                "stream": stream,
                "max_tokens": ZERO["tokens"],
                "think_ms": THINK_MS,
            },
            f"{mode} x{len(targets)}",
        )
        # CPU each process we started spent per request (the simulator's is the direct row).
        served = size.seq_n + size.seq_warmup
        cpu_us = {
            t.name: (t.service.cpu_seconds() - cpu0[t.name])
            * 1e6
            / (served * (len(targets) if t.name == "direct" else 1))
            for t in targets
            if t.service
        }
        key = "ttft_ms" if stream else "total_ms"
        section: dict[str, Any] = {
            "latency_ms": {n: stats(r[key]) for n, r in per.items()},
            "added_ms": _added(per, key),
            "errors": {n: r["errors"] for n, r in per.items() if r["errors"]},
            "samples_ms": {n: r[key] for n, r in per.items()},
        }
        section["cpu_us_per_request"] = cpu_us
        if stream:
            section["total_ms"] = {n: stats(r["total_ms"]) for n, r in per.items()}
        result[mode] = section

    paced = size.paced
    set_profile(sim, paced)
    ctx.display.phase(
        f"{NAME}: paced streams ({paced['tokens']:g} chunks, {paced['gap_ms']:g} ms apart), "
        f"one at a time per target, {size.lanes_n} each"
    )
    per = run_load(
        ctx,
        {
            "kind": "lanes",
            "targets": jobs,
            "n": size.lanes_n,
            "max_tokens": paced["tokens"],
            "stall_ms": size.stall_ms,
        },
        "paced lanes",
    )
    set_profile(sim, ZERO)
    result["paced"] = {
        "profile": paced,
        "total_ms": {n: stats(r["total_ms"]) for n, r in per.items()},
        "ttft_ms": {n: stats(r["ttft_ms"]) for n, r in per.items()},
        # First token to the end: the streaming part alone, without the TTFT (a) measures.
        "after_first_ms": {
            n: stats([t - f for t, f in zip(r["total_ms"], r["ttft_ms"], strict=True)])
            for n, r in per.items()
        },
        "stalls": {n: r["stalls"] for n, r in per.items()},
        "errors": {n: r["errors"] for n, r in per.items() if r["errors"]},
    }
    result["ratios"] = ratios(result)
    return result


def ratios(result: dict[str, Any]) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    fwd_ns = result["nonstream"]["added_ms"]["forwarder"]
    fwd_st = result["stream"]["added_ms"]["forwarder"]
    fwd_paced = result["paced"]["total_ms"]["forwarder"]
    for name in result["nonstream"]["added_ms"]:
        if name in ("direct", "forwarder"):
            continue
        ns, st = result["nonstream"]["added_ms"][name], result["stream"]["added_ms"][name]
        paced = result["paced"]["total_ms"][name]
        out[name] = {
            "nonstream_added_p50": ratio(ns["p50"], fwd_ns["p50"]),
            "nonstream_added_p99": ratio(ns["p99"], fwd_ns["p99"]),
            "ttft_added_p50": ratio(st["p50"], fwd_st["p50"]),
            "ttft_added_p99": ratio(st["p99"], fwd_st["p99"]),
            "paced_total_minus_forwarder_p50_ms": paced["p50"] - fwd_paced["p50"],
            "paced_total_minus_forwarder_mean_ms": paced["mean"] - fwd_paced["mean"],
            "paced_after_first_minus_forwarder_p50_ms": result["paced"]["after_first_ms"][name][
                "p50"
            ]
            - result["paced"]["after_first_ms"]["forwarder"]["p50"],
        }
    return out


def checks(result: dict[str, Any]) -> list[Check]:
    r = result["ratios"].get("model-router")
    if r is None:
        return []
    out = []
    for what, key in (("non-streaming", "nonstream_added"), ("streaming TTFT", "ttft_added")):
        p50, p99 = r[f"{key}_p50"], r[f"{key}_p99"]
        out.append(Check(f"(a) {what} added p50", "<= 1.25x forwarder", f"{p50:.2f}x", p50 <= 1.25))
        out.append(Check(f"(a) {what} added p99", "<= 1.5x forwarder", f"{p99:.2f}x", p99 <= 1.5))
    after = r["paced_after_first_minus_forwarder_p50_ms"]
    out.append(
        Check(
            "(a) paced stream, first token to end",
            "within 0.5 ms of forwarder (p50)",
            f"{after:+.2f} ms",
            after <= 0.5,
        )
    )
    d = r["paced_total_minus_forwarder_p50_ms"]
    out.append(
        Check(
            "(a) 64-chunk paced stream total",
            "within 0.5 ms of forwarder (p50)",
            f"{d:+.2f} ms",
            d <= 0.5,
        )
    )
    return out
