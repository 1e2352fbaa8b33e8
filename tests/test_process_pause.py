"""The router's own process paused (SIGSTOP/SIGCONT, a VM paused or live-migrated, a loop
blocked): the time it did not run is nobody's first token being late. A deadline that
expires only because the process was stopped must not fail the attempt, charge the provider
a breaker failure, or feed the pause into the latency table as a slow sample.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import openai
import orjson

from benchmarks import procs
from tests.conftest import spawn_server, stop_server

TTFT_MS = 1500.0  # the upstream's first token comes inside the pause
DEADLINE_MS = 3000.0  # ... and the first-token deadline passes inside it too
PAUSE_S = 5.0
STREAMS = 6  # more than the breaker's 5 consecutive failures


def post(url: str, body: dict[str, Any]) -> None:
    req = urllib.request.Request(url, orjson.dumps(body), {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return orjson.loads(resp.read())


def start(tmp_path: Path, sim: procs.Service, extra: str) -> tuple[subprocess.Popen[str], str]:
    (tmp_path / "config.toml").write_text(procs.router_config(sim.url) + extra)
    return spawn_server(
        ["serve", "--port", "0", "--config", str(tmp_path / "config.toml")],
        {**procs.router_env(), "STATE_DIRECTORY": str(tmp_path)},
    )


def pause(pid: int, seconds: float) -> None:
    os.kill(pid, signal.SIGSTOP)
    try:
        time.sleep(seconds)
    finally:
        os.kill(pid, signal.SIGCONT)


def test_a_stopped_process_does_not_fail_attempts_open_breakers_or_skew_latency(
    tmp_path: Path, sim_process: procs.Service
) -> None:
    post(f"{sim_process.url}/_sim/profile", {"model": "gpt-4o-mini", "ttft_ms": TTFT_MS})
    extra = f"\n[probes]\nenabled = false\n[routing.ttft_deadline_ms]\npinned = {DEADLINE_MS}\n"
    proc, url = start(tmp_path, sim_process, extra)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)

    def stream(i: int) -> tuple[str | None, str | None, str]:
        with client.chat.completions.with_streaming_response.create(
            model="gpt-4o-mini",
            messages=[{"role": "user", "content": f"hello {i}"}],
            stream=True,
        ) as resp:
            text = "".join(resp.iter_lines())
            return (
                resp.headers.get("x-router-attempts"),
                resp.headers.get("x-router-provider"),
                text,
            )

    try:
        with ThreadPoolExecutor(STREAMS) as pool:
            answers = [pool.submit(stream, i) for i in range(STREAMS)]
            time.sleep(0.5)  # every request is waiting for its first token
            pause(proc.pid, PAUSE_S)
            results = [a.result(timeout=30) for a in answers]
        for attempts, provider, text in results:
            # Served by the deployment that was asked, once: no fallback paid for twice.
            assert (attempts, provider) == ("1", "openai"), (attempts, provider)
            assert text.endswith("[DONE]") and '"error"' not in text, text[-300:]
        mini = {
            d["deployment"]: d
            for d in get(f"{url}/v1/router/status")["deployments"]
            if d["model"] == "gpt-4o-mini"
        }["gpt-4o-mini@openai"]
        assert mini["breaker"] == "closed", mini
        assert mini["breaker_detail"]["consecutive_failures"] == 0, mini
        # The samples are the upstream's 1.5 s, not 1.5 s plus the 5 s the router was stopped.
        assert mini["samples"] == STREAMS, mini
        assert mini["ttft_mean_ms"] < TTFT_MS + 1000, mini
    finally:
        client.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        stop_server(proc)


def test_probes_in_flight_while_the_process_is_stopped_give_no_verdict_and_no_slow_sample(
    tmp_path: Path, sim_process: procs.Service
) -> None:
    post(f"{sim_process.url}/_sim/profile", {"model": "*", "ttft_ms": TTFT_MS})
    # A probe timeout as long as the pause: for the probes in flight it passes inside the pause
    # or just after it, while their upstreams answered inside it.
    extra = (
        "\n[probes]\ninterval_s = 1.0\njitter = 0.0\nconcurrency = 8\ntimeout_s = 5.0\n"
        "max_daily_spend_usd = 1000.0\n"
    )
    proc, url = start(tmp_path, sim_process, extra)
    try:

        def probing() -> list[dict[str, Any]]:
            return [d for d in get(f"{url}/v1/router/status")["deployments"] if d["samples"]]

        deadline = time.monotonic() + 20
        while len(probing()) < 8 and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(0.5)  # probes are in flight (each waits 1.5 s for its first token)
        pause(proc.pid, PAUSE_S)
        time.sleep(TTFT_MS / 1000 + 1.5)  # what was in flight has finished
        deployments = get(f"{url}/v1/router/status")["deployments"]
        measured = [d for d in deployments if d["samples"]]
        assert len(measured) >= 8, measured
        for d in deployments:
            assert d["breaker"] == "closed", d
            assert not (d["breaker_detail"] or {}).get("consecutive_failures"), d
        for d in measured:
            # 1.5 s answers; not 1.5 s plus the pause, nor a 5 s censored timeout.
            assert d["ttft_mean_ms"] < TTFT_MS + 1000, d
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        stop_server(proc)


def test_a_pause_during_a_hedge_delay_does_not_start_hedges(
    tmp_path: Path, sim_process: procs.Service
) -> None:
    """prefer=fast streams hedge after their p90 without a token; a delay that passed only
    because the process was stopped must not buy a second upstream answer."""
    post(f"{sim_process.url}/_sim/profile", {"model": "*", "ttft_ms": TTFT_MS})
    extra = (
        "\n[probes]\nenabled = false\n"
        "[hedging]\nbudget_percent = 100.0\nburst = 100.0\nmin_delay_ms = 1000.0\n"
    )
    proc, url = start(tmp_path, sim_process, extra)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="k", max_retries=0, timeout=60)

    def stream(i: int) -> str | None:
        with client.chat.completions.with_streaming_response.create(
            model="auto:fast",
            messages=[{"role": "user", "content": f"hello {i}"}],
            stream=True,
        ) as resp:
            assert "".join(resp.iter_lines()).endswith("[DONE]")
            return resp.headers.get("x-router-attempts")

    try:
        with ThreadPoolExecutor(STREAMS) as pool:
            answers = [pool.submit(stream, i) for i in range(STREAMS)]
            time.sleep(0.3)  # inside every request's hedge delay (at least 1 s)
            pause(proc.pid, PAUSE_S)
            attempts = [a.result(timeout=30) for a in answers]
        assert attempts == ["1"] * STREAMS, attempts
    finally:
        client.close()
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
        stop_server(proc)
