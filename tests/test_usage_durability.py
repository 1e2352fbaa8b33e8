"""What a crash can cost the usage log, with ``model-router serve`` as a subprocess: rows older
than one flush interval survive SIGKILL; a SIGTERM flushes everything; rows younger than the
interval are what a SIGKILL loses."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import openai
import pytest

from tests.conftest import spawn_server, stop_server

MSG = [{"role": "user", "content": "hello there"}]


def serve_and_ask(
    tmp_path: Path, flush_ms: float, requests: int
) -> tuple[subprocess.Popen[str], Path]:
    """Start the demo server, send ``requests`` answers; returns (process, db path)."""
    config = tmp_path / "config.toml"
    config.write_text(f"[probes]\nenabled = false\n[usage]\nflush_ms = {flush_ms}\n")
    proc, url = spawn_server(
        ["serve", "--demo", "--port", "0", "--config", str(config)],
        {"MODEL_ROUTER_DEMO_SCALE": "0.0", "STATE_DIRECTORY": str(tmp_path)},
    )
    try:
        with openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0) as client:
            for _ in range(requests):
                client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    except BaseException:
        stop_server(proc)
        raise
    return proc, tmp_path / "model-router.db"


def count_rows(db: Path) -> int:
    conn = sqlite3.connect(db)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM usage").fetchone()[0])
    finally:
        conn.close()


@pytest.mark.parametrize(
    ("flush_ms", "wait_s", "sig", "survivors"),
    [
        pytest.param(20.0, 0.5, signal.SIGKILL, 3, id="sigkill-after-an-interval-loses-nothing"),
        pytest.param(60_000.0, 0.0, signal.SIGTERM, 3, id="sigterm-flushes-everything"),
        pytest.param(60_000.0, 0.0, signal.SIGKILL, 0, id="sigkill-loses-the-last-interval"),
    ],
)
def test_crash_loses_at_most_one_flush_interval(
    tmp_path: Path, flush_ms: float, wait_s: float, sig: signal.Signals, survivors: int
) -> None:
    proc, db = serve_and_ask(tmp_path, flush_ms, 3)
    time.sleep(wait_s)
    proc.send_signal(sig)
    proc.communicate(timeout=15)
    assert count_rows(db) == survivors
