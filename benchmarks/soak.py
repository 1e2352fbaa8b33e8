"""``python -m benchmarks.soak``: ``model-router serve`` under mixed traffic for a long time
(30 minutes by default), looking for what only time shows: memory that creeps, descriptors or
tasks that leak, a usage-log queue that never drains, a loop that gets slower.

Traffic, from a paced pool of client workers: streamed and non-streamed chat requests routed by
intent, streams the client cancels after the first chunk, and bad requests (a 400 is their
expected answer). Every ``--fault-every`` seconds the upstream model that served most requests
lately fails with 500s for ``--fault-for`` seconds (the breaker must open, traffic fall back,
the probes bring it back); every ``--hup-every`` seconds the router is sent SIGHUP. Probes are
on. Every ``--sample-every`` seconds: RSS, open descriptors, event-loop lag, asyncio tasks,
the usage-log queue, open streams. After the traffic stops it waits ``--settle`` seconds (past
the 30 s upstream keep-alive) and reads the descriptors again (and the tasks, re-read for up
to 10 s more while transient ones are still above the bound).

Writes ``soak.json`` (every sample and the verdicts), ``summary.md`` and, with matplotlib (the
``bench`` extra), ``soak.png`` to ``--out`` (default ``benchmarks/out/soak-<time>/``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from proxy.config import ServerSettings

from . import procs
from .procs import ROOT, Service

# Intents the valid requests use; all OpenAI-wire providers serve them in this setup.
MODELS = ("auto", "auto:fast", "auto:cheap", "auto:economy", "auto:standard:balanced")
# Mix of request kinds (weights).
KINDS = {"stream": 55, "plain": 30, "cancel": 8, "bad": 7}
PROMPT = [{"role": "user", "content": "Summarise the soak test in one sentence, please."}]
# A bad request and the status it must get (nothing goes upstream).
BAD = {"model": "auto", "messages": PROMPT, "prefer": "sluggish"}
# RSS growth is read from this point on (minute 5 of 30): start-up and warm-up come before it.
GROWTH_FROM = 1 / 6
# The router's upstream keep-alive ([server] upstream_keepalive_s): pooled sockets idle past it
# close (the warmer keeps one per upstream origin alive; it is there at the baseline too).
KEEPALIVE_S = ServerSettings().upstream_keepalive_s
RELOADS = "model_router_config_reloads_total"
PROBE_TASKS = 4
SETTLE_GRACE_S = 10.0
SUMMED = {"model_router_breaker_openings_total", RELOADS}


@dataclass
class Tally:
    """Client-side outcomes by kind; ``unexpected`` lists what should not have happened."""

    ok: Counter[str] = field(default_factory=Counter)
    expected_errors: Counter[str] = field(default_factory=Counter)
    unexpected: Counter[str] = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)

    def bad(self, what: str) -> None:
        self.unexpected[what] += 1
        if len(self.examples) < 20:
            self.examples.append(what)


@dataclass
class Events:
    faults: list[dict[str, Any]] = field(default_factory=list)
    hups: list[float] = field(default_factory=list)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__)
    p.add_argument("--duration", type=float, default=1800.0, help="seconds of traffic")
    p.add_argument("--rps", type=float, default=40.0, help="requests started per second")
    p.add_argument("--workers", type=int, default=32, help="client concurrency cap")
    p.add_argument("--sample-every", type=float, default=10.0)
    p.add_argument("--fault-every", type=float, default=180.0)
    p.add_argument("--fault-for", type=float, default=45.0)
    p.add_argument("--hup-every", type=float, default=300.0)
    p.add_argument("--probe-interval", type=float, default=10.0, help="[probes] interval_s")
    p.add_argument("--settle", type=float, default=KEEPALIVE_S + 5.0)
    p.add_argument("--out", type=Path, help="output folder")
    p.add_argument("--no-charts", action="store_true")
    return p


def write_config(path: Path, sim_url: str, probe_interval: float, state: Path) -> None:
    text = procs.router_config(sim_url)
    text += (
        f"\n[probes]\nenabled = true\ninterval_s = {probe_interval:g}\n"
        "max_daily_spend_usd = 1000.0\n"
        f'\n[usage]\npath = "{state / "usage.db"}"\n'
    )
    path.write_text(text)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def scrape(text: str) -> dict[str, float]:
    """The unlabelled figures and the lag histogram's sum/count from /metrics."""
    got: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in SUMMED:  # labelled: summed over deployments / results
                key = s.name if s.name != RELOADS else f"{RELOADS}_{s.labels['result']}"
                got[key] = got.get(key, 0.0) + s.value
            elif not s.labels:
                got[s.name] = s.value
    return got


class Soak:
    def __init__(self, args: argparse.Namespace, router: Service, sim: Service) -> None:
        self.args = args
        self.router = router
        self.sim = sim
        self.tally = Tally()
        self.events = Events()
        self.samples: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.stop = asyncio.Event()
        self._last_lag: tuple[float, float] | None = None
        self._last_requests: dict[str, float] = {}

    def now(self) -> float:
        return time.monotonic() - self.t0

    async def one(self, session: aiohttp.ClientSession, kind: str) -> None:
        url = f"{self.router.url}/v1/chat/completions"
        model = random.choice(MODELS)
        body: dict[str, Any] = {"model": model, "messages": PROMPT, "max_tokens": 32}
        if kind == "bad":
            async with session.post(url, json=BAD) as resp:
                await resp.read()
                if resp.status == 400:
                    self.tally.expected_errors["bad_request_400"] += 1
                else:
                    self.tally.bad(f"bad request answered {resp.status}")
            return
        if kind == "plain":
            async with session.post(url, json=body) as resp:
                raw = await resp.read()
                if resp.status == 200 and b'"choices"' in raw:
                    self.tally.ok["plain"] += 1
                else:
                    self.tally.bad(f"plain {resp.status}: {raw[:200]!r}")
            return
        body["stream"] = True
        async with session.post(url, json=body) as resp:
            if resp.status != 200:
                self.tally.bad(f"{kind} {resp.status}: {(await resp.read())[:200]!r}")
                return
            if kind == "cancel":
                await resp.content.readline()
                resp.close()  # the client leaves mid-stream
                self.tally.ok["cancelled"] += 1
                return
            raw = await resp.read()
            if raw.rstrip().endswith(b"data: [DONE]") and b'"error"' not in raw:
                self.tally.ok["stream"] += 1
            else:
                self.tally.bad(f"stream ended without [DONE] or with an error: {raw[-200:]!r}")

    async def traffic(self) -> None:
        gate = asyncio.Semaphore(self.args.workers)
        kinds, weights = list(KINDS), list(KINDS.values())
        pending: set[asyncio.Task[None]] = set()
        timeout = aiohttp.ClientTimeout(total=60)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            interval = 1.0 / self.args.rps
            next_at = time.monotonic()
            while not self.stop.is_set():
                await gate.acquire()
                kind = random.choices(kinds, weights)[0]
                task = asyncio.create_task(self.guarded(session, kind, gate))
                pending.add(task)
                task.add_done_callback(pending.discard)
                next_at += interval
                await asyncio.sleep(max(0.0, next_at - time.monotonic()))
            await asyncio.gather(*pending)

    async def guarded(self, session: aiohttp.ClientSession, kind: str, gate: Any) -> None:
        try:
            await self.one(session, kind)
        except (aiohttp.ClientError, TimeoutError) as exc:
            self.tally.bad(f"{kind}: {type(exc).__name__}: {exc}")
        finally:
            gate.release()

    async def sim_busiest(self, session: aiohttp.ClientSession) -> str | None:
        async with session.get(f"{self.sim.url}/_sim/stats") as resp:
            counts = (await resp.json())["requests"]
        fresh = {m: n - self._last_requests.get(m, 0) for m, n in counts.items()}
        self._last_requests = counts
        return max(fresh, key=lambda m: fresh[m]) if fresh else None

    async def faults(self) -> None:
        async with aiohttp.ClientSession() as session:
            await self.sim_busiest(session)
            while not self.stop.is_set():
                if await self._wait(self.args.fault_every - self.args.fault_for):
                    return
                model = await self.sim_busiest(session)
                if model is None:
                    continue
                started = self.now()
                await session.post(
                    f"{self.sim.url}/_sim/fault", json={"model": model, "mode": "status"}
                )
                stopped = await self._wait(self.args.fault_for)
                await session.post(
                    f"{self.sim.url}/_sim/fault", json={"model": model, "mode": "none"}
                )
                self.events.faults.append({"model": model, "from_s": started, "to_s": self.now()})
                if stopped:
                    return

    async def hups(self) -> None:
        while not await self._wait(self.args.hup_every):
            os.kill(self.router.pid, signal.SIGHUP)
            self.events.hups.append(self.now())

    async def _wait(self, seconds: float) -> bool:
        """Sleep; True when the run stopped meanwhile."""
        try:
            await asyncio.wait_for(self.stop.wait(), timeout=max(0.0, seconds))
        except TimeoutError:
            return False
        return True

    async def sample(self, session: aiohttp.ClientSession, phase: str) -> dict[str, Any]:
        async with session.get(f"{self.router.url}/metrics") as resp:
            m = scrape(await resp.text())
        lag_sum = m.get("model_router_event_loop_lag_seconds_sum", 0.0)
        lag_n = m.get("model_router_event_loop_lag_seconds_count", 0.0)
        mean_lag = None
        if self._last_lag is not None and lag_n > self._last_lag[1]:
            mean_lag = (lag_sum - self._last_lag[0]) / (lag_n - self._last_lag[1])
        self._last_lag = (lag_sum, lag_n)
        row = {
            "t_s": round(self.now(), 1),
            "phase": phase,
            "rss_kib": self.router.rss_kib(),
            "fds": fd_count(self.router.pid),
            "tasks": m.get("model_router_event_loop_tasks"),
            "usage_queue": m.get("model_router_usage_log_queued_rows"),
            "usage_dropped": m.get("model_router_usage_log_dropped_rows_total"),
            "usage_written": m.get("model_router_usage_log_written_rows_total"),
            "open_streams": m.get("model_router_open_streams"),
            "in_flight": m.get("model_router_requests_in_flight"),
            "lag_last_ms": round(1000 * m.get("model_router_event_loop_lag_last_seconds", 0.0), 2),
            "lag_mean_ms": None if mean_lag is None else round(1000 * mean_lag, 3),
            "cpu_s": round(self.router.cpu_seconds(), 2),
            "breaker_openings": m.get("model_router_breaker_openings_total", 0.0),
            "reloads_applied": m.get(f"{RELOADS}_applied", 0.0),
            "reloads_rejected": m.get(f"{RELOADS}_rejected", 0.0),
            "probes_sent": m.get("model_router_probes_sent_total"),
            "client_ok": sum(self.tally.ok.values()),
            "client_unexpected": sum(self.tally.unexpected.values()),
        }
        self.samples.append(row)
        return row

    async def sampler(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                row = await self.sample(session, "traffic")
                print(
                    f"[{row['t_s']:7.1f} s] rss {row['rss_kib'] / 1024:.1f} MiB, fds {row['fds']}, "
                    f"tasks {row['tasks']:.0f}, queue {row['usage_queue']:.0f}, lag "
                    f"{row['lag_mean_ms']} ms, ok {row['client_ok']}, "
                    f"unexpected {row['client_unexpected']}",
                    flush=True,
                )
                if await self._wait(self.args.sample_every):
                    return

    async def run(self) -> dict[str, Any]:
        async with aiohttp.ClientSession() as session:
            await asyncio.sleep(2.0)  # the first probe round
            baseline = await self.sample(session, "baseline")
            workers = [
                asyncio.create_task(self.traffic()),
                asyncio.create_task(self.faults()),
                asyncio.create_task(self.hups()),
                asyncio.create_task(self.sampler()),
            ]
            await asyncio.sleep(self.args.duration)
            self.stop.set()
            await asyncio.gather(*workers)
            end = await self.sample(session, "traffic-end")
            await asyncio.sleep(self.args.settle)
            settled = await self.sample(session, "settled")
            # Tasks that come and go at rest (a probe round, a warming HEAD, a reload retiring
            # old providers) can be mid-flight at the reading, more so on a loaded box; leaked
            # ones stay. Read again, for at most SETTLE_GRACE_S, until the count is in bounds.
            bound = (baseline["tasks"] or 0) + PROBE_TASKS
            give_up = self.now() + SETTLE_GRACE_S
            while (settled["tasks"] or 0) > bound and self.now() < give_up:
                await asyncio.sleep(0.5)
                settled = await self.sample(session, "settled")
        return verdicts(self.samples, baseline, end, settled, self.args.duration)


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def verdicts(
    samples: list[dict[str, Any]],
    baseline: dict[str, Any],
    end: dict[str, Any],
    settled: dict[str, Any],
    duration: float,
) -> dict[str, Any]:
    traffic = [s for s in samples if s["phase"] == "traffic"]
    start_s = samples[0]["t_s"] + duration * GROWTH_FROM
    window = max(duration / 30, 10.0)  # one minute of thirty: the median of ~6 samples
    early = [
        s["rss_kib"] for s in traffic if start_s - window / 2 <= s["t_s"] <= start_s + window / 2
    ]
    late = [s["rss_kib"] for s in traffic if s["t_s"] >= traffic[-1]["t_s"] - window]
    rss_from, rss_to = _median(early), _median(late)
    half = len(traffic) // 2
    tasks_first = max((s["tasks"] or 0) for s in traffic[:half]) if half else 0
    tasks_second = max((s["tasks"] or 0) for s in traffic[half:]) if traffic else 0
    lags = [s["lag_mean_ms"] for s in traffic if s["lag_mean_ms"] is not None]
    return {
        "rss_from_kib": rss_from,
        "rss_to_kib": rss_to,
        "rss_growth_pct": round(100 * (rss_to - rss_from) / rss_from, 2),
        "fds_baseline": baseline["fds"],
        "fds_peak": max(s["fds"] for s in samples),
        "fds_at_traffic_end": end["fds"],
        "fds_settled": settled["fds"],
        "tasks_baseline": baseline["tasks"],
        "tasks_max_first_half": tasks_first,
        "tasks_max_second_half": tasks_second,
        "tasks_settled": settled["tasks"],
        "usage_queue_max": max((s["usage_queue"] or 0) for s in samples),
        "usage_queue_settled": settled["usage_queue"],
        "usage_dropped": settled["usage_dropped"],
        "usage_written": settled["usage_written"],
        "lag_mean_ms_median": round(_median(lags), 3) if lags else None,
        "lag_mean_ms_max": max(lags) if lags else None,
        "breaker_openings": settled["breaker_openings"],
        "reloads_applied": settled["reloads_applied"],
        "reloads_rejected": settled["reloads_rejected"],
        "probes_sent": settled["probes_sent"],
        "router_cpu_s": settled["cpu_s"],
    }


def checks(v: dict[str, Any], tally: Tally, settle_s: float) -> dict[str, bool | None]:
    """The issue's bar: RSS growth under 5 %, descriptors back to the baseline, no task or
    queue growing without bound, no client-visible error the faults did not cause. The
    descriptors are checked only after the upstream keep-alive (None: not checked)."""
    return {
        "rss_growth_under_5pct": v["rss_growth_pct"] < 5.0,
        "fds_back_to_baseline": v["fds_settled"] <= v["fds_baseline"]
        if settle_s >= KEEPALIVE_S
        else None,
        # Back to rest once the traffic is gone; a probe round may be in flight at either
        # reading (one task per probe, up to [probes] concurrency, 4 by default).
        "tasks_bounded": v["tasks_settled"] <= v["tasks_baseline"] + PROBE_TASKS,
        "usage_queue_drained": (v["usage_queue_settled"] or 0) == 0
        and (v["usage_dropped"] or 0) == 0,
        "zero_unexpected_client_errors": sum(tally.unexpected.values()) == 0,
    }


def chart(samples: list[dict[str, Any]], events: Events, out: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [s["t_s"] / 60 for s in samples]
    panels = (
        ("RSS (MiB)", [s["rss_kib"] / 1024 for s in samples]),
        ("open fds", [s["fds"] for s in samples]),
        ("asyncio tasks", [s["tasks"] for s in samples]),
        ("usage-log queue (rows)", [s["usage_queue"] for s in samples]),
        ("loop lag, mean (ms)", [s["lag_mean_ms"] for s in samples]),
        ("open streams", [s["open_streams"] for s in samples]),
    )
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, 11), dpi=72, sharex=True)
    for ax, (label, ys) in zip(axes, panels, strict=True):
        ax.plot(t, [float("nan") if y is None else y for y in ys], color="#d62728", lw=1.2)
        ax.set_ylabel(label, fontsize=8)
        for f in events.faults:
            ax.axvspan(f["from_s"] / 60, f["to_s"] / 60, color="#ff7f0e", alpha=0.15, lw=0)
        for h in events.hups:
            ax.axvline(h / 60, color="#1f77b4", lw=0.6, ls=":")
        ax.grid(alpha=0.3)
    axes[0].set_ylim(bottom=0)
    axes[-1].set_xlabel("minutes (orange: a provider failing; dotted: SIGHUP)")
    fig.suptitle("model-router soak")
    fig.tight_layout()
    path = out / "soak.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def summary(result: dict[str, Any]) -> str:
    v, c = result["verdicts"], result["checks"]
    lines = [
        f"# Soak: {result['duration_s']:.0f} s of mixed traffic",
        "",
        f"Started {result['started']}, commit {result['commit']}; "
        f"{result['requests']['total']} requests ({result['requests']['by_kind']}), "
        f"{len(result['events']['faults'])} provider faults, "
        f"{len(result['events']['hups'])} SIGHUP reloads.",
        "",
        "| check | figures | pass |",
        "|---|---|---|",
        f"| RSS growth minute {result['duration_s'] * GROWTH_FROM / 60:.0f} to the end | "
        f"{v['rss_from_kib'] / 1024:.1f} -> {v['rss_to_kib'] / 1024:.1f} MiB "
        f"({v['rss_growth_pct']:+.2f} %) | {c['rss_growth_under_5pct']} |",
        f"| open fds back to the baseline | baseline {v['fds_baseline']}, peak "
        f"{v['fds_peak']}, at traffic end {v['fds_at_traffic_end']}, settled "
        f"{v['fds_settled']} | {c['fds_back_to_baseline']} |",
        f"| asyncio tasks bounded | baseline {v['tasks_baseline']:.0f}, max "
        f"{v['tasks_max_first_half']:.0f} / {v['tasks_max_second_half']:.0f} (1st/2nd half), "
        f"settled {v['tasks_settled']:.0f} | {c['tasks_bounded']} |",
        f"| usage-log queue drained | max {v['usage_queue_max']:.0f} rows, settled "
        f"{v['usage_queue_settled']:.0f}, dropped {v['usage_dropped']:.0f}, written "
        f"{v['usage_written']:.0f} | {c['usage_queue_drained']} |",
        f"| client errors | unexpected {result['client']['unexpected']}, expected "
        f"{result['client']['expected_errors']} | {c['zero_unexpected_client_errors']} |",
        f"| event-loop lag (mean per sample) | median {v['lag_mean_ms_median']} ms, max "
        f"{v['lag_mean_ms_max']} ms | (reported) |",
        f"| faults took effect | {v['breaker_openings']:.0f} breaker openings, "
        f"{v['reloads_applied']:.0f} reloads applied ({v['reloads_rejected']:.0f} rejected), "
        f"{v['probes_sent']:.0f} probes, router CPU {v['router_cpu_s']:.0f} s | (reported) |",
    ]
    return "\n".join(lines) + "\n"


async def soak(args: argparse.Namespace, out: Path) -> dict[str, Any]:
    commit = _commit()  # now: the code under test is what was checked out at the start
    state = out / "state"
    state.mkdir(exist_ok=True)
    sim = procs.spawn("sim", procs.sim_argv(ttft_ms=20, gap_ms=5, tokens=16), cpus=None)
    router: Service | None = None
    try:
        config = out / "config.toml"
        write_config(config, sim.url, args.probe_interval, state)
        router = procs.spawn(
            "model-router",
            procs.router_argv(config),
            cpus=None,
            env={**procs.router_env(), "STATE_DIRECTORY": str(state)},
            log_path=out / "router.log",
        )
        run = Soak(args, router, sim)
        started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        v = await run.run()
        code = router.proc.poll()
    finally:
        if router is not None:
            router.stop()
        sim.stop()
    tally = run.tally
    result = {
        "started": started,
        "commit": commit,
        "duration_s": args.duration,
        "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "router_exited": code,
        "requests": {
            "total": sum(tally.ok.values())
            + sum(tally.expected_errors.values())
            + sum(tally.unexpected.values()),
            "by_kind": dict(tally.ok),
        },
        "client": {
            "expected_errors": dict(tally.expected_errors),
            "unexpected": dict(tally.unexpected),
            "unexpected_examples": tally.examples,
        },
        "events": {"faults": run.events.faults, "hups": run.events.hups},
        "verdicts": v,
        "checks": checks(v, tally, args.settle),
        "samples": run.samples,
    }
    return result


def _commit() -> str:
    try:
        done = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError:
        return "unknown"
    return done.stdout.strip() or "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    out: Path = args.out or ROOT / "benchmarks" / "out" / f"soak-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = asyncio.run(soak(args, out))
    (out / "soak.json").write_bytes(orjson.dumps(result, option=orjson.OPT_INDENT_2))
    text = summary(result)
    if not args.no_charts and (png := chart(result["samples"], Events(**result["events"]), out)):
        text += f"\n![soak]({png.name})\n"
    (out / "summary.md").write_text(text)
    print(text)
    ok = all(c is not False for c in result["checks"].values()) and result["router_exited"] is None
    print(f"soak: {'all checks pass' if ok else 'CHECKS FAILED'}; figures in {out}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
