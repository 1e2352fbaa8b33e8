"""The accounting-overhead benchmark runs end to end at minimal size (its figures are not
judged here: timing goals live in benchmarks/)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "accounting_overhead.py"


def test_accounting_benchmark_runs_at_minimal_size() -> None:
    minimal = ["--json", "--requests", "5", "--rounds", "1", "--concurrency", "1,4"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *minimal, "--max-seconds", "30"],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    result = orjson.loads(done.stdout)
    assert [row["concurrency"] for row in result["levels"]] == [1, 4]
    for row in result["levels"]:
        for arm in ("off", "on"):
            assert row[arm]["requests"] == 5 and row[arm]["p50_ms"] > 0
        assert "added_p50_ms" in row
    # Warm-up (20) plus 5 per level went through the "on" proxy and were all logged;
    # the "off" proxy never created its database.
    assert result["on_rows_logged"] == 20 + 2 * 5
    assert result["off_db_created"] is False
