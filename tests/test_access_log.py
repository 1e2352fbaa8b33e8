"""The access log and request ids: one JSON line per request without prompt text, and the
``x-request-id`` (the client's, or a generated one) on every response."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.http.access_log import access_log_sink
from proxy.http.log_stream import ACCESS_LOGGER, FLUSH_S, AfterBatch, CountingStreamHandler
from proxy.serve.record import Asked, RequestRecord, logged
from proxy.sim.script import Fault
from tests.conftest import Proxy, StartProxy

SECRET_PROMPT = "the launch code is swordfish-7781"
MSG = [{"role": "user", "content": SECRET_PROMPT}]
FIELDS = {
    "request_id",
    "hedged",
    "hedge_cost",
    "hedge_tokens",
    "arm",
    "complexity",
    "cache_hit",
    "key_id",
    "escalated_from",
    "endpoint",
    "stream",
    "intent",
    "model",
    "provider",
    "attempts",
    "status",
    "error",
    "ttft_ms",
    "total_ms",
    "prompt_tokens",
    "completion_tokens",
    "cost",
    "estimated",
}


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "model_router.access"]


@pytest.fixture
def access(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="model_router.access")
    return caplog


async def test_a_stream_logs_one_line_with_every_field_and_no_prompt(
    proxy: Proxy, access: pytest.LogCaptureFixture
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "auto:fast", "stream": True, "messages": MSG},
            headers={"x-request-id": "client-req-42"},
        ) as resp,
    ):
        body = await resp.read()
    assert resp.headers["x-request-id"] == "client-req-42"
    assert body.endswith(b"data: [DONE]\n\n")
    (line,) = access_lines(access)
    assert set(line) == FIELDS
    assert line["request_id"] == "client-req-42"
    assert line["intent"] == "auto prefer=fast tier=any"
    assert (line["model"], line["provider"]) == (resp.headers["x-router-model"], "openai")
    assert (line["attempts"], line["status"], line["stream"]) == (1, 200, True)
    assert line["ttft_ms"] > 0 and line["total_ms"] >= line["ttft_ms"]
    assert line["completion_tokens"] == 8 and line["prompt_tokens"] > 0 and line["cost"] > 0
    assert "swordfish" not in access.text


async def test_an_unusable_client_id_is_replaced_and_the_same_id_is_logged(
    proxy: Proxy, access: pytest.LogCaptureFixture
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "gpt-5-nano", "messages": MSG},
            headers={"x-request-id": "has spaces and\ttabs"},
        ) as resp,
    ):
        assert resp.status == 200
    rid = resp.headers["x-request-id"]
    assert len(rid) == 32 and rid.isalnum()
    (line,) = access_lines(access)
    assert line["request_id"] == rid and line["ttft_ms"] is None


async def test_every_failure_is_logged_with_its_status_and_returns_the_id(
    proxy: Proxy, access: pytest.LogCaptureFixture
) -> None:
    proxy.sim.state.set_fault("*", Fault(mode="status", status=500))
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "gpt-5-nano", "stream": True, "messages": MSG},
            headers={"x-request-id": "exhausted-1"},
        ) as resp:
            assert resp.status == 502 and resp.headers["x-request-id"] == "exhausted-1"
        async with s.post(
            f"{proxy.url}/v1/chat/completions", data=b"{", headers={"x-request-id": "bad-json-1"}
        ) as resp:
            assert resp.status == 400 and resp.headers["x-request-id"] == "bad-json-1"
    lines = {line["request_id"]: line for line in access_lines(access)}
    assert lines["exhausted-1"]["status"] == 502
    # One deployment failed, so the line names it (a failure of several names none).
    assert (lines["exhausted-1"]["model"], lines["exhausted-1"]["provider"]) == (
        "gpt-5-nano",
        "openai",
    )
    assert lines["exhausted-1"]["error"] == "server"
    assert lines["bad-json-1"]["status"] == 400
    assert "swordfish" not in access.text


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        pytest.param("GET", "/metrics", 200, id="metrics"),
        pytest.param("GET", "/healthz", 200, id="healthz"),
        pytest.param("GET", "/v1/models", 200, id="models"),
        pytest.param("GET", "/no/such/path", 404, id="not-found"),
        pytest.param("GET", "/v1/chat/completions", 405, id="wrong-method"),
    ],
)
async def test_every_endpoint_returns_the_request_id(
    proxy: Proxy, method: str, path: str, status: int
) -> None:
    async with aiohttp.ClientSession() as s:
        async with s.request(method, f"{proxy.url}{path}", headers={"x-request-id": "x-1"}) as r:
            assert (r.status, r.headers["x-request-id"]) == (status, "x-1")
        async with s.request(method, f"{proxy.url}{path}") as r:
            assert len(r.headers["x-request-id"]) == 32


async def test_too_large_body_gets_the_id_and_matches_the_log(
    start_proxy: StartProxy, access: pytest.LogCaptureFixture
) -> None:
    proxy = await start_proxy({"server": {"max_body_bytes": 1000}})
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            data=b'{"model": "auto", "x": "' + b"y" * 5000 + b'"}',
            headers={"x-request-id": "big-1"},
        ) as resp,
    ):
        assert resp.status == 413 and resp.headers["x-request-id"] == "big-1"
    (line,) = access_lines(access)
    assert (line["request_id"], line["status"]) == ("big-1", 413)


async def test_access_lines_are_batched_in_order_and_written_within_the_flush_delay() -> None:
    """The hot path's lines go out in one write within ``FLUSH_S``; a record logged the
    ordinary way (a warning on the same stream) never overtakes a line logged before it."""
    stream = io.StringIO()
    handler = CountingStreamHandler(stream)
    handler.write_line("a")
    handler.write_line("b")
    assert stream.getvalue() == ""  # batched while the loop runs
    await asyncio.sleep(FLUSH_S * 3)
    assert stream.getvalue() == "a\nb\n" and handler.written == 2
    handler.write_line("c")
    handler.emit(logging.LogRecord("x", logging.WARNING, __file__, 1, "warn", None, None))
    assert stream.getvalue() == "a\nb\nc\nwarn\n" and handler.written == 4
    handler.write_line("d")
    assert handler.stats()["ok"] and stream.getvalue().endswith("warn\nd\n")
    # As serve sets it up: other loggers' records go through their own handler on the same
    # stream, which writes the pending batch first.
    other = AfterBatch(stream, handler)
    handler.write_line("e")
    other.emit(logging.LogRecord("y", logging.WARNING, __file__, 1, "later", None, None))
    assert stream.getvalue().endswith("d\ne\nlater\n")


@pytest.fixture
def served_access_log() -> Iterator[tuple[CountingStreamHandler, io.StringIO]]:
    """The access logger as ``serve`` sets it up: one counting handler, no propagation."""
    logger = logging.getLogger(ACCESS_LOGGER)
    saved = (logger.handlers[:], logger.propagate, logger.level)
    stream = io.StringIO()
    handler = CountingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.propagate = False
    logger.setLevel(logging.INFO)
    try:
        yield handler, stream
    finally:
        logger.handlers[:], logger.propagate = saved[0], saved[1]
        logger.setLevel(saved[2])


async def test_the_fast_path_batches_only_while_the_formatter_prints_the_bare_line(
    served_access_log: tuple[CountingStreamHandler, io.StringIO],
) -> None:
    handler, stream = served_access_log
    record = RequestRecord(Asked("fast-1", "chat"), model="m", provider="p", status=200)
    line = orjson.dumps(logged(record)).decode()
    # Here, not in the fixture: pytest adds its capture handlers to the logger in between.
    logging.getLogger(ACCESS_LOGGER).handlers[:] = [handler]
    access_log_sink(record, 0.1)
    assert stream.getvalue() == ""  # batched: no record was made
    handler.settle()
    assert stream.getvalue() == line + "\n"
    # A formatter assigned past setFormatter is not trusted: the record goes the ordinary way.
    handler.formatter = logging.Formatter("access %(message)s")
    access_log_sink(record, 0.1)
    assert stream.getvalue() == f"{line}\naccess {line}\n"
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    access_log_sink(record, 0.1)
    assert stream.getvalue().endswith(f"\nINFO {line}\n")
    handler.setFormatter(logging.Formatter("%(message)s"))
    access_log_sink(record, 0.1)
    assert stream.getvalue().endswith(f"\nINFO {line}\n")  # batched again
    handler.settle()
    assert stream.getvalue().endswith(f"\nINFO {line}\n{line}\n") and handler.written == 4
