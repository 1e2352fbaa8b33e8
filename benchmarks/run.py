"""``python -m benchmarks.run {all|overhead|concurrency|throughput|memory|routing|relay|startup}``:
start what the benchmarks need on 127.0.0.1, run them, stop everything by PID, and write
``results.json``, ``summary.md`` and the charts to ``benchmarks/out/<time>/``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import orjson

from . import charts, concurrency, memory, overhead, relay, report, routing, startup, throughput
from .common import FULL, SMOKE, Context, Display, checks_table, machine, parse_target
from .procs import ROOT, Pinning, pin

BENCHMARKS: dict[str, ModuleType] = {
    m.NAME: m for m in (overhead, concurrency, throughput, memory, routing, relay, startup)
}
ROUTER_SETTINGS = (
    "`model-router serve` subprocess, default production settings (probes enabled at the "
    "default 30 s interval, access log at INFO to a file, handler cancellation on), "
    "OpenAI-wire providers (openai, google, openrouter, deepseek) pointed at the simulator, "
    "requests with `model: auto` (intent parse + routing + dispatch)."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__)
    p.add_argument("benchmarks", nargs="+", choices=["all", *BENCHMARKS], help="what to run")
    p.add_argument("--smoke", action="store_true", help="tiny sizes: checks that it all works")
    p.add_argument(
        "--target",
        action="append",
        default=[],
        metavar="NAME=URL[,model=M][,key=K]",
        help="another OpenAI-compatible gateway (base URL ending in /v1), measured side by side",
    )
    p.add_argument(
        "--sim-port",
        type=int,
        default=0,
        help="fixed port for the simulator, so a --target gateway can be pointed at it",
    )
    p.add_argument("--out", type=Path, help="output folder (default benchmarks/out/<time>)")
    p.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    p.add_argument("--no-charts", action="store_true", help="skip the PNG charts")
    p.add_argument(
        "--publish",
        action="store_true",
        help="also copy the charts to benchmarks/charts/ (for RESULTS.md)",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = list(BENCHMARKS) if "all" in args.benchmarks else list(dict.fromkeys(args.benchmarks))
    try:
        extra = [parse_target(s) for s in args.target]
    except ValueError as exc:
        print(f"benchmarks: {exc}", file=sys.stderr)
        return 2
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out: Path = args.out or ROOT / "benchmarks" / "out" / stamp
    out.mkdir(parents=True, exist_ok=True)
    host = machine()  # before the driver pins itself: it reports the cores available
    pinning = Pinning.plan(not args.no_pin)
    pin(os.getpid(), pinning.load)  # the driver stays off the target's core
    display = Display()
    size = SMOKE if args.smoke else FULL
    ctx = Context(size, pinning, out, display, extra_targets=extra, sim_port=args.sim_port)
    print(
        f"benchmarks: {', '.join(names)} ({'smoke' if args.smoke else 'full'} size)",
        file=sys.stderr,
    )
    print(f"  pinning: {pinning.note}", file=sys.stderr)
    results: dict[str, Any] = {
        "machine": host,
        "size": "smoke" if args.smoke else "full",
        "pinning": pinning.note,
        "router_settings": ROUTER_SETTINGS,
        "targets": [t.name for t in extra],
        # Other work on the box skews every target alike, but widens the spread: say how busy it was.
        "load_average": {"start": [round(x, 2) for x in os.getloadavg()]},
        "benchmarks": {},
        "seconds": {},
        "checks": [],
    }
    started = time.monotonic()
    try:
        for name in names:
            t0 = time.monotonic()
            mod = BENCHMARKS[name]
            r = mod.run(ctx)
            results["benchmarks"][name] = r
            results["seconds"][name] = round(time.monotonic() - t0, 1)
            results["checks"] += [c.row() for c in mod.checks(r)]
    finally:
        ctx.close()
    results["seconds"]["total"] = round(time.monotonic() - started, 1)
    results["load_average"]["end"] = [round(x, 2) for x in os.getloadavg()]
    (out / "results.json").write_bytes(
        orjson.dumps(results, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY)
    )
    summary = report.markdown(results)
    written: list[Path] = []
    if not args.no_charts:
        if charts.available():
            written = charts.write(results, out)
            summary += "\n" + "\n".join(f"![{p.stem}](charts/{p.name})" for p in written) + "\n"
        else:
            print(
                "  charts skipped: matplotlib is not installed (pip install -e '.[bench]')",
                file=sys.stderr,
            )
    (out / "summary.md").write_text(summary)
    if args.publish and written:
        dest = ROOT / "benchmarks" / "charts"
        dest.mkdir(exist_ok=True)
        for p in written:
            shutil.copy(p, dest / p.name)
    print(checks_table(results["checks"], judged=not args.smoke))
    print(f"\nresults: {out / 'results.json'}\nsummary: {out / 'summary.md'}")
    print(f"took {results['seconds']['total']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
