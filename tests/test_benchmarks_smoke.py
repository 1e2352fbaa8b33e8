"""The benchmark suite at tiny size, so it cannot rot: every benchmark runs end to end against
real processes on 127.0.0.1 (simulator, forwarder, ``model-router serve``, an extra --target),
and the run's JSON and summary carry every figure. Timing goals are not asserted here."""

from __future__ import annotations

import importlib.util
import math
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from benchmarks import procs
from benchmarks.common import parse_target, percentile

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[dict[str, Any], str, Path]]:
    """One smoke run of everything, with a second forwarder as an extra --target (pointed at
    the simulator's fixed port, the way a user points their own gateway at it)."""
    out = tmp_path_factory.mktemp("bench")
    sim_port = free_port()
    other = procs.spawn("other", procs.forwarder_argv(f"http://127.0.0.1:{sim_port}"), cpus=None)
    try:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.run",
                "all",
                "--smoke",
                "--out",
                str(out),
                "--sim-port",
                str(sim_port),
                "--target",
                f"other={other.url}/v1,model=gpt-4o-mini",
            ],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=170,
        )
    finally:
        other.stop()
    assert proc.returncode == 0, proc.stderr[-3000:]
    (out / "stdout.txt").write_text(proc.stdout)
    yield orjson.loads((out / "results.json").read_bytes()), proc.stderr, out


@pytest.mark.timeout(200)
def test_overhead_measures_every_target_without_errors(smoke: Any) -> None:
    results, _, _ = smoke
    r = results["benchmarks"]["overhead"]
    for mode in ("nonstream", "stream"):
        assert set(r[mode]["latency_ms"]) == {"direct", "forwarder", "model-router", "other"}
        assert not r[mode]["errors"]
        for name, s in r[mode]["latency_ms"].items():
            assert s["n"] == 5 and s["p50"] > 0, name
        assert r[mode]["added_ms"]["direct"] == {"p50": 0.0, "p99": 0.0}
        # CPU time comes from /proc in 10 ms ticks: five tiny requests may read as 0.
        assert r[mode]["cpu_us_per_request"]["model-router"] >= 0
    assert set(r["ratios"]) == {"model-router", "other"}
    assert r["paced"]["total_ms"]["model-router"]["n"] == 1
    # 8 chunks 5 ms apart: a paced stream cannot be shorter than its schedule.
    assert r["paced"]["total_ms"]["model-router"]["p50"] >= 7 * 5


@pytest.mark.timeout(200)
def test_concurrency_throughput_and_memory_have_their_figures(smoke: Any) -> None:
    results, _, _ = smoke
    b = results["benchmarks"]
    for name, levels in b["concurrency"]["levels"].items():
        assert set(levels) == {"1", "4"}, name
        for c, lv in levels.items():
            assert lv["streams"] >= int(c) and not lv["errors"], (name, c)
            assert lv["ttft_ms"]["p99"] > 0
    for name, t in b["throughput"]["targets"].items():
        assert t["requests_per_s"] > 0 and not t["errors"], name
    for name, m in b["memory"]["targets"].items():
        assert m["held_streams"] == 20, name
        assert m["held_rss_kib"] > 0 and m["idle_rss_kib"] > 0
        assert math.isfinite(m["per_stream_kib"])


@pytest.mark.timeout(200)
def test_in_process_and_startup_benchmarks_report(smoke: Any) -> None:
    results, _, _ = smoke
    b = results["benchmarks"]
    assert b["routing"]["models"] == 500
    assert b["routing"]["plan_us"]["n"] == 20 * len(b["routing"]["plan_us_by_intent"])
    assert b["relay"]["feed_us_per_chunk"]["p50"] > 0
    assert b["startup"]["ready_ms"]["model-router"]["n"] == 1
    names = {c["name"] for c in results["checks"]}
    assert any(n.startswith("(e)") for n in names) and any(n.startswith("(f)") for n in names)
    assert results["machine"]["commit"]


@pytest.mark.timeout(200)
def test_summary_and_charts_are_written(smoke: Any) -> None:
    _, stderr, out = smoke
    stdout = (out / "stdout.txt").read_text()
    summary = (out / "summary.md").read_text()
    assert "| target | goal | this run | met |" in summary
    # Five samples cannot fail a goal: the table says it was not judged, never "no".
    assert "not judged at smoke size" in summary and "**no**" not in summary
    assert "**no**" not in stdout and "not judged at smoke size" in stdout
    assert "### (b) Concurrent paced streams" in summary
    assert "pinning" in stderr
    if importlib.util.find_spec("matplotlib") is None:
        assert "charts skipped" in stderr
    else:
        for chart in ("latency_cdf.png", "concurrency.png", "memory.png"):
            assert (out / chart).stat().st_size > 1000


@pytest.mark.timeout(200)
def test_every_target_has_its_own_colour_in_the_charts(smoke: Any) -> None:
    from benchmarks.charts import palette

    results, _, _ = smoke
    colors = palette(results)
    drawn = set(results["benchmarks"]["overhead"]["stream"]["samples_ms"])
    drawn |= set(results["benchmarks"]["concurrency"]["levels"])
    drawn |= set(results["benchmarks"]["memory"]["targets"])
    assert {"direct", "forwarder", "model-router", "other"} <= drawn
    assert len({colors[name] for name in drawn}) == len(drawn)


@pytest.mark.parametrize(
    "spec, expected",
    [
        pytest.param(
            "gw=http://127.0.0.1:4000/v1",
            ("gw", "http://127.0.0.1:4000/v1", "gpt-4o-mini", "x"),
            id="url-only",
        ),
        pytest.param(
            "gw=http://127.0.0.1:4000/v1/,model=m,key=k",
            ("gw", "http://127.0.0.1:4000/v1", "m", "k"),
            id="with-options",
        ),
    ],
)
def test_target_spec_parses(spec: str, expected: tuple[str, str, str, str]) -> None:
    t = parse_target(spec)
    assert (t.name, t.url, t.model, t.key) == expected


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param("http://127.0.0.1:4000/v1", id="no-name"),
        pytest.param("forwarder=http://127.0.0.1:4000/v1", id="built-in-name"),
        pytest.param("gw=http://x/v1,colour=red", id="unknown-option"),
    ],
)
def test_bad_target_spec_is_refused(spec: str) -> None:
    with pytest.raises(ValueError, match="--target"):
        parse_target(spec)


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([5.0], 99) == 5.0
    assert percentile(list(map(float, range(101))), 99) == 99.0
    assert math.isnan(percentile([], 50))


def test_a_benchmark_router_keeps_its_usage_log_out_of_the_checkout(tmp_path: Path) -> None:
    """Without $STATE_DIRECTORY the router writes ./model-router.db, and benchmark children run
    in the checkout: `make test` and `make bench` put their traffic in the usage log that
    `make serve` and `model-router report` use there (and that budgets read back)."""
    sim = procs.spawn("sim", procs.sim_argv(), cpus=None)
    config = tmp_path / "router.toml"
    config.write_text(procs.router_config(sim.url) + "\n[probes]\nenabled = false\n")
    router = procs.spawn("router", procs.router_argv(config), cpus=None, env=procs.router_env())
    try:
        fds = Path(f"/proc/{router.pid}/fd")
        opened = {os.readlink(fd) for fd in fds.iterdir() if fd.is_symlink()}
        logs = [p for p in opened if Path(p).name == "model-router.db"]
        assert logs, opened
        assert not any(Path(p).is_relative_to(procs.ROOT) for p in logs), logs
    finally:
        router.stop()
        sim.stop()
