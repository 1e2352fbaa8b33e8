"""Latency-shift replay: how fast does prefer=fast follow the fastest model, and what does the
lag cost? The real proxy (its own process, uvloop, production server settings, probes on)
routes ``auto:fast`` streams among a few simulated models whose TTFTs change on a schedule.

    python -m benchmarks.latency_shift            # ~45 s
    python -m benchmarks.latency_shift --smoke    # tiny, for the test suite

Per shift of the best model, labelled a *slowdown* (the best model got slower; traffic must leave
it), a *recovery* (the new best got faster, or came back from a slowdown) or *both* at once:
time to switch (from the shift to the first request of the run of
requests that goes to the new best and stays there), in seconds, in probe intervals and in live
requests sent meanwhile ("blind": of those, the ones sent before any answer sent after the shift
came back, which no router could have placed better), and that shift's share of the regret. Over the run: regret = mean TTFT of the model each request went to /
mean TTFT of the best model when it was sent (both as the simulator was set; "measured" uses
the client's own TTFT instead, so it includes the proxy and loopback). Output: a table, and
JSON in ``benchmarks/out/``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import random
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from proxy.sim.catalogs import only_models, sim_model, upstream_id
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState

from . import procs
from .common import stream_once

OUT = Path(__file__).resolve().parent / "out"
GAP_MS = 5.0
TOKENS = 4
BASELINE = {"m-a": 80.0, "m-b": 150.0, "m-c": 220.0, "m-d": 300.0}
# The catalog's nominal TTFTs are guesses, usually not the latency a provider shows today; here
# each is 1.5x the model's real baseline, so a model that recovers must outweigh its (higher)
# nominal as well as its slow spell.
NOMINAL_SKEW = 1.5
# Each phase changes some TTFTs from the previous one; together they move the best model
# every way it can move: the chosen one slows, a probed-only one gets faster, both at once,
# and everything returns to the start.
PHASES: tuple[dict[str, float], ...] = (
    {},
    {"m-a": 400.0},
    {"m-c": 60.0},
    {"m-a": 80.0, "m-c": 500.0},
    {"m-b": 40.0},
    BASELINE,
)


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    interval_s: float
    half_life_s: float
    p90_weight: float = 0.5
    jitter: float = 0.1
    shift_samples: int = 2


@dataclass(frozen=True, slots=True)
class Size:
    warmup_s: float
    phase_s: float
    workers: int
    think_s: float
    phases: int


FULL = Size(warmup_s=3.0, phase_s=6.0, workers=2, think_s=0.03, phases=len(PHASES))
SMOKE = Size(warmup_s=0.6, phase_s=1.0, workers=1, think_s=0.02, phases=3)
# The shipped defaults (30 s interval, 300 s half-life, live_quiet_s one interval) at 1/60 of
# the time: a 6 s phase stands for 6 minutes of a provider's latency staying put.
SETUPS = (Setup("shipped-ratio", interval_s=0.5, half_life_s=5.0),)
SMOKE_SETUPS = (Setup("smoke", interval_s=0.1, half_life_s=0.2),)


@dataclass(slots=True)
class Sample:
    sent_s: float  # since the first phase began
    model: str
    ttft_ms: float  # at the client: request sent -> first chunk with text
    chosen_ms: float  # the chosen model's TTFT as the simulator was set
    best_ms: float
    best: str


@dataclass(slots=True)
class Shift:
    at_s: float
    phase: int
    best: str
    kind: str  # "slowdown", "recovery", or "both" at once (phase 3)
    switch_s: float | None = None
    intervals: float | None = None
    live_requests: int | None = None
    # Its share of the run's regret: the requests before the switch, and how many of those were
    # sent before any answer sent after the shift could have come back (no router can avoid
    # those: nothing it measures has changed yet).
    regret: float = 0.0
    blind_requests: int = 0
    blind_regret: float = 0.0


@dataclass(slots=True)
class Result:
    setup: Setup
    shifts: list[Shift] = field(default_factory=list)
    requests: int = 0
    regret: float = 0.0
    regret_measured: float = 0.0
    # regret - 1 split: while switching (the shifts' share, see Shift.regret) and the rest
    # (choosing a model other than the best once the switch was made, or in a phase with no
    # shift); regret_measured - regret is the proxy, loopback and client, not routing.
    regret_switching: float = 0.0
    regret_blind: float = 0.0  # of regret_switching, the blind requests' (a floor for any router)
    regret_steady: float = 0.0
    on_best: float = 0.0
    probes: dict[str, Any] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)


def schedule(size: Size) -> list[dict[str, float]]:
    """The full TTFT table in force during each phase."""
    current = dict(BASELINE)
    out = []
    for change in PHASES[: size.phases]:
        current.update(change)
        out.append(dict(current))
    return out


def config_data(setup: Setup) -> dict[str, Any]:
    models = [sim_model(m, nominal_ttft_ms=ttft * NOMINAL_SKEW) for m, ttft in BASELINE.items()]
    return {
        **only_models(*models),
        "probes": {
            "interval_s": setup.interval_s,
            "jitter": setup.jitter,
            "half_life_s": setup.half_life_s,
            "p90_weight": setup.p90_weight,
            "timeout_s": 2.0,
            "live_quiet_s": setup.interval_s,
            "shift_samples": setup.shift_samples,
            # Unpaced: at these intervals a $1 cap would stretch them.
            "max_daily_spend_usd": 10_000.0,
        },
    }


def serve_proxy(
    data: dict[str, Any], sim_url: str, conn: multiprocessing.connection.Connection
) -> None:
    """The proxy's own process: the production server on a uvloop loop, until told to stop."""
    import uvloop

    from proxy.app import make_app, start_server
    from proxy.assembly.demo import demo_config
    from proxy.config import parse_config

    async def main() -> None:
        with procs.private_state() as state:
            env = {"OPENROUTER_API_KEY": "bench", "STATE_DIRECTORY": state}
            app = make_app(demo_config(parse_config(data), sim_url), environ=env)
            runner, port = await start_server(app, "127.0.0.1", 0)
            conn.send(port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


async def replay(setup: Setup, size: Size) -> Result:
    state = SimState()
    sim_runner, sim_url = await start_sim(state)
    table = schedule(size)

    def apply(ttfts: dict[str, float]) -> None:
        for model, ttft in ttfts.items():
            state.profiles[upstream_id(model)] = Profile(ttft_ms=ttft, gap_ms=GAP_MS, tokens=TOKENS)

    apply(table[0])
    ctx = multiprocessing.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=serve_proxy, args=(config_data(setup), sim_url, theirs), daemon=True)
    proc.start()
    try:
        loop = asyncio.get_running_loop()
        port = await loop.run_in_executor(None, _recv_port, ours, proc)
        url = f"http://127.0.0.1:{port}"
        return await _drive(setup, size, table, apply, url)
    finally:
        ours.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()  # by its own handle, i.e. its PID
            proc.join(5)
        await sim_runner.cleanup()


def _recv_port(conn: multiprocessing.connection.Connection, proc: Any) -> int:
    if not conn.poll(30):
        raise RuntimeError(f"the proxy did not start (exit code {proc.exitcode})")
    port: int = conn.recv()
    return port


async def _drive(
    setup: Setup, size: Size, table: list[dict[str, float]], apply: Any, url: str
) -> Result:
    samples: list[Sample] = []
    loop = asyncio.get_running_loop()
    phase = 0
    started = loop.time() + size.warmup_s
    end = started + size.phase_s * len(table)

    async def worker(session: aiohttp.ClientSession, seed: int) -> None:
        rng = random.Random(seed)  # jittered think times keep the workers out of step
        while loop.time() < end:
            now = loop.time()
            ttfts = table[phase]
            model, ttft = await stream_once(session, url)
            if now >= started:
                best = min(ttfts, key=lambda m: (ttfts[m], m))
                samples.append(Sample(now - started, model, ttft, ttfts[model], ttfts[best], best))
            await asyncio.sleep(size.think_s * rng.uniform(0.5, 1.5))

    async def conductor() -> None:
        nonlocal phase
        await asyncio.sleep(size.warmup_s)
        for i in range(1, len(table)):
            await asyncio.sleep(max(0.0, started + i * size.phase_s - loop.time()))
            phase = i
            apply(table[i])

    async with aiohttp.ClientSession() as session:
        await asyncio.gather(conductor(), *(worker(session, i) for i in range(size.workers)))
        async with session.get(f"{url}/v1/router/status") as resp:
            probes = orjson.loads(await resp.read())["probes"]
    return score(setup, size, table, samples, probes)


def score(
    setup: Setup,
    size: Size,
    table: list[dict[str, float]],
    samples: list[Sample],
    probes: dict[str, Any],
) -> Result:
    result = Result(setup, requests=len(samples), probes=probes, samples=samples)
    if not samples:
        return result
    best_total = sum(s.best_ms for s in samples)
    result.regret = sum(s.chosen_ms for s in samples) / best_total
    result.regret_measured = sum(s.ttft_ms for s in samples) / best_total
    result.on_best = sum(s.model == s.best for s in samples) / len(samples)
    for i in range(1, len(table)):
        before = min(table[i - 1], key=lambda m: (table[i - 1][m], m))
        best = min(table[i], key=lambda m: (table[i][m], m))
        if best == before:
            continue
        at = i * size.phase_s
        faster = table[i][best] < table[i - 1][best]
        slower = table[i][before] > table[i - 1][before]
        kind = "both" if faster and slower else "recovery" if faster else "slowdown"
        shift = Shift(at, i, best, kind)
        window = [s for s in samples if at <= s.sent_s < at + size.phase_s]
        # The switch is the first request of the final run that goes to the new best.
        settled = len(window)
        while settled > 0 and window[settled - 1].model == best:
            settled -= 1
        if settled < len(window):
            shift.switch_s = max(0.0, window[settled].sent_s - at)
            shift.intervals = shift.switch_s / setup.interval_s
            shift.live_requests = settled
        delayed = window[:settled]
        shift.regret = sum(s.chosen_ms - s.best_ms for s in delayed) / best_total
        first_back = min((s.sent_s + s.ttft_ms / 1000 for s in window), default=at)
        blind = [s for s in delayed if s.sent_s < first_back]
        shift.blind_requests = len(blind)
        shift.blind_regret = sum(s.chosen_ms - s.best_ms for s in blind) / best_total
        result.shifts.append(shift)
    result.regret_switching = sum(sh.regret for sh in result.shifts)
    result.regret_blind = sum(sh.blind_regret for sh in result.shifts)
    result.regret_steady = result.regret - 1.0 - result.regret_switching
    return result


def report(results: Sequence[Result]) -> str:
    lines = []
    for r in results:
        s = r.setup
        lines.append(
            f"\n{s.name}: interval {s.interval_s:g} s, half-life {s.half_life_s:g} s, "
            f"p90 weight {s.p90_weight:g}, jitter {s.jitter:g}, shift samples {s.shift_samples}"
        )
        lines.append(
            f"  {'phase':>5} {'kind':>9} {'new best':>9} {'switch s':>9} {'intervals':>9} "
            f"{'live req':>8} {'blind':>5} {'regret':>7}"
        )
        for sh in r.shifts:
            head = f"  {sh.phase:>5} {sh.kind:>9} {sh.best:>9}"
            tail = f"{sh.blind_requests:>5} {sh.regret:>+7.3f}"
            if sh.switch_s is None:
                lines.append(f"{head} {'never':>9} {'-':>9} {'-':>8} {tail}")
            else:
                lines.append(
                    f"{head} {sh.switch_s:>9.2f} {sh.intervals:>9.1f} {sh.live_requests:>8} {tail}"
                )
        for kind in ("slowdown", "recovery", "both"):
            of_kind = [sh for sh in r.shifts if sh.kind == kind]
            if not of_kind:
                continue
            worst = [sh.intervals for sh in of_kind]
            text = (
                "never (in at least one)"
                if None in worst
                else f"worst {max(i for i in worst if i is not None):.1f} intervals"
            )
            lines.append(f"  {kind} shifts ({len(of_kind)}): {text}")
        lines.append(
            f"  regret {r.regret:.3f} (measured at the client {r.regret_measured:.3f}); "
            f"{r.on_best:.0%} of {r.requests} requests on the best model; "
            f"probes sent {r.probes.get('sent')} ({r.probes.get('hurried')} out of turn), "
            f"spend ${r.probes.get('spend_today_usd')}"
        )
        lines.append(
            f"  regret - 1 = {r.regret_switching:.3f} while switching (of which blind "
            f"{r.regret_blind:.3f}) + {r.regret_steady:.3f} in steady state; the client's extra "
            f"{r.regret_measured - r.regret:.3f} is the proxy and loopback, not routing"
        )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON")
    parser.add_argument("--interval", type=float, help="one setup with this probe interval (s)")
    parser.add_argument("--half-life", type=float, help="... and this half-life (s)")
    parser.add_argument("--p90-weight", type=float, help="... and this mean/p90 mix")
    parser.add_argument("--shift-samples", type=int, help="... and this regime test (0 = off)")
    parser.add_argument("--phase-s", type=float, help="seconds between latency changes")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    if args.phase_s is not None:
        size = replace(size, phase_s=args.phase_s)
    setups: Sequence[Setup] = SMOKE_SETUPS if args.smoke else SETUPS
    changes = {
        "interval_s": args.interval,
        "half_life_s": args.half_life,
        "p90_weight": args.p90_weight,
        "shift_samples": args.shift_samples,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        setups = tuple(replace(s, name="custom", **changes) for s in setups)
    # The simulator logs each probe stream cut off when the proxy stops; that is not news.
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    results = [asyncio.run(replay(s, size)) for s in setups]
    print(report(results))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency_shift-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {"size": asdict(size), "phases": schedule(size), "results": [asdict(r) for r in results]}
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
