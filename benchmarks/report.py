"""A run's results as Markdown tables (the figures section of RESULTS.md)."""

from __future__ import annotations

from typing import Any

from .common import checks_table


def _f(x: float, nd: int = 2) -> str:
    return "n/a" if x != x else f"{x:.{nd}f}"  # NaN


def _x(x: float | None) -> str:
    return "" if x is None or x != x else f"{x:.2f}x"


def overhead(r: dict[str, Any]) -> list[str]:
    out = ["### (a) Added latency, one request at a time (zero-delay simulator, 64 chunks)", ""]
    ratios = r.get("ratios", {})
    for mode, title, rkey in (
        ("nonstream", "non-streaming total", "nonstream_added"),
        ("stream", "streaming TTFT", "ttft_added"),
    ):
        sec = r[mode]
        out += [
            f"{title} (ms; added = target minus direct; ratio = added / forwarder's added)",
            "",
            "| target | p50 | p99 | added p50 | added p99 | ratio p50 | ratio p99 |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in sec["latency_ms"].items():
            a = sec["added_ms"][name]
            rr = ratios.get(name, {})
            out.append(
                f"| {name} | {_f(s['p50'], 3)} | {_f(s['p99'], 3)} | {_f(a['p50'], 3)} | "
                f"{_f(a['p99'], 3)} | {_x(rr.get(rkey + '_p50'))} | {_x(rr.get(rkey + '_p99'))} |"
            )
        out.append("")
    cpu = {m: r[m].get("cpu_us_per_request", {}) for m in ("nonstream", "stream")}
    if cpu["stream"]:
        out += [
            "CPU time per request of each process we started (us; direct = the simulator, "
            "per request it served)",
            "",
            "| process | non-streaming | streaming (64 chunks) |",
            "|---|---|---|",
        ]
        for name in cpu["stream"]:
            out.append(
                f"| {name} | {cpu['nonstream'].get(name, 0):.0f} | {cpu['stream'][name]:.0f} |"
            )
        out.append("")
    paced = r["paced"]["total_ms"]
    prof = r["paced"]["profile"]
    out += [
        f"{prof['tokens']:g}-chunk paced stream ({prof['gap_ms']:g} ms apart), one at a time, total time, ms",
        "",
        "| target | p50 | mean | p99 | minus forwarder (p50) | TTFT p50 | first token to end p50 | minus forwarder | stalls |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    after = r["paced"].get("after_first_ms", {})
    ttft = r["paced"].get("ttft_ms", {})
    nan = float("nan")
    for name, s in paced.items():
        d = s["p50"] - paced["forwarder"]["p50"]
        a = after.get(name, {}).get("p50", nan)
        da = a - after.get("forwarder", {}).get("p50", nan)
        out.append(
            f"| {name} | {_f(s['p50'])} | {_f(s['mean'])} | {_f(s['p99'])} | {d:+.2f} | "
            f"{_f(ttft.get(name, {}).get('p50', nan))} | {_f(a)} | {da:+.2f} | "
            f"{r['paced']['stalls'][name]} |"
        )
    return [*out, ""]


def concurrency(r: dict[str, Any]) -> list[str]:
    prof = r["paced"]
    out = [
        f"### (b) Concurrent paced streams ({prof['tokens']:g} chunks, {prof['gap_ms']:g} ms apart; "
        f"stall = gap > {r['stall_ms']:g} ms)",
        "",
        "| streams | target | TTFT p50 ms | TTFT p99 ms | p99 vs forwarder | stalls | max gap ms | streams/s | errors | CPU us/chunk |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    levels = r["levels"]
    names = list(levels)
    all_levels = sorted({int(c) for by in levels.values() for c in by})
    for c in all_levels:
        for name in names:
            s = levels[name].get(str(c))
            if s is None:
                continue
            rr = r["ratios"].get(name, {}).get(str(c), {}).get("ttft_p99")
            errors = sum(s["errors"].values())
            out.append(
                f"| {c} | {name} | {_f(s['ttft_ms']['p50'])} | {_f(s['ttft_ms']['p99'])} | "
                f"{_x(rr)} | {s['stalls']} | {_f(s['max_gap_ms'], 1)} | {_f(s['streams_per_s'], 1)} | {errors} | "
                f"{'' if s.get('cpu_us_per_chunk') is None else _f(s['cpu_us_per_chunk'], 1)} |"
            )
    return [*out, ""]


def throughput(r: dict[str, Any]) -> list[str]:
    out = [
        "### (c) Non-streaming requests per second, zero delay",
        "",
        "| target | workers | requests/s | vs forwarder | latency p50 ms | p99 ms | errors |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in r["targets"].items():
        out.append(
            f"| {name} | {s['concurrency']} | {s['requests_per_s']:.0f} | {_x(r['ratios'].get(name))} | "
            f"{_f(s['latency_ms']['p50'])} | {_f(s['latency_ms']['p99'])} | {sum(s['errors'].values())} |"
        )
    return [*out, ""]


def memory(r: dict[str, Any]) -> list[str]:
    out = [
        "### (d) Memory (VmRSS)",
        "",
        "| target | idle MiB | warm MiB | with streams held MiB | streams held | KiB per stream |",
        "|---|---|---|---|---|---|",
    ]
    for name, s in r["targets"].items():
        out.append(
            f"| {name} | {s['idle_rss_kib'] / 1024:.1f} | {s['warm_rss_kib'] / 1024:.1f} | "
            f"{s['held_rss_kib'] / 1024:.1f} | {s['held_streams']} | {s['per_stream_kib']:.1f} |"
        )
    return [*out, ""]


def routing(r: dict[str, Any]) -> list[str]:
    out = [
        f"### (e) Routing decision, {r['models']} models / {r['deployments']} deployments (us)",
        "",
        "| what | p50 | p99 | max |",
        "|---|---|---|---|",
    ]
    for label, s in (
        ("plan(), all intents", r["plan_us"]),
        ("health snapshot rebuild (at most once per 50 ms)", r["snapshot_rebuild_us"]),
        ("request body: orjson.loads + parse_intent + forwarded_body", r["parse_intent_us"]),
    ):
        out.append(f"| {label} | {_f(s['p50'], 1)} | {_f(s['p99'], 1)} | {_f(s['max'], 1)} |")
    out += [
        "",
        "<details><summary>plan() per intent</summary>",
        "",
        "| intent | p50 | p99 |",
        "|---|---|---|",
    ]
    for label, s in r["plan_us_by_intent"].items():
        out.append(f"| {label} | {_f(s['p50'], 1)} | {_f(s['p99'], 1)} |")
    return [*out, "", "</details>", ""]


def relay(r: dict[str, Any]) -> list[str]:
    return [
        f"### Relay cost per chunk (in-process; {r['events_per_stream']} events of ~{r['bytes_per_event']:.0f} bytes)",
        "",
        "| what | p50 us/chunk | p99 us/chunk |",
        "|---|---|---|",
        *(
            f"| {label} | {_f(r[key]['p50'], 2)} | {_f(r[key]['p99'], 2)} |"
            for label, key in (
                ("SSERelay.feed, one event per read (paced)", "feed_us_per_chunk"),
                (
                    "SSERelay.feed, the whole stream in one read (zero delay)",
                    "feed_batched_us_per_chunk",
                ),
                ("framing alone", "framing_only_us_per_chunk"),
                ("orjson.loads alone", "orjson_loads_us_per_chunk"),
            )
        ),
        "",
    ]


def startup(r: dict[str, Any]) -> list[str]:
    out = ["### (f) Spawn to ready line (ms)", "", "| process | p50 | max |", "|---|---|---|"]
    for name, s in r["ready_ms"].items():
        out.append(f"| {name} | {s['p50']:.0f} | {s['max']:.0f} |")
    return [*out, ""]


SECTIONS = {
    "overhead": overhead,
    "concurrency": concurrency,
    "throughput": throughput,
    "memory": memory,
    "routing": routing,
    "relay": relay,
    "startup": startup,
}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [
        f"Run {m['date_utc']}, commit `{m['commit']}`, {m['cpu']} ({m['cores']} cores, "
        f"{m['memory_gib']} GiB), Linux {m['kernel']}, Python {m['python']}, size `{results['size']}`.",
        f"Pinning: {results['pinning']}. Load average (1/5/15 min) at start "
        f"{results['load_average']['start']}, at end {results['load_average'].get('end')}; "
        f"took {results['seconds'].get('total', 0):.0f} s.",
        f"model-router: {results['router_settings']}",
        "",
        checks_table(results["checks"], judged=results["size"] != "smoke"),
        "",
    ]
    for name, r in results["benchmarks"].items():
        lines += SECTIONS[name](r)
    return "\n".join(lines)
