"""The history benchmark runs end to end at minimal size (its figures are judged in
benchmarks/, not here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def test_history_benchmark_runs_at_minimal_size() -> None:
    args = ["--json", "--requests", "2000", "--rounds", "1", "--deployments", "80"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.history_overhead", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert result["80_deployments"]["deployments"] == 80
    for run in result.values():
        assert run["sink_us_median"] > 0
        assert run["memory_bytes"] > 0 and run["history_payload_bytes"] > 0
