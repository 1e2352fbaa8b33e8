"""``benchmarks/soak.py`` at smoke size, so it cannot rot: 14 s of mixed traffic through the real
serve process with a provider fault and SIGHUP reloads, and the soak's checks on the figures
(descriptors are not checked: that needs a wait past the 30 s upstream keep-alive)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from benchmarks import charts

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(120)
def test_a_short_soak_runs_end_to_end_and_passes_its_checks(tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "benchmarks.soak", "--out", str(tmp_path)]
    argv += ["--duration", "14", "--rps", "20", "--sample-every", "3", "--fault-every", "7"]
    argv += ["--fault-for", "4", "--hup-every", "5", "--probe-interval", "2", "--settle", "1"]
    done = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=100)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = orjson.loads((tmp_path / "soak.json").read_bytes())
    v, c = result["verdicts"], result["checks"]
    assert len(result["samples"]) >= 5
    for row in result["samples"]:
        assert row["rss_kib"] > 0 and row["fds"] > 0 and row["tasks"] is not None
        assert row["usage_queue"] is not None
    # The injected faults happened and took effect; no client saw an error they did not cause.
    assert len(result["events"]["faults"]) >= 1 and v["breaker_openings"] >= 1
    assert len(result["events"]["hups"]) >= 2 and v["reloads_applied"] >= 2
    assert v["reloads_rejected"] == 0 and v["probes_sent"] > 0
    assert result["client"]["unexpected"] == {}
    assert result["client"]["expected_errors"].get("bad_request_400", 0) > 0
    assert set(result["requests"]["by_kind"]) == {"stream", "plain", "cancelled"}
    assert c["fds_back_to_baseline"] is None
    assert c["usage_queue_drained"] and c["tasks_bounded"]
    assert "RSS growth" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / "soak.png").exists() == charts.available()
