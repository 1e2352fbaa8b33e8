"""benchmarks/latency_shift.py at tiny size, so it cannot rot: the real proxy in its own process,
the simulator and the replay, end to end. Timing goals are reported there, not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parent.parent


def test_latency_shift_benchmark_runs_and_writes_every_figure(tmp_path: Path) -> None:
    cwd = tmp_path / "cwd"  # the router in it must not leave ./model-router.db behind
    cwd.mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.latency_shift", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not list(cwd.iterdir()), list(cwd.iterdir())
    assert "regret" in proc.stdout
    (path,) = tmp_path.glob("latency_shift-*.json")
    doc = orjson.loads(path.read_bytes())
    (result,) = doc["results"]
    assert result["requests"] > 5 and len(result["samples"]) == result["requests"]
    assert result["regret"] >= 1.0 and result["regret_measured"] > 0
    # The smoke schedule moves the best model twice: m-a slows, then m-c gets faster.
    assert [s["best"] for s in result["shifts"]] == ["m-b", "m-c"]
    assert result["probes"]["sent"] > 0 and result["probes"]["spend_today_usd"] > 0
    assert {s["model"] for s in result["samples"]} <= {"m-a", "m-b", "m-c", "m-d"}
