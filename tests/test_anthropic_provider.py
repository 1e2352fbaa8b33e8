"""AnthropicProvider over real sockets: a small Messages server in the test, and the simulator."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.providers.anthropic import AnthropicProvider
from proxy.providers.base import UnsupportedFeatureError, UpstreamError, UpstreamRequest
from proxy.providers.session import UpstreamSession
from proxy.sim.anthropic_api import add_anthropic_routes
from proxy.sim.launch import make_sim_app
from proxy.sim.script import Fault, Profile
from proxy.sim.server import SimState
from tests.openapi_schema import assert_valid

MODEL = "claude-haiku-4-5"
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


def assert_chunks_valid(chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def sse(kind: str, **data: Any) -> bytes:
    return f"event: {kind}\ndata: ".encode() + orjson.dumps({"type": kind, **data}) + b"\n\n"


def text_stream(
    *pieces: str, stop: str = "end_turn", usage: tuple[int, int] = (12, 4)
) -> list[bytes]:
    message = {"id": "msg_t", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    message["usage"] = {"input_tokens": usage[0], "output_tokens": 1}
    return [
        sse("message_start", message=message),
        sse("content_block_start", index=0, content_block={"type": "text", "text": ""}),
        sse("ping"),
        *(
            sse("content_block_delta", index=0, delta={"type": "text_delta", "text": p})
            for p in pieces
        ),
        sse("content_block_stop", index=0),
        sse(
            "message_delta",
            delta={"stop_reason": stop, "stop_sequence": None},
            usage={"output_tokens": usage[1]},
        ),
        sse("message_stop"),
    ]


@dataclass
class Upstream:
    parts: list[bytes] = field(default_factory=list)
    json: dict[str, Any] = field(default_factory=dict)
    error: tuple[int, dict[str, Any], dict[str, str]] | None = None
    requests: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)


def fake_anthropic(up: Upstream) -> web.Application:
    async def messages(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        up.requests.append((request.path, dict(request.headers), body))
        if up.error is not None:
            status, payload, headers = up.error
            return web.Response(
                status=status,
                body=orjson.dumps(payload),
                headers=headers,
                content_type="application/json",
            )
        if not body.get("stream"):
            return web.Response(body=orjson.dumps(up.json), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in up.parts:
            await resp.write(part)
            await asyncio.sleep(0)
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/v1/messages", messages)
    return app


@pytest.fixture
def up() -> Upstream:
    return Upstream()


@pytest.fixture
async def session() -> AsyncIterator[UpstreamSession]:
    s = UpstreamSession()
    yield s
    await s.close()


@pytest.fixture
async def provider(
    up: Upstream, aiohttp_server: ServerFactory, session: UpstreamSession
) -> AnthropicProvider:
    server = await aiohttp_server(fake_anthropic(up))
    return AnthropicProvider(
        "anthropic-test", base_url=str(server.make_url("")), api_key="sk-ant-test", session=session
    )


def chat(stream: bool, **fields: Any) -> UpstreamRequest:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], **fields}
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
    return UpstreamRequest("chat", MODEL, body, stream)


async def collect(stream: Any) -> tuple[list[dict[str, Any]], bool, UpstreamError | None]:
    """Chunks, whether [DONE] came, and the error that ended the stream, if any."""
    chunks: list[dict[str, Any]] = []
    done, error = False, None
    try:
        async for raw in stream:
            assert raw.startswith(b"data: ") and raw.endswith(b"\n\n"), raw
            assert not done, "nothing may follow [DONE]"
            if raw == b"data: [DONE]\n\n":
                done = True
            else:
                chunks.append(orjson.loads(raw[6:-2]))
    except UpstreamError as exc:
        error = exc
    finally:
        await stream.aclose()
    return chunks, done, error


def content(chunks: list[dict[str, Any]]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


async def test_streams_text_with_the_messages_headers(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.parts = text_stream("Hel", "lo", usage=(12, 4))
    chunks, done, error = await collect(await provider.stream(chat(True)))
    assert error is None and done
    assert_chunks_valid(chunks)
    assert content(chunks) == "Hello"
    assert chunks[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 4, "total_tokens": 16}
    [(path, headers, body)] = up.requests
    assert path == "/v1/messages"
    assert headers["x-api-key"] == "sk-ant-test"
    assert headers["anthropic-version"] == "2023-06-01"
    assert body == {
        "model": MODEL,
        "max_tokens": 4096,
        "messages": [{"role": "user", "content": [{"type": "text", "text": "hello"}]}],
        "stream": True,
    }


async def test_events_split_at_every_byte_still_translate(
    provider: AnthropicProvider, up: Upstream
) -> None:
    raw = b"".join(text_stream("split", " me"))
    up.parts = [raw[i : i + 1] for i in range(len(raw))]
    chunks, done, _ = await collect(await provider.stream(chat(True)))
    assert done and content(chunks) == "split me"


async def test_complete_returns_a_chat_completion(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.json = {
        "id": "msg_c",
        "type": "message",
        "role": "assistant",
        "model": MODEL,
        "content": [{"type": "text", "text": "Hi"}],
        "stop_reason": "max_tokens",
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    out = await provider.complete(chat(False, max_tokens=1))
    assert_valid("CreateChatCompletionResponse", out)
    assert out["choices"][0]["message"]["content"] == "Hi"
    assert out["choices"][0]["finish_reason"] == "length"
    assert up.requests[0][2]["max_tokens"] == 1
    assert "stream" not in up.requests[0][2]


async def test_streams_tool_calls_with_the_upstream_usage(
    provider: AnthropicProvider, up: Upstream
) -> None:
    message = {"id": "msg_t", "type": "message", "role": "assistant", "model": MODEL, "content": []}
    message["usage"] = {"input_tokens": 410, "output_tokens": 1}
    block = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
    up.parts = [
        sse("message_start", message=message),
        sse("content_block_start", index=0, content_block=block),
        sse(
            "content_block_delta",
            index=0,
            delta={"type": "input_json_delta", "partial_json": '{"city": '},
        ),
        sse(
            "content_block_delta",
            index=0,
            delta={"type": "input_json_delta", "partial_json": '"Oslo"}'},
        ),
        sse("content_block_stop", index=0),
        sse("message_delta", delta={"stop_reason": "tool_use"}, usage={"output_tokens": 38}),
        sse("message_stop"),
    ]
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    chunks, done, _ = await collect(
        await provider.stream(chat(True, tools=[tool], tool_choice="required"))
    )
    assert done
    assert_chunks_valid(chunks)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["id"] == "toolu_1"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Oslo"}'
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 410,
        "completion_tokens": 38,
        "total_tokens": 448,
    }
    assert up.requests[0][2]["tool_choice"] == {"type": "any"}


def error_body(kind: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": f"fake {kind}"}}


@pytest.mark.parametrize(
    ("status", "kind_in_body", "headers", "kind", "retry_after"),
    [
        pytest.param(
            429, "rate_limit_error", {"retry-after": "12"}, "rate_limited", 12.0, id="429"
        ),
        pytest.param(529, "overloaded_error", {}, "overloaded", None, id="529"),
        pytest.param(500, "api_error", {}, "server", None, id="500"),
        pytest.param(401, "authentication_error", {}, "auth", None, id="401"),
        pytest.param(400, "invalid_request_error", {}, "client", None, id="400"),
        pytest.param(404, "not_found_error", {}, "server", None, id="404"),
    ],
)
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "complete"])
async def test_error_statuses_map_to_failure_kinds(
    provider: AnthropicProvider,
    up: Upstream,
    status: int,
    kind_in_body: str,
    headers: dict[str, str],
    kind: str,
    retry_after: float | None,
    streaming: bool,
) -> None:
    up.error = (status, error_body(kind_in_body), headers)
    with pytest.raises(UpstreamError) as caught:
        if streaming:
            await provider.stream(chat(True))
        else:
            await provider.complete(chat(False))
    err = caught.value
    assert (err.kind, err.status, err.retry_after, err.code) == (
        kind,
        status,
        retry_after,
        kind_in_body,
    )
    assert "sk-ant-test" not in str(err) and "sk-ant-test" not in repr(err)


async def test_a_mid_stream_error_event_raises_after_the_chunks_before_it(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.parts = [
        *text_stream("one")[:4],
        sse("error", error={"type": "overloaded_error", "message": "Overloaded"}),
    ]
    chunks, done, error = await collect(await provider.stream(chat(True)))
    assert content(chunks) == "one" and not done
    assert error is not None and error.kind == "overloaded"


async def test_a_stream_cut_before_message_stop_is_incomplete(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.parts = text_stream("cut")[:4]
    chunks, done, error = await collect(await provider.stream(chat(True)))
    assert content(chunks) == "cut" and not done
    assert error is not None and error.kind == "server"


async def test_bytes_that_are_not_sse_are_a_protocol_error(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.parts = [*text_stream("x")[:2], b"<html>502 Bad Gateway</html>\n\n"]
    _, done, error = await collect(await provider.stream(chat(True)))
    assert not done
    assert error is not None and error.kind == "protocol"


async def test_an_event_of_the_wrong_shape_is_a_protocol_error(
    provider: AnthropicProvider, up: Upstream
) -> None:
    up.parts = [*text_stream("x")[:1], sse("content_block_delta", index="first", delta={})]
    _, done, error = await collect(await provider.stream(chat(True)))
    assert not done
    assert error is not None and error.kind == "protocol"


async def test_a_base_url_ending_in_v1_is_accepted(
    up: Upstream, aiohttp_server: ServerFactory, session: UpstreamSession
) -> None:
    server = await aiohttp_server(fake_anthropic(up))
    p = AnthropicProvider("a", base_url=str(server.make_url("/v1/")), api_key="k", session=session)
    up.parts = text_stream("ok")
    _, done, _ = await collect(await p.stream(chat(True)))
    assert done and up.requests[0][0] == "/v1/messages"


async def test_unsupported_requests_are_refused_before_sending(
    provider: AnthropicProvider, up: Upstream
) -> None:
    with pytest.raises(UnsupportedFeatureError) as caught:
        await provider.stream(chat(True, n=2))
    assert caught.value.param == "n"
    with pytest.raises(UnsupportedFeatureError):
        await provider.complete(
            UpstreamRequest("completions", MODEL, {"model": MODEL, "prompt": "x"}, False)
        )
    assert up.requests == []


# The simulated Anthropic upstream (proxy/sim) through the same provider.


@pytest.fixture
async def sim(
    aiohttp_server: ServerFactory, session: UpstreamSession
) -> tuple[SimState, AnthropicProvider]:
    state = SimState(scale=0.0, default=Profile(tokens=5))
    app = make_sim_app(state)
    add_anthropic_routes(app)
    server = await aiohttp_server(app)
    return state, AnthropicProvider(
        "sim", base_url=str(server.make_url("")), api_key="k", session=session
    )


async def test_simulated_anthropic_streams_text(sim: tuple[SimState, AnthropicProvider]) -> None:
    state, p = sim
    chunks, done, error = await collect(await p.stream(chat(True, max_tokens=3)))
    assert error is None and done
    assert_chunks_valid(chunks)
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 3, "total_tokens": 4}
    assert state.requests[MODEL] == 1


async def test_simulated_anthropic_tool_call_and_result(
    sim: tuple[SimState, AnthropicProvider],
) -> None:
    _, p = sim
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    tool = {"type": "function", "function": {"name": "count", "parameters": schema}}
    out = await p.complete(chat(False, tools=[tool]))
    [call] = out["choices"][0]["message"]["tool_calls"]
    assert orjson.loads(call["function"]["arguments"]) == {"n": 1}
    messages = [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "one two"},
    ]
    chunks, done, _ = await collect(await p.stream(chat(True, tools=[tool], messages=messages)))
    assert done and content(chunks)
    assert chunks[-1]["usage"]["prompt_tokens"] == 3


async def test_simulated_anthropic_serves_json_schema_through_a_forced_tool(
    sim: tuple[SimState, AnthropicProvider],
) -> None:
    state, p = sim
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    chunks, done, _ = await collect(await p.stream(chat(True, response_format=fmt)))
    assert done
    assert orjson.loads(content(chunks)) == {"city": "sim"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert state.last_body[MODEL]["tool_choice"] == {"type": "tool", "name": "place"}


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        pytest.param(Fault(mode="status", status=529), "overloaded", id="status-529"),
        pytest.param(
            Fault(mode="status", status=429, retry_after=3), "rate_limited", id="status-429"
        ),
    ],
)
async def test_simulated_anthropic_refusals_surface_as_failure_kinds(
    sim: tuple[SimState, AnthropicProvider], fault: Fault, kind: str
) -> None:
    state, p = sim
    state.set_fault(MODEL, fault)
    with pytest.raises(UpstreamError) as caught:
        await p.stream(chat(True))
    assert caught.value.kind == kind
    assert caught.value.retry_after == fault.retry_after


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        pytest.param(Fault(mode="error_event", after_chunks=1), "server", id="error-event"),
        pytest.param(Fault(mode="malformed", after_chunks=1), "protocol", id="malformed"),
        pytest.param(Fault(mode="bad_json", after_chunks=1), "protocol", id="bad-json"),
        pytest.param(Fault(mode="close", after_chunks=1), "server", id="close"),
    ],
)
async def test_simulated_anthropic_mid_stream_faults_raise_after_the_first_chunks(
    sim: tuple[SimState, AnthropicProvider], fault: Fault, kind: str
) -> None:
    state, p = sim
    state.set_fault(MODEL, fault)
    chunks, done, error = await collect(await p.stream(chat(True)))
    assert len(chunks) == 2 and not done
    assert error is not None and error.kind == kind
