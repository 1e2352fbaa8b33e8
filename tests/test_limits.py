"""Limits on hostile input over real sockets: body size, JSON depth, message count, header and
body read deadlines (slowloris), and the connection cap; each with a clear answer."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.config import ConfigError, LimitsSettings, parse_config
from proxy.errors import RouterError
from proxy.http.hostile_input import parse_json
from proxy.sim.script import Profile
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

MSG = [{"role": "user", "content": "say something"}]
HOST = "127.0.0.1"


async def post(proxy: Proxy, body: bytes) -> tuple[int, dict[str, Any]]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        return resp.status, await resp.json()


def nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"k": value}
    return value


def upstream_calls(proxy: Proxy) -> int:
    return sum(proxy.sim.state.requests.values())


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def test_body_over_max_body_bytes_is_413(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"server": {"max_body_bytes": 4096}})
    body = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 5000}]})
    status, payload = await post(proxy, body)
    assert status == 413
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "request_too_large"
    assert upstream_calls(proxy) == 0


async def test_nesting_past_max_json_depth_is_400_naming_the_limit(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"max_json_depth": 8}})
    # The body object is level 1, so metadata's 7 levels reach 8 exactly; 8 levels do not fit.
    fits = {"model": "auto", "messages": MSG, "metadata": nested(7)}
    status, payload = await post(proxy, orjson.dumps(fits))
    assert status == 200, payload
    deep = {"model": "auto", "messages": MSG, "metadata": nested(8)}
    for body in (
        orjson.dumps(deep),
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 3000 + b"1" + b"}" * 3000,
    ):
        status, payload = await post(proxy, body)
        assert status == 400
        assert_valid("ErrorResponse", payload)
        assert payload["error"]["code"] == "json_too_deep"
        assert "max_json_depth (8)" in payload["error"]["message"]
    assert upstream_calls(proxy) == 1


async def test_brackets_inside_strings_do_not_count_as_nesting(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"limits": {"max_json_depth": 8}})
    code = "[" * 500 + "{" * 500
    status, payload = await post(
        proxy, orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": code}]})
    )
    assert status == 200, payload


def _depth_body(depth: int, pad: int) -> bytes:
    """A body whose metadata nests ``depth`` levels under the body object, padded to size."""
    return orjson.dumps({"model": "auto", "messages": MSG, "pad": "x" * pad, "m": nested(depth)})


@pytest.mark.parametrize(
    ("raw", "too_deep"),
    [
        # Short bodies (counted brackets), long ones (walked), and the walk's own verdict when
        # the count says a short body might be too deep.
        pytest.param(_depth_body(4, 0), False, id="short-counted"),
        pytest.param(_depth_body(7, 0), False, id="short-fits"),
        pytest.param(_depth_body(8, 0), True, id="short-too-deep"),
        pytest.param(_depth_body(7, 600), False, id="long-fits"),
        pytest.param(_depth_body(8, 600), True, id="long-too-deep"),
        pytest.param(orjson.dumps({"model": "auto", "x": "[{" * 20}), False, id="short-strings"),
    ],
)
def test_depth_check_is_the_same_for_short_and_long_bodies(raw: bytes, too_deep: bool) -> None:
    limits = LimitsSettings(max_json_depth=8)  # the body object is level 1
    if too_deep:
        with pytest.raises(RouterError) as caught:
            parse_json(raw, limits)
        assert caught.value.code == "json_too_deep"
    else:
        assert parse_json(raw, limits) == orjson.loads(raw)


async def test_more_messages_than_max_messages_is_400_naming_messages(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"max_messages": 3}})
    ok = {"model": "auto", "messages": MSG * 3}
    assert (await post(proxy, orjson.dumps(ok)))[0] == 200
    status, payload = await post(proxy, orjson.dumps({"model": "auto", "messages": MSG * 4}))
    assert status == 400
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["param"] == "messages"
    assert payload["error"]["code"] == "too_many_messages"
    assert "max_messages is 3" in payload["error"]["message"]
    assert upstream_calls(proxy) == 1


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        pytest.param({"max_depth": 3}, "limits.max_depth: unknown key", id="unknown"),
        pytest.param({"max_json_depth": 0}, "limits.max_json_depth: must be positive", id="zero"),
        pytest.param(
            {"header_timeout_s": "10"}, "limits.header_timeout_s: expected float", id="type"
        ),
    ],
)
def test_bad_limits_are_config_errors_naming_the_path(limits: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"limits": limits})
    assert str(err.value).startswith(message)


# --- deadlines ---------------------------------------------------------------------------------

REQUEST_HEAD = (
    b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
    b"Content-Type: application/json\r\nX-Padding: " + b"a" * 200
)


async def dribble(proxy: Proxy, prefix: bytes = b"", gap_s: float = 0.02) -> tuple[bytes, int]:
    """Send ``prefix`` whole, then request headers one byte at a time until the server
    closes the connection; returns what the server sent and how many bytes were dribbled."""
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    writer.write(prefix)
    received = b""
    if prefix:
        # Read the first answer whole (Content-Length framed) before dribbling the next.
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
    closed = asyncio.ensure_future(reader.read())
    sent = 0
    try:
        for byte in REQUEST_HEAD:
            if closed.done():
                break
            try:
                writer.write(bytes([byte]))
                await writer.drain()
            except ConnectionError:
                break
            sent += 1
            await asyncio.sleep(gap_s)
        received = await asyncio.wait_for(closed, 5)
    finally:
        writer.close()
    return received, sent


async def test_slowloris_headers_are_cut_off_by_the_header_deadline(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"header_timeout_s": 0.5}})
    received, sent = await dribble(proxy)
    # The server ended it long before the 4 KB of headers were through.
    assert sent < len(REQUEST_HEAD) // 2
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 ")
    assert b"connection: close" in head.lower()
    payload = orjson.loads(body)
    assert_valid("ErrorResponse", payload)
    assert "header_timeout_s" in payload["error"]["message"]
    assert upstream_calls(proxy) == 0


async def test_slowloris_on_a_kept_alive_connection_is_cut_off_too(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"header_timeout_s": 0.5}})
    first = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    received, sent = await dribble(proxy, prefix=first)
    assert sent < len(REQUEST_HEAD) // 2
    assert received.startswith(b"HTTP/1.1 408 ")


async def test_a_connection_that_sends_nothing_is_closed_silently_at_the_deadline(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"header_timeout_s": 0.3}})
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


async def test_a_request_in_progress_outlives_the_header_deadline(
    start_proxy: StartProxy,
) -> None:
    """The deadline covers headers only: a stream longer than it is not cut."""
    proxy = await start_proxy({"limits": {"header_timeout_s": 0.2}})
    proxy.sim.state.default.gap_ms = 60.0  # 8 tokens: ~0.5 s of answer
    body = {"model": "gpt-5-nano", "messages": MSG, "stream": True}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        raw = await resp.read()
    assert raw.endswith(b"data: [DONE]\n\n")


async def test_a_body_slower_than_body_timeout_gets_408(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"limits": {"body_timeout_s": 0.3}})
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            b'{"model": "auto", '
        )
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408 ")
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        payload = orjson.loads(await reader.readexactly(length))
    finally:
        writer.close()
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "request_timeout"
    assert "body_timeout_s (0.3 s)" in payload["error"]["message"]
    assert upstream_calls(proxy) == 0


# --- the connection cap -------------------------------------------------------------------


async def test_connections_past_max_connections_get_503_and_are_closed(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"max_connections": 2, "max_connections_per_address": 2}})
    health = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"

    async def open_and_ask() -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
        writer.write(health)
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        return reader, writer, head + await reader.readexactly(length)

    held = [await open_and_ask() for _ in range(2)]  # answered, so counted, and kept alive
    assert all(answer.startswith(b"HTTP/1.1 200 ") for *_, answer in held)
    reader, writer, answer = await open_and_ask()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 ")
    assert b"retry-after: 1" in head.lower() and b"connection: close" in head.lower()
    payload = orjson.loads(body)
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "too_many_connections"
    assert await asyncio.wait_for(reader.read(), 10) == b""  # and closed
    writer.close()
    # One held connection goes; a new one is served again.
    held[0][1].close()
    for _ in range(100):
        _, w, answer = await open_and_ask()
        w.close()
        if answer.startswith(b"HTTP/1.1 200 "):
            break
        await asyncio.sleep(0.02)
    assert answer.startswith(b"HTTP/1.1 200 ")
    held[1][1].close()


# --- bodies that cannot be decoded ----------------------------------------------------------


async def read_answer(reader: asyncio.StreamReader) -> tuple[bytes, Any]:
    """One whole answer with a Content-Length: its head and its JSON body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    return head, orjson.loads(await reader.readexactly(length))


def assert_refused_at_the_door(proxy: Proxy, payload: Any, code: str, records: Any) -> None:
    """A 400 in OpenAI's error shape with ``code``; nothing upstream, nothing logged as ERROR."""
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == code
    assert upstream_calls(proxy) == 0
    assert not [r for r in records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize(
    ("encoding", "body"),
    [
        pytest.param(b"gzip", b"this is not gzip", id="gzip"),
        pytest.param(b"deflate", b"this is not deflate", id="deflate"),
    ],
)
async def test_a_body_that_does_not_decode_for_its_content_encoding_is_400_not_500(
    start_proxy: StartProxy, encoding: bytes, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    """aiohttp decompresses the body while it is read; a body that is not what its
    Content-Encoding says is the client's mistake, so a 400 naming the encoding, never a 500."""
    proxy = await start_proxy()
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Encoding: " + encoding + b"\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        head, payload = await read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert_refused_at_the_door(proxy, payload, "invalid_content_encoding", caplog.records)
    assert encoding.decode() in payload["error"]["message"]


async def test_chunked_framing_broken_mid_body_is_400_at_once_not_a_body_timeout(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """A bad chunk size after the first chunk made aiohttp's parser fail while the handler was
    already reading the body, which then waited for body_timeout_s and answered 408; the
    request is malformed, so it is a 400 as soon as the bad bytes arrive. (On a loaded box the
    handler may not have started when they do: the hook finds the body in the queue then.)"""
    proxy = await start_proxy({"limits": {"body_timeout_s": 60}})
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"mod\r\n'
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the handler is now waiting for the rest of the body
        writer.write(b"zz\r\nxx\r\n0\r\n\r\n")
        await writer.drain()
        head, payload = await read_answer(reader)
    finally:
        writer.close()
    assert head.startswith(b"HTTP/1.1 400 "), head
    assert b"connection: close" in head.lower()
    assert_refused_at_the_door(proxy, payload, "invalid_body", caplog.records)


async def test_chunked_framing_broken_while_the_request_waits_its_turn_is_400_not_a_timeout(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    """The same broken body, pipelined behind a slow request: its bad bytes arrive before its
    handler starts, so the body it will read is still queued. It must fail then too."""
    proxy = await start_proxy({"limits": {"body_timeout_s": 60}})
    proxy.sim.state.default = Profile(ttft_ms=800.0, gap_ms=1.0, tokens=4)
    slow = orjson.dumps({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]})
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(slow)
            + slow
            + b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'5\r\n{"mod\r\n'
        )
        await writer.drain()
        await asyncio.sleep(0.2)  # the first request is still waiting for its upstream
        writer.write(b"zz\r\nxx\r\n0\r\n\r\n")
        await writer.drain()
        answers = [await read_answer(reader) for _ in range(2)]
    finally:
        writer.close()
    (first, _), (second, payload) = answers
    assert first.startswith(b"HTTP/1.1 200 "), first
    assert second.startswith(b"HTTP/1.1 400 "), second
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "invalid_body"
    assert upstream_calls(proxy) == 1
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
