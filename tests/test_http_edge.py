"""HTTP framing and route misses at the edge, over raw sockets against the real app: an
HTTP/1.0 keep-alive client's stream ends with the connection (RFC 9112 6.3), a 405 says what
is allowed (RFC 9110 15.5.6), and 404/405 misses reach the access log."""

from __future__ import annotations

import asyncio
import gzip
import logging

import orjson
import pytest

from tests.conftest import Proxy

HOST = "127.0.0.1"


def port_of(proxy: Proxy) -> int:
    return int(proxy.url.rsplit(":", 1)[1])


async def test_an_http10_keep_alive_stream_ends_with_the_connection(proxy: Proxy) -> None:
    body = orjson.dumps(
        {"model": "auto:fast", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
    )
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    )
    # keepalive_timeout_s is 75 s: before the fix the read waited for it (the test's timeout).
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = out.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"keep-alive" not in head.lower() and b"content-length" not in head.lower()
    assert payload.rstrip().endswith(b"data: [DONE]")


async def test_an_http10_keep_alive_json_answer_keeps_the_connection(proxy: Proxy) -> None:
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    for _ in range(2):  # a length-framed answer: the connection serves the next request
        writer.write(b"GET /healthz HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert b"Connection: keep-alive" in head
        length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
        assert orjson.loads(await reader.readexactly(length)) == {"status": "ok"}
    writer.close()


async def exchange(proxy: Proxy, request: bytes) -> tuple[bytes, bytes]:
    reader, writer = await asyncio.open_connection(HOST, port_of(proxy))
    writer.write(request)
    out = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = out.partition(b"\r\n\r\n")
    return head, body


def access_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [orjson.loads(r.getMessage()) for r in caplog.records if r.name == "model_router.access"]


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        pytest.param("GET", "/v1/chat/completions", b"POST", id="get-chat"),
        pytest.param("DELETE", "/v1/models", b"GET,HEAD", id="delete-models"),
        pytest.param("OPTIONS", "/v1/completions", b"POST", id="options-completions"),
    ],
)
async def test_a_405_names_the_allowed_methods_and_is_logged(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, method: str, path: str, allow: bytes
) -> None:
    caplog.set_level(logging.INFO, logger="model_router.access")
    head, body = await exchange(
        proxy, f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n".encode()
    )
    assert head.startswith(b"HTTP/1.1 405")
    allowed = [line for line in head.split(b"\r\n") if line.lower().startswith(b"allow:")]
    assert allowed and set(allowed[0].split(b":", 1)[1].strip().split(b",")) == set(
        allow.split(b",")
    )
    assert orjson.loads(body)["error"]["code"] == "method_not_allowed"
    (line,) = access_lines(caplog)
    assert (line["method"], line["path"], line["status"]) == (method, path, 405)


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/v1/assistants", "not_found"),
        # The Vercel AI SDK's default: the Responses API, answered with how to reach chat.
        ("/v1/responses", "unsupported_endpoint"),
    ],
)
async def test_a_route_we_do_not_serve_is_404_in_openai_shape_and_logged(
    proxy: Proxy, caplog: pytest.LogCaptureFixture, path: str, code: str
) -> None:
    caplog.set_level(logging.INFO, logger="model_router.access")
    head, body = await exchange(
        proxy,
        f"POST {path}?key=secret HTTP/1.1\r\n".encode()
        + b"Host: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    )
    assert head.startswith(b"HTTP/1.1 404")
    assert orjson.loads(body)["error"]["code"] == code
    (line,) = access_lines(caplog)
    assert line == {
        "request_id": line["request_id"],
        "key_id": None,
        "method": "POST",
        "path": path,  # never the query
        "status": 404,
        "error": code,
    }
    assert "secret" not in caplog.text


# --- error messages that name the right thing ----------------------------------------------

MSG = [{"role": "user", "content": "hi"}]


async def post(proxy: Proxy, body: bytes) -> tuple[int, dict[str, object]]:
    head, payload = await exchange(
        proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body,
    )
    error: dict[str, object] = orjson.loads(payload)["error"]
    return int(head.split()[1]), error


async def test_an_unknown_entry_in_models_is_reported_as_models(proxy: Proxy) -> None:
    body = {"model": "auto", "models": ["gpt-4o", "nope-model"], "messages": MSG}
    status, error = await post(proxy, orjson.dumps(body))
    assert status == 404 and error["param"] == "models"
    assert "'nope-model' (in 'models')" in str(error["message"])
    # An unknown pinned model is still the model's.
    status, error = await post(proxy, orjson.dumps({"model": "nope-model", "messages": MSG}))
    assert status == 404 and error["param"] == "model"
    assert not proxy.sim.state.requests


async def test_a_non_utf8_byte_is_reported_at_its_offset(proxy: Proxy) -> None:
    body = b'{"model":"auto","messages":[{"role":"user","content":"caf\xe9"}]}'
    status, error = await post(proxy, body)
    assert status == 400 and error["code"] == "invalid_json"
    message = str(error["message"])
    offset = body.index(b"\xe9")
    assert f"byte 0xe9 at offset {offset}" in message
    assert "char 0" not in message and "line 1" not in message


@pytest.mark.parametrize("literal", [b"99999999999999999999999", b"1e23"])
async def test_a_max_tokens_too_large_for_any_integer_says_so(proxy: Proxy, literal: bytes) -> None:
    body = (
        b'{"model":"auto","max_tokens":'
        + literal
        + b',"messages":[{"role":"user","content":"hi"}]}'
    )
    status, error = await post(proxy, body)
    assert status == 400 and error["param"] == "max_tokens", error
    assert "too large" in str(error["message"]) and "non-negative" not in str(error["message"])
    assert not proxy.sim.state.requests


# --- Content-Encoding ------------------------------------------------------------------------

CHAT = orjson.dumps({"model": "auto", "messages": MSG})


async def encoded(proxy: Proxy, body: bytes, encoding: str) -> tuple[bytes, bytes]:
    return await exchange(
        proxy,
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: %s\r\nContent-Length: %d\r\n\r\n"
        % (encoding.encode(), len(body))
        + body,
    )


@pytest.mark.parametrize(
    ("encoding", "body", "named"),
    [
        pytest.param("br", CHAT, "br", id="brotli"),
        pytest.param("zstd", CHAT, "zstd", id="zstandard"),
        pytest.param(
            "gzip, gzip", gzip.compress(gzip.compress(CHAT)), "more than one", id="stacked"
        ),
        pytest.param("compress", CHAT, "compress", id="unix-compress"),
    ],
)
async def test_a_content_encoding_we_cannot_decode_is_415_naming_it(
    proxy: Proxy, encoding: str, body: bytes, named: str
) -> None:
    head, payload = await encoded(proxy, body, encoding)
    assert head.split()[1] == b"415", head + payload
    assert b"Accept-Encoding: gzip, deflate" in head
    error = orjson.loads(payload)["error"]
    assert error["code"] == "unsupported_content_encoding"
    assert "Content-Encoding" in error["message"] and named in error["message"]
    assert "((" not in error["message"] and "))" not in error["message"]
    assert not proxy.sim.state.requests


async def test_x_gzip_is_gzip(proxy: Proxy) -> None:
    head, payload = await encoded(proxy, gzip.compress(CHAT), "x-gzip")
    assert head.startswith(b"HTTP/1.1 200"), payload
    assert orjson.loads(payload)["choices"]
    head, payload = await encoded(proxy, b"not gzip at all", "X-GZIP")
    assert head.startswith(b"HTTP/1.1 400")
    assert orjson.loads(payload)["error"]["code"] == "invalid_content_encoding"


# --- oversized heads ---------------------------------------------------------------------


def head_with(path: str = "/v1/chat/completions", extra: bytes = b"") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n".encode()
        + extra
        + b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(CHAT)
        + CHAT
    )


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [
        pytest.param(
            head_with("/v1/chat/completions?" + "a" * 9000), b"414", "uri_too_long", id="uri"
        ),
        pytest.param(
            head_with(extra=b"Authorization: Bearer " + b"a" * 8200 + b"\r\n"),
            b"431",
            "request_header_fields_too_large",
            id="header-value",
        ),
        pytest.param(
            head_with(extra=b"X-" + b"n" * 8200 + b": v\r\n"),
            b"431",
            "request_header_fields_too_large",
            id="header-name",
        ),
        pytest.param(
            head_with(extra=b"".join(b"X-H%d: v\r\n" % i for i in range(200))),
            b"431",
            "request_header_fields_too_large",
            id="too-many-headers",
        ),
    ],
)
async def test_an_oversized_head_gets_414_or_431_in_openai_shape(
    proxy: Proxy, request_bytes: bytes, status: bytes, code: str
) -> None:
    head, payload = await exchange(proxy, request_bytes)
    assert head.split()[1] == status, head
    assert orjson.loads(payload)["error"]["code"] == code
    assert b"aaaa" not in payload  # never the client's bytes back
    assert not proxy.sim.state.requests
