"""The trust-overhead micro-benchmark runs end to end at minimal size (its figures are not
judged here: timing goals live in benchmarks/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def test_trust_overhead_benchmark_reports_each_part() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.trust_overhead", "--json", "--requests", "500"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert set(result["cases"]) == {"no extras", "with extras and trusted proxies"}
    for case in result["cases"].values():
        assert {"allowlist_us", "per_address_us", "total_us"} <= set(case)
    assert result["goal_us"] == 5.0
