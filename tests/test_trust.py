"""Trust (issue 20), over real sockets: Authorization bytes that cannot make a 500, the
per-address connection cap and the first-request deadline, cancelled and broken streams
charged (usage log, budget), Expect: 100-continue, a 413 that closes, bounded echoes.
Raw sockets where the SDK cannot send the bytes. The log-leak test is test_log_hygiene.py."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson
import pytest

from proxy.accounting.ledger import ACCOUNTING
from proxy.decide.tokens import hash_key
from proxy.sim.script import Fault, Profile
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

HOST = "127.0.0.1"
KEY = "mr-trust-key-0303"
MSG = [{"role": "user", "content": "tell me a long story"}]


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def exchange(
    proxy: Proxy, data: bytes, *, source: str | None = None
) -> tuple[bytes, dict[str, Any] | None, bool]:
    """Send raw bytes; returns (status line + headers, JSON body or None, closed after)."""
    reader, writer = await asyncio.open_connection(
        HOST, port_of(proxy), local_addr=(source, 0) if source else None
    )
    try:
        writer.write(data)
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        try:
            closed = await asyncio.wait_for(reader.read(1), 3) == b""
        except TimeoutError:
            closed = False
    finally:
        writer.close()
    return head, orjson.loads(body) if body else None, closed


def request(headers: bytes, body: bytes = b"") -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + headers + b"Content-Length: %d\r\n\r\n" % len(body)
    ) + body


BODY = orjson.dumps({"model": "gpt-5-nano", "messages": MSG})


# --- 2. Authorization: any bytes give a 401 --------------------------------------------------


@pytest.mark.parametrize(
    "token",
    [
        pytest.param(b"\xff\xfe\xfd", id="not-utf8"),
        pytest.param("clé-secrète".encode("latin-1"), id="latin-1"),
        pytest.param("ключ".encode(), id="utf8-cyrillic"),
        pytest.param(b"mr-\xed\xa0\x80-x", id="encoded-surrogate"),
        pytest.param(KEY.encode() + b"\x80", id="valid-key-plus-a-byte"),
    ],
)
async def test_any_bytes_in_authorization_get_a_401_in_openai_shape(
    start_proxy: StartProxy, token: bytes
) -> None:
    proxy = await start_proxy({"keys": [{"id": "t", "sha256": hash_key(KEY)}]})
    head, payload, _ = await exchange(proxy, request(b"Authorization: Bearer " + token + b"\r\n"))
    assert head.startswith(b"HTTP/1.1 401 "), head
    assert payload is not None
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "invalid_api_key"
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_experiment_matching_hashes_non_ascii_tokens_without_failing(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        {
            "experiments": [
                {"name": "e", "percent": 50, "match": {"key": "ab" * 4}, "tier": "economy"}
            ]
        }
    )
    body = orjson.dumps({"model": "auto", "messages": MSG})
    head, payload, _ = await exchange(proxy, request(b"Authorization: Bearer \xff\xe9\r\n", body))
    assert head.startswith(b"HTTP/1.1 200 "), (head, payload)


# --- 4. connections per address --------------------------------------------------------------


async def open_idle(proxy: Proxy, source: str = HOST) -> tuple[asyncio.StreamReader, Any]:
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy), local_addr=(source, 0))
    return reader, writer


HEALTH = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


async def test_one_address_cannot_take_every_connection(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"limits": {"max_connections": 50, "max_connections_per_address": 3}})
    held = [await open_idle(proxy) for _ in range(3)]
    try:
        await asyncio.sleep(0.1)  # the server has counted them
        head, payload, closed = await exchange(proxy, HEALTH)
        assert head.startswith(b"HTTP/1.1 429 "), head
        assert b"retry-after: 1" in head.lower() and closed
        assert payload is not None
        assert_valid("ErrorResponse", payload)
        assert payload["error"]["code"] == "too_many_connections_from_address"
        # Another address is served while this one is at its share.
        head, _, _ = await exchange(proxy, HEALTH, source="127.0.0.2")
        assert head.startswith(b"HTTP/1.1 200 ")
    finally:
        for _, writer in held:
            writer.close()
    for _ in range(100):  # the held ones are gone: this address is served again
        head, _, _ = await exchange(proxy, HEALTH)
        if head.startswith(b"HTTP/1.1 200 "):
            break
        await asyncio.sleep(0.02)
    assert head.startswith(b"HTTP/1.1 200 ")


async def test_default_share_is_an_eighth_of_max_connections(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"limits": {"max_connections": 16}})
    held = [await open_idle(proxy) for _ in range(2)]
    try:
        await asyncio.sleep(0.1)
        head, _, _ = await exchange(proxy, HEALTH)
        assert head.startswith(b"HTTP/1.1 429 "), head
    finally:
        for _, writer in held:
            writer.close()


async def test_trusted_proxy_addresses_are_exempt_from_the_share(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {
            "limits": {
                "max_connections": 50,
                "max_connections_per_address": 1,
                "trusted_proxies": ["127.0.0.0/30"],
            }
        }
    )
    held = [await open_idle(proxy) for _ in range(3)]
    try:
        head, _, _ = await exchange(proxy, HEALTH)
        assert head.startswith(b"HTTP/1.1 200 "), head
    finally:
        for _, writer in held:
            writer.close()


@pytest.mark.parametrize(
    ("trusted", "logged"),
    [
        pytest.param(["127.0.0.1"], "203.0.113.9", id="trusted-proxy"),
        pytest.param([], "127.0.0.1", id="untrusted-peer"),
    ],
)
async def test_x_forwarded_for_names_the_client_only_from_a_trusted_proxy(
    start_proxy: StartProxy,
    caplog: pytest.LogCaptureFixture,
    trusted: list[str],
    logged: str,
) -> None:
    proxy = await start_proxy(
        {
            "keys": [{"id": "t", "sha256": hash_key(KEY)}],
            "limits": {"trusted_proxies": trusted},
        }
    )
    caplog.set_level("INFO", logger="model_router.auth")
    forwarded = b"X-Forwarded-For: 198.51.100.7, 203.0.113.9\r\nAuthorization: Bearer nope\r\n"
    head, _, _ = await exchange(proxy, request(forwarded, BODY))
    assert head.startswith(b"HTTP/1.1 401 ")
    [line] = [r.getMessage() for r in caplog.records if "refused" in r.getMessage()]
    assert f"from {logged}:" in line and "/v1/chat/completions" in line


async def test_a_new_connection_that_sends_nothing_gets_the_shorter_deadline(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"limits": {"first_request_timeout_s": 0.3, "header_timeout_s": 30}})
    reader, writer = await open_idle(proxy)
    try:
        # Closed silently long before header_timeout_s: it never sent a thing.
        assert await asyncio.wait_for(reader.read(), 10) == b""
    finally:
        writer.close()


# --- 5. cancelled and broken streams are charged ----------------------------------------------


async def until(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    for _ in range(int(within_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition not reached in time")


async def rows(proxy: Proxy, count: int) -> list[dict[str, Any]]:
    usage = proxy.app[ACCOUNTING].usage
    assert usage is not None
    await until(lambda: usage.written_rows >= count)
    conn = sqlite3.connect(usage.path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]
    finally:
        conn.close()


async def stream_and_leave(
    proxy: Proxy, model: str, after: int, key: str | None = None, content: str = "go on"
) -> int:
    """Read ``after`` content chunks of a stream, then drop the connection; the status."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = {"model": model, "stream": True, "messages": [{"role": "user", "content": content}]}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body, headers=headers) as resp,
    ):
        if resp.status != 200:
            return resp.status
        seen = 0
        async for line in resp.content:
            if line.startswith(b"data: {") and b'"content":"' in line.replace(b" ", b""):
                seen += 1
                if seen >= after:
                    break
    return 200


@pytest.mark.parametrize("model", ["gpt-5-nano", "claude-haiku-4-5", "kimi-k2"])
async def test_a_cancelled_stream_is_charged_for_what_the_upstream_sent(
    start_proxy: StartProxy, model: str
) -> None:
    proxy = await start_proxy()
    proxy.sim.state.default = Profile(ttft_ms=5.0, gap_ms=15.0, tokens=400)
    await stream_and_leave(proxy, model, after=60)
    [row] = await rows(proxy, 1)
    await until(lambda: proxy.sim.state.open_streams == 0)
    sent = sum(proxy.sim.state.chunks_sent.values())
    assert sent >= 50
    assert row["status"] == 499 and row["estimated"] == 1
    assert abs(row["completion_tokens"] - sent) <= 0.1 * sent, (row["completion_tokens"], sent)
    assert row["prompt_tokens"] > 0 and row["cost"] > 0
    assert row["model"] is not None


async def test_leaving_before_the_first_token_is_charged_for_the_prompt(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy()
    proxy.sim.state.set_fault("*", Fault(mode="hang_first_token"))
    body = {"model": "gpt-5-nano", "stream": True, "messages": MSG}
    async with aiohttp.ClientSession() as s:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await s.post(f"{proxy.url}/v1/chat/completions", json=body)
    [row] = await rows(proxy, 1)
    assert row["status"] == 499 and row["estimated"] == 1
    assert row["model"] == "gpt-5-nano" and row["completion_tokens"] == 0
    assert row["prompt_tokens"] > 0 and row["cost"] > 0


async def test_a_broken_stream_is_charged_and_flagged_estimated(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    proxy.sim.state.set_fault("*", Fault(mode="close", after_chunks=30))
    body = {"model": "gpt-5-nano", "stream": True, "messages": MSG}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        raw = await resp.read()
    assert b'"error"' in raw
    proxy.sim.state.default = Profile()
    [row] = await rows(proxy, 1)
    assert row["status"] == 502 and row["estimated"] == 1
    assert row["completion_tokens"] == 8  # the default profile's 8 chunks all came
    assert row["cost"] > 0


async def test_a_complete_stream_uses_the_upstreams_usage(proxy: Proxy) -> None:
    body = {"model": "gpt-5-nano", "stream": True, "messages": MSG}
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        raw = await resp.read()
    # The router asked for usage; the client did not, so it gets no usage chunk.
    assert proxy.sim.state.last_body["gpt-5-nano"]["stream_options"] == {"include_usage": True}
    events = [orjson.loads(e[6:]) for e in raw.split(b"\n\n") if e.startswith(b"data: {")]
    assert events and not [e for e in events if isinstance(e.get("usage"), dict)]
    [row] = await rows(proxy, 1)
    assert row["estimated"] == 0 and row["completion_tokens"] == 8


async def test_a_key_that_cancels_every_stream_is_refused_once_its_budget_is_spent(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        {"keys": [{"id": "quitter", "sha256": hash_key(KEY), "daily_usd": 0.01}]}
    )
    proxy.sim.state.default = Profile(ttft_ms=5.0, gap_ms=10.0, tokens=400)
    statuses = []
    for _ in range(40):
        status = await stream_and_leave(
            proxy, "claude-opus-4-1", after=20, key=KEY, content="word " * 50
        )
        statuses.append(status)
        if status == 429:
            break
        await rows(proxy, len(statuses))  # its charge is in (the sink runs as it ends)
    assert statuses[-1] == 429, statuses
    assert statuses[:-1] and set(statuses[:-1]) == {200}
    spent = sum(r["cost"] for r in await rows(proxy, len(statuses)))
    assert spent >= 0.01
    # Each stream cost something: the refusal came after a handful of them, not at once.
    assert len(statuses) > 2


# --- 6. Expect: 100-continue, 413 closes, bounded echoes --------------------------------------


async def test_expect_continue_with_a_body_over_the_limit_is_413_at_once(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy()
    head, payload, closed = await exchange(
        proxy,
        request(b"Expect: 100-continue\r\n")[:-4].replace(
            b"Content-Length: 0", b"Content-Length: 100000000"
        )
        + b"\r\n\r\n",
    )
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert payload is not None and payload["error"]["code"] == "request_too_large"
    assert closed


async def test_expect_continue_within_the_limit_gets_100_then_the_answer(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    try:
        head = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nExpect: 100-continue\r\n"
            b"Content-Length: %d\r\n\r\n" % len(BODY)
        )
        writer.write(head)
        interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert interim.startswith(b"HTTP/1.1 100 Continue")
        writer.write(BODY)
        final = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert final.startswith(b"HTTP/1.1 200 ")
    finally:
        writer.close()


async def test_a_413_closes_the_connection_without_reading_the_rest(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"server": {"max_body_bytes": 4096}})
    data = (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 10000000\r\n\r\n" + b"x" * 8192
    )
    head, payload, closed = await exchange(proxy, data)
    assert head.startswith(b"HTTP/1.1 413 ") and b"connection: close" in head.lower()
    assert payload is not None
    assert_valid("ErrorResponse", payload)
    assert closed


async def test_a_4mb_model_name_is_echoed_at_most_256_characters(proxy: Proxy) -> None:
    body = orjson.dumps({"model": "m" * 4_000_000, "messages": MSG})
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", data=io.BytesIO(body)) as resp,
    ):
        payload = await resp.json()
    assert resp.status == 404
    message = payload["error"]["message"]
    assert message.count("m") - "GET /v1/models".count("m") < 300 and len(message) < 600
