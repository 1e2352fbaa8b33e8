"""benchmarks/compare.py runs end to end at minimal size (two builds and the forwarder
against one simulator over real sockets); its figures are not judged here."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_compare_reports_both_builds_against_the_forwarder() -> None:
    size = ["--n", "20", "--streams", "2", "--rounds", "1"]
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.compare", "--before", str(ROOT), *size],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[-4].startswith("medians of 1 rounds")
    for line, name in zip(lines[-3:], ("forwarder", "before", "after"), strict=True):
        assert line.split()[0] == name and "us per request" in line and "per relayed chunk" in line
