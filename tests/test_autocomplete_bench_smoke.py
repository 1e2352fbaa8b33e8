"""benchmarks/hedging.py and benchmarks/warm_pool.py at tiny size, so they cannot rot: the real
proxy in its own process against the simulator, end to end. Timing goals are reported there,
not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def run(module: str, out: Path) -> dict[str, object]:
    # Run from another folder: a router in it must not leave ./model-router.db behind (in the
    # checkout, that is the usage log `make serve` and `report` use).
    cwd = out / "cwd"
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=55,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(cwd.iterdir()), list(cwd.iterdir())
    (path,) = out.glob(f"{module}-*.json")
    doc: dict[str, object] = orjson.loads(path.read_bytes())
    return doc


def test_hedging_benchmark_runs_both_ways_and_writes_every_figure(tmp_path: Path) -> None:
    doc = run("hedging", tmp_path)
    off, on = doc["results"]  # type: ignore[misc]
    assert (off["hedging"], on["hedging"]) == (False, True)
    for r in (off, on):
        assert len(r["ttft_ms"]) == 20 and r["upstream_requests"] >= 20
    assert off["hedged"] == {} and off["hedge_cost_usd"] == 0


def test_warm_pool_benchmark_runs_every_setup_and_holds_the_client_connection(
    tmp_path: Path,
) -> None:
    doc = run("warm_pool", tmp_path)
    results = doc["results"]
    names = [r["setup"]["name"] for r in results]  # type: ignore[attr-defined]
    assert names == ["direct", "forwarder", "off", "held", "on"]
    for r in results:  # type: ignore[attr-defined]
        assert len(r["after_idle_ms"]) == 1 and len(r["after_idle_up_ms"]) == 1
        assert r["ratio_open"] > 0 and r["upstream_connections"] >= 1
        # The client's connection to the router (or forwarder) lived through the pause.
        assert r["client_connections"] == 1
    assert {"off_p50", "on_p50", "on_paired"} <= set(doc["vs_held"])  # type: ignore[arg-type]
