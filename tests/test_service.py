"""The real ``model-router serve`` process under a stand-in systemd: sd_notify over a datagram
socket, SIGHUP reloads, SIGTERM drains. Upstreams are the demo simulator or a small upstream
in the test whose answers the test paces, so the drain is exercised without timing guesses.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from proxy.catalog import load_bundled
from tests.conftest import server_log, spawn_server, stop_server

MSG = [{"role": "user", "content": "say something"}]
OTHER_PROVIDERS = ("anthropic", "google", "openrouter", "deepseek", "bedrock")


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    """systemd's end of NOTIFY_SOCKET: a bound AF_UNIX datagram socket."""
    with contextlib.ExitStack() as stack:
        path = tmp_path / "notify"
        if len(os.fsencode(path)) > 100:  # sun_path holds 108 bytes; basetemp may be deep
            path = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "notify"
        sock = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM))
        sock.bind(str(path))
        yield sock, str(path)


def receive(sock: socket.socket, until: str, timeout: float = 15.0) -> list[dict[str, str]]:
    """Notifications up to and including the first that sets ``until`` (e.g. "READY")."""
    got: list[dict[str, str]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            raw = sock.recv(4096).decode()
        except TimeoutError:
            break
        fields = dict(line.split("=", 1) for line in raw.splitlines())
        got.append(fields)
        if until in fields:
            return got
    raise AssertionError(f"no {until} within {timeout} s; got {got}")


def finish(proc: subprocess.Popen[str], timeout: float = 15.0) -> tuple[int, str]:
    """Wait for the process to exit on its own; returns (exit code, stderr)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise AssertionError("the server did not exit after SIGTERM") from None
    finally:
        if proc.stdout is not None:
            proc.stdout.close()
    return proc.returncode, server_log(proc)


def test_systemd_hears_ready_watchdog_reloading_and_stopping_in_order(
    notify_socket: tuple[socket.socket, str],
) -> None:
    sock, path = notify_socket
    proc, _ = spawn_server(
        ["serve", "--demo", "--port", "0"],
        {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000", "MODEL_ROUTER_DEMO_SCALE": "0.02"},
    )
    try:
        messages = receive(sock, "READY")
        messages += receive(sock, "WATCHDOG")  # pings go on after READY, from the loop
        proc.send_signal(signal.SIGHUP)
        messages += receive(sock, "RELOADING")
        reloading = messages[-1]
        messages += receive(sock, "READY")
        proc.send_signal(signal.SIGTERM)
        messages += receive(sock, "STOPPING")
        code, err = finish(proc)
    finally:
        stop_server(proc)
    assert code == 0, err
    events = [e for m in messages for e in ("READY", "RELOADING", "STOPPING") if e in m]
    assert events == ["READY", "RELOADING", "READY", "STOPPING"]
    first_ready = next(i for i, m in enumerate(messages) if "READY" in m)
    assert any("WATCHDOG" in m for m in messages[first_ready:])
    # The demo serves the whole bundled catalog.
    assert f"{len(load_bundled())} models" in messages[first_ready]["STATUS"]
    # MONOTONIC_USEC is CLOCK_MONOTONIC, which this process shares with the server.
    assert abs(int(reloading["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 60_000_000
    # The READY that ends the reload (a watchdog ping may arrive between it and STOPPING).
    after = messages[messages.index(reloading) + 1 :]
    assert "config reloaded" in next(m for m in after if "READY" in m)["STATUS"]


def test_sighup_routes_by_the_new_catalog_and_a_broken_config_keeps_the_old(
    tmp_path: Path, notify_socket: tuple[socket.socket, str]
) -> None:
    sock, path = notify_socket
    config = tmp_path / "config.toml"
    config.write_text("[probes]\nenabled = false\n")
    proc, url = spawn_server(
        ["serve", "--demo", "--port", "0", "--config", str(config)],
        {"NOTIFY_SOCKET": path, "MODEL_ROUTER_DEMO_SCALE": "0.02"},
    )
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0)

    def cheapest() -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="auto:cheap",
            messages=MSG,  # type: ignore[arg-type]
        )
        return raw.headers["x-router-model"]

    def reload(text: str) -> str:
        config.write_text(text)
        proc.send_signal(signal.SIGHUP)
        receive(sock, "RELOADING")
        return receive(sock, "READY")[-1]["STATUS"]

    try:
        receive(sock, "READY")
        assert cheapest() == "gpt-5-nano"
        status = reload(
            "[probes]\nenabled = false\n"
            "[overrides.gpt-4o-mini]\ninput_price = 0.0\noutput_price = 0.0\n"
        )
        assert status.startswith("config reloaded")
        assert cheapest() == "gpt-4o-mini"
        status = reload(
            "[probes]\nenabled = false\n"
            "[overrides.gpt-4o-mini]\nenabled = false\n"
            "[server]\nno_such_key = 1\n"
        )
        assert status == "reload rejected: server.no_such_key: unknown key"
        assert cheapest() == "gpt-4o-mini"
        with http_get(f"{url}/metrics") as text:
            reloads = metric_samples(text, "model_router_config_reloads")
        proc.send_signal(signal.SIGTERM)
        code, err = finish(proc)
    finally:
        client.close()
        stop_server(proc)
    assert code == 0, err
    assert reloads == {(("result", "applied"),): 1.0, (("result", "rejected"),): 1.0}
    assert "config reload rejected, the previous config keeps serving" in err
    assert "server.no_such_key: unknown key" in err


@contextlib.contextmanager
def http_get(url: str) -> Iterator[str]:
    """A plain blocking GET (this test has no event loop)."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as resp:
        yield resp.read().decode()


def metric_samples(text: str, family: str) -> dict[tuple[tuple[str, str], ...], float]:
    for fam in text_string_to_metric_families(text):
        if fam.name == family:
            return {
                tuple(sorted(s.labels.items())): s.value
                for s in fam.samples
                if s.name.endswith("_total")
            }
    raise AssertionError(f"no {family} in /metrics")


# --- drain ------------------------------------------------------------------------------

GATED = "gpt-5-nano"  # streams one chunk, then waits for the test's release
ENDLESS = "gpt-4.1-nano"  # streams a chunk every 50 ms until the client leaves
UNSTARTED = "gpt-4o-mini"  # never answers


def chunk(model: str, content: str | None, finish: str | None = None) -> bytes:
    delta = {"content": content} if content is not None else {}
    event = {
        "id": "chatcmpl-gate",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + orjson.dumps(event) + b"\n\n"


class PacedUpstream:
    """An OpenAI-wire upstream whose answers the test paces (see the model constants)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.arrived: dict[str, asyncio.Event] = {
            m: asyncio.Event() for m in (GATED, ENDLESS, UNSTARTED)
        }
        self.url = ""

    async def chat(self, request: web.Request) -> web.StreamResponse:
        model = (await request.json())["model"]
        self.arrived[model].set()
        if model == UNSTARTED:
            await asyncio.Event().wait()
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(chunk(model, "first"))
        if model == ENDLESS:
            while True:
                await asyncio.sleep(0.05)
                await resp.write(chunk(model, " more"))
        await self.release.wait()
        for word in (" and", " the", " rest"):
            await resp.write(chunk(model, word))
        await resp.write(chunk(model, None, "stop"))
        await resp.write(b"data: [DONE]\n\n")
        return resp


@pytest.fixture
async def upstream() -> AsyncIterator[PacedUpstream]:
    up = PacedUpstream()
    app = web.Application()
    app.router.add_post("/v1/chat/completions", up.chat)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    up.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield up
    await runner.cleanup()


async def start_router(
    tmp_path: Path, upstream_url: str, drain_s: float
) -> tuple[subprocess.Popen[str], str]:
    lines = [
        f"[server]\ndrain_s = {drain_s}",
        "[probes]\nenabled = false",
        f'[providers.openai]\nbase_url = "{upstream_url}/v1"\nenabled = true',
        *(f"[providers.{name}]\nenabled = false" for name in OTHER_PROVIDERS),
    ]
    config = tmp_path / "config.toml"
    config.write_text("\n".join(lines) + "\n")
    return await asyncio.to_thread(
        spawn_server,
        ["serve", "--port", "0", "--config", str(config)],
        {"OPENAI_API_KEY": "sk-test-drain"},
    )


async def read_events(resp: aiohttp.ClientResponse, count: int | None = None) -> list[bytes]:
    """SSE events (without the blank line) until ``count`` are read or the stream ends."""
    events: list[bytes] = []
    buf = b""
    async for data in resp.content.iter_any():
        buf += data
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            events.append(event)
            if count is not None and len(events) >= count:
                return events
    return events


async def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").split(":")
    try:
        _, writer = await asyncio.open_connection(host, int(port))
    except (ConnectionRefusedError, ConnectionResetError):
        # A listener closing under the connect may reset it rather than refuse it.
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def test_sigterm_lets_an_in_flight_stream_finish_with_done(
    tmp_path: Path, upstream: PacedUpstream
) -> None:
    proc, url = await start_router(tmp_path, upstream.url, drain_s=30.0)
    try:
        async with aiohttp.ClientSession() as s:
            body = {"model": GATED, "stream": True, "messages": MSG}
            async with s.post(f"{url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200
                head = await read_events(resp, 1)
                proc.send_signal(signal.SIGTERM)
                for _ in range(100):  # the listener closes while the stream is held open
                    if await refused(url):
                        break
                    await asyncio.sleep(0.05)
                else:
                    raise AssertionError("still accepting connections after SIGTERM")
                assert proc.poll() is None
                upstream.release.set()
                rest = await read_events(resp)
        code, err = await asyncio.to_thread(finish, proc)
    finally:
        stop_server(proc)
    events = head + rest
    assert events[-1] == b"data: [DONE]"
    assert not any(b'"error"' in e for e in events)
    text = "".join(
        c["delta"].get("content") or "" for e in events[:-1] for c in orjson.loads(e[6:])["choices"]
    )
    assert text == "first and the rest"
    assert code == 0, err
    assert "draining 1 request(s), 1 of them streaming, for up to 30 s" in err
    assert "drain deadline" not in err


async def test_streams_past_the_drain_deadline_end_with_an_error_event(
    tmp_path: Path, upstream: PacedUpstream
) -> None:
    proc, url = await start_router(tmp_path, upstream.url, drain_s=0.5)
    try:
        async with aiohttp.ClientSession() as s:
            streaming = await s.post(
                f"{url}/v1/chat/completions",
                json={"model": ENDLESS, "stream": True, "messages": MSG},
            )
            assert streaming.status == 200
            head = await read_events(streaming, 2)
            unstarted = asyncio.create_task(
                s.post(
                    f"{url}/v1/chat/completions",
                    json={"model": UNSTARTED, "stream": True, "messages": MSG},
                )
            )
            await asyncio.wait_for(upstream.arrived[UNSTARTED].wait(), 10)
            proc.send_signal(signal.SIGTERM)
            rest = await read_events(streaming)
            streaming.release()
            waiting = await unstarted
            payload = await waiting.json()
            waiting.release()
        code, err = await asyncio.to_thread(finish, proc)
    finally:
        stop_server(proc)
    events = head + rest
    assert len(events) > 3  # it streamed for the whole drain
    last = orjson.loads(events[-1].removeprefix(b"data: "))
    assert last["error"]["code"] == "server_shutting_down"
    assert b"data: [DONE]" not in events
    assert waiting.status == 503
    assert payload["error"]["code"] == "server_shutting_down"
    assert waiting.headers["x-request-id"]
    assert code == 0, err
    assert "drain deadline of 0.5 s passed: ending 1 stream(s)" in err
