"""``model-router status`` as a subprocess against a running router: the table, ``--watch``
redrawing in place, and the exit code when the router is not ready or cannot be read."""

from __future__ import annotations

import asyncio
import os
import signal
import sys

import pytest

from proxy.http.auth import hash_key
from proxy.status.cli import CLEAR, KEY_ENV, spark
from tests.conftest import Proxy, StartProxy

MSG = [{"role": "user", "content": "say something"}]


async def run_cli(*args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "status",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def open_every_breaker(proxy: Proxy) -> None:
    health = proxy.router.health
    for d in proxy.router.catalog.deployments():
        for _ in range(proxy.router.config.breaker.consecutive_failures):
            health.failure(d.key, "server")


async def test_status_prints_the_table_at_80_columns(proxy: Proxy) -> None:
    client = proxy.client()
    for _ in range(2):
        await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    code, out, err = await run_cli("--url", proxy.url)
    assert code == 0, err
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert lines[0].startswith(f"model-router {proxy.url}  ready")
    header = next(line for line in lines if line.startswith("deployment"))
    for column in ("breaker", "est ms", "p90", "fast", "share", "errs", "ttft 1h"):
        assert column in header
    deployments = [d.key for d in proxy.router.catalog.deployments()]
    table = lines[lines.index(header) + 1 :]
    assert len(table) == len(deployments)
    nano = next(line for line in table if line.startswith("gpt-5-nano@openai "))
    assert " closed " in nano
    # Ordered by prefer=fast rank while every breaker is closed.
    assert table[0].split()[4] == "1"


async def test_watch_redraws_in_place_until_terminated(proxy: Proxy) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "proxy",
        "status",
        "--url",
        proxy.url,
        "--watch",
        "--interval",
        "0.2",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    victim = "gpt-5-nano@openai"
    seen = ""
    try:
        async with asyncio.timeout(20):
            while seen.count(CLEAR) < 2:
                seen += (await proc.stdout.read(4096)).decode()
            # Between frames a breaker opens: a later frame shows it without a restart.
            for _ in range(proxy.router.config.breaker.consecutive_failures):
                proxy.router.health.failure(victim, "server")
            while not any(
                line.startswith(victim) and " OPEN " in line
                for f in seen.split(CLEAR)[:-1]  # complete frames
                for line in f.splitlines()
            ):
                seen += (await proc.stdout.read(4096)).decode()
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 10)
    frames = [f for f in seen.split(CLEAR) if f]
    assert len(frames) >= 3
    assert seen.startswith(CLEAR)
    assert all(f.splitlines()[0].startswith(f"model-router {proxy.url}") for f in frames[:-1])
    first = next(line for line in frames[0].splitlines() if line.startswith(victim))
    assert " closed " in first
    assert any(
        line.startswith(victim) and " OPEN " in line for f in frames for line in f.splitlines()
    )
    assert code == 0  # still ready: other deployments are closed


async def test_status_exits_1_when_the_router_is_not_ready(proxy: Proxy) -> None:
    open_every_breaker(proxy)
    code, out, _ = await run_cli("--url", proxy.url)
    assert code == 1
    assert "NOT READY" in out.splitlines()[0]
    assert all(" OPEN " in line for line in out.splitlines()[4:])


async def test_status_exits_2_when_the_router_cannot_be_read(unused_tcp_port: int) -> None:
    code, out, err = await run_cli("--url", f"http://127.0.0.1:{unused_tcp_port}")
    assert code == 2
    assert out == ""
    assert "cannot read" in err


@pytest.mark.parametrize(
    "url", ["127.0.0.1:8080", "localhost", "ftp://127.0.0.1:21", "http://"], ids=str
)
async def test_a_url_that_is_not_http_is_one_line_and_exit_2_not_a_traceback(url: str) -> None:
    code, out, err = await run_cli("--url", url)
    assert (code, out) == (2, "")
    assert err.startswith("model-router: status: --url must be an http:// or https:// URL"), err
    assert "Traceback" not in err and len(err.splitlines()) == 1


async def test_the_sdks_base_url_is_named_as_the_wrong_url(proxy: Proxy) -> None:
    """``.../v1`` is what a user passes the SDK; the router's root is what status reads."""
    code, out, err = await run_cli("--url", f"{proxy.url}/v1")
    assert (code, out) == (2, "")
    assert f"--url {proxy.url}" in err and "Traceback" not in err


async def test_status_sends_the_admin_key_from_the_environment(start_proxy: StartProxy) -> None:
    admin, client = "sk-cli-admin-1", "sk-cli-client-2"
    proxy = await start_proxy(
        {
            "keys": [
                {"id": "ops", "sha256": hash_key(admin), "admin": True},
                {"id": "ide", "sha256": hash_key(client)},
            ]
        }
    )
    code, out, err = await run_cli("--url", proxy.url, env={KEY_ENV: admin})
    assert code == 0, err
    assert "key ide: 0 requests last hour" in out and "key ops:" in out
    assert hash_key(admin) not in out and hash_key(client) not in out
    code, _, err = await run_cli("--url", proxy.url, env={KEY_ENV: client})
    assert code == 2
    assert "not an admin key" in err and KEY_ENV in err
    code, _, err = await run_cli("--url", proxy.url, env={KEY_ENV: ""})
    assert code == 2 and "401" in err


@pytest.mark.parametrize(
    ("values", "line"),
    [
        pytest.param([], "··········", id="empty"),
        pytest.param([None] * 9 + [100.0], "·········▄", id="one-point-flat"),
        pytest.param([float(v) for v in range(10)], "▁▂▃▃▄▅▆▆▇█", id="rising"),
        pytest.param([5.0, None] * 5, "▄·▄·▄·▄·▄·", id="gaps"),
    ],
)
def test_sparkline_cells(values: list[float | None], line: str) -> None:
    assert spark(values) == line
