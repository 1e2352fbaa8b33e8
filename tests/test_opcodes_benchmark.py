"""benchmarks/opcodes.py runs end to end at minimal size: both targets traced over real
sockets, and the router's own functions are in the counts (figures are not judged here)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]


def test_opcode_counts_cover_both_targets_and_the_routers_own_code(tmp_path: Path) -> None:
    out = tmp_path / "counts.json"
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.opcodes", "--n", "5", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=90,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert "bytecodes per request (non-streaming, 5 requests)" in done.stdout
    counts = orjson.loads(out.read_bytes())
    assert set(counts) == {"forwarder", "model-router"}
    router_files = {row[0] for row in counts["model-router"]}
    assert "proxy/http/handlers.py" in router_files
    assert "benchmarks/forwarder.py" in {row[0] for row in counts["forwarder"]}
    assert not any(f.startswith("proxy/") for f in {row[0] for row in counts["forwarder"]})
