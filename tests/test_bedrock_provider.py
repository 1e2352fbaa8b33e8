"""BedrockProvider with the real aioboto3 client against Converse servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.providers.base import UnsupportedFeatureError, UpstreamError, UpstreamRequest
from proxy.providers.bedrock import BedrockProvider
from proxy.sim.bedrock_api import add_bedrock_routes
from proxy.sim.eventstream import encode_bedrock_event, encode_bedrock_exception
from proxy.sim.launch import make_sim_app
from proxy.sim.script import Fault, Profile
from proxy.sim.server import SimState
from tests.openapi_schema import assert_valid

MODEL = "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.deepseek.r1-v1:0"
CREDS = {"aws_access_key_id": "AKIDROUTERTEST", "aws_secret_access_key": "not-a-secret"}
ServerFactory = Callable[[web.Application], Awaitable[TestServer]]


@dataclass
class Upstream:
    """What the fake Converse server answers next, and what it was asked."""

    events: list[bytes] = field(default_factory=list)
    json: dict[str, Any] = field(default_factory=dict)
    error: tuple[int, str] | None = None
    hang: bool = False
    requests: list[tuple[str, str, dict[str, str], dict[str, Any]]] = field(default_factory=list)


def assert_chunks_valid(chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def event(kind: str, **payload: Any) -> bytes:
    return encode_bedrock_event(kind, payload)


def text_events(
    *pieces: str, stop: str = "end_turn", usage: tuple[int, int] = (7, 3)
) -> list[bytes]:
    inp, out = usage
    return [
        event("messageStart", role="assistant"),
        *(event("contentBlockDelta", contentBlockIndex=0, delta={"text": p}) for p in pieces),
        event("contentBlockStop", contentBlockIndex=0),
        event("messageStop", stopReason=stop),
        event(
            "metadata",
            usage={"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out},
            metrics={"latencyMs": 10},
        ),
    ]


def fake_bedrock(up: Upstream) -> web.Application:
    async def handle(request: web.Request) -> web.StreamResponse:
        body = orjson.loads(await request.read())
        op = request.path.rsplit("/", 1)[1]
        up.requests.append((op, request.match_info["model_id"], dict(request.headers), body))
        if up.error is not None:
            status, code = up.error
            return web.Response(
                status=status,
                body=orjson.dumps({"message": f"fake {code}"}),
                headers={"x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/"},
                content_type="application/json",
            )
        if op == "converse":
            return web.Response(body=orjson.dumps(up.json), content_type="application/json")
        resp = web.StreamResponse(headers={"Content-Type": "application/vnd.amazon.eventstream"})
        await resp.prepare(request)
        for raw in up.events:
            await resp.write(raw)
        if up.hang:
            await asyncio.Event().wait()
        await resp.write_eof()
        return resp

    app = web.Application()
    app.router.add_post("/model/{model_id:.+}/converse", handle)
    app.router.add_post("/model/{model_id:.+}/converse-stream", handle)
    return app


@pytest.fixture(autouse=True)
def no_aws_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """Keep botocore away from real profiles and the instance metadata service."""
    for name in ("AWS_PROFILE", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def up() -> Upstream:
    return Upstream()


@pytest.fixture
async def provider(up: Upstream, aiohttp_server: ServerFactory) -> AsyncIterator[BedrockProvider]:
    server = await aiohttp_server(fake_bedrock(up))
    p = BedrockProvider(
        "bedrock-test",
        region="us-east-1",
        endpoint_url=str(server.make_url("")),
        credentials=CREDS,
        timeouts=(5, 1),
    )
    await p.start()
    yield p
    await p.close()


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


async def test_streams_text_through_the_real_client(
    provider: BedrockProvider, up: Upstream
) -> None:
    up.events = text_events("Hel", "lo", usage=(7, 3))
    chunks, done, error = await collect(await provider.stream(chat(True, max_tokens=50)))
    assert error is None and done
    assert_chunks_valid(chunks)
    assert (
        "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        == "Hello"
    )
    assert chunks[-1]["usage"] == {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10}
    [(op, model_id, headers, body)] = up.requests
    assert (op, model_id) == ("converse-stream", MODEL)
    assert headers["Authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDROUTERTEST/")
    assert body["messages"] == [{"role": "user", "content": [{"text": "hello"}]}]
    assert body["inferenceConfig"] == {"maxTokens": 50}


async def test_complete_returns_a_chat_completion(provider: BedrockProvider, up: Upstream) -> None:
    up.json = {
        "output": {"message": {"role": "assistant", "content": [{"text": "Hi there"}]}},
        "stopReason": "max_tokens",
        "usage": {"inputTokens": 5, "outputTokens": 2, "totalTokens": 7},
        "metrics": {"latencyMs": 9},
    }
    out = await provider.complete(chat(False))
    assert_valid("CreateChatCompletionResponse", out)
    assert out["choices"][0]["message"]["content"] == "Hi there"
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    assert up.requests[0][0] == "converse"


async def test_streams_a_tool_call_with_the_upstream_usage(
    provider: BedrockProvider, up: Upstream
) -> None:
    start = {"toolUse": {"toolUseId": "tooluse_x", "name": "get_weather"}}
    up.events = [
        event("messageStart", role="assistant"),
        event("contentBlockStart", contentBlockIndex=0, start=start),
        event("contentBlockDelta", contentBlockIndex=0, delta={"toolUse": {"input": '{"city"'}}),
        event("contentBlockDelta", contentBlockIndex=0, delta={"toolUse": {"input": ': "Lima"}'}}),
        event("contentBlockStop", contentBlockIndex=0),
        event("messageStop", stopReason="tool_use"),
        event(
            "metadata",
            usage={"inputTokens": 321, "outputTokens": 45, "totalTokens": 366},
            metrics={"latencyMs": 1},
        ),
    ]
    tool = {
        "type": "function",
        "function": {"name": "get_weather", "parameters": {"type": "object"}},
    }
    chunks, done, error = await collect(await provider.stream(chat(True, tools=[tool])))
    assert error is None and done
    assert_chunks_valid(chunks)
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert calls[0]["id"] == "tooluse_x" and calls[0]["function"]["name"] == "get_weather"
    assert "".join(c["function"]["arguments"] for c in calls) == '{"city": "Lima"}'
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "tool_calls"
    assert chunks[-1]["usage"] == {
        "prompt_tokens": 321,
        "completion_tokens": 45,
        "total_tokens": 366,
    }
    assert up.requests[0][3]["toolConfig"]["tools"][0]["toolSpec"]["name"] == "get_weather"


HTTP_ERRORS = [
    pytest.param(429, "ThrottlingException", "rate_limited", id="throttling"),
    pytest.param(429, "ModelNotReadyException", "overloaded", id="model-not-ready"),
    pytest.param(503, "ServiceUnavailableException", "overloaded", id="service-unavailable"),
    pytest.param(500, "InternalServerException", "server", id="internal-server"),
    pytest.param(408, "ModelTimeoutException", "timeout", id="model-timeout"),
    pytest.param(400, "ValidationException", "client", id="validation"),
    pytest.param(403, "AccessDeniedException", "auth", id="access-denied"),
]


@pytest.mark.parametrize(("status", "code", "kind"), HTTP_ERRORS)
@pytest.mark.parametrize("streaming", [True, False], ids=["stream", "complete"])
async def test_http_errors_map_to_failure_kinds_without_botocore_retries(
    provider: BedrockProvider, up: Upstream, status: int, code: str, kind: str, streaming: bool
) -> None:
    up.error = (status, code)
    with pytest.raises(UpstreamError) as caught:
        if streaming:
            await provider.stream(chat(True))
        else:
            await provider.complete(chat(False))
    assert (caught.value.kind, caught.value.status, caught.value.code) == (kind, status, code)
    assert len(up.requests) == 1, "botocore must not retry: fallback is the router's"


@pytest.mark.parametrize(
    ("exception", "kind"),
    [
        ("throttlingException", "rate_limited"),
        ("modelStreamErrorException", "server"),
        ("validationException", "client"),
        ("serviceUnavailableException", "overloaded"),
        ("internalServerException", "server"),
    ],
)
async def test_a_mid_stream_exception_raises_after_the_chunks_before_it(
    provider: BedrockProvider, up: Upstream, exception: str, kind: str
) -> None:
    up.events = [*text_events("one", "two")[:3], encode_bedrock_exception(exception, "went wrong")]
    chunks, done, error = await collect(await provider.stream(chat(True)))
    assert [c["choices"][0]["delta"].get("content") for c in chunks] == ["", "one", "two"]
    assert not done
    assert error is not None and error.kind == kind and error.code == exception
    assert "went wrong" in error.message


async def test_a_stream_that_stops_before_message_stop_is_incomplete(
    provider: BedrockProvider, up: Upstream
) -> None:
    up.events = text_events("cut")[:2]
    chunks, done, error = await collect(await provider.stream(chat(True)))
    assert len(chunks) == 2 and not done
    assert error is not None and error.kind == "server"


async def test_a_silent_upstream_hits_the_read_timeout(
    up: Upstream, aiohttp_server: ServerFactory
) -> None:
    server = await aiohttp_server(fake_bedrock(up))
    url = str(server.make_url(""))
    p = BedrockProvider(
        "slow", region="us-east-1", endpoint_url=url, credentials=CREDS, timeouts=(5, 0.2)
    )
    await p.start()
    try:
        up.events, up.hang = text_events("slow")[:2], True
        chunks, done, error = await collect(await p.stream(chat(True)))
    finally:
        await p.close()
    assert len(chunks) == 2 and not done
    assert error is not None and error.kind == "timeout"


async def test_closing_a_stream_early_twice_is_safe(
    provider: BedrockProvider, up: Upstream
) -> None:
    up.events, up.hang = text_events("a", "b")[:2], True
    stream = await provider.stream(chat(True))
    async for _ in stream:
        break
    await stream.aclose()
    await stream.aclose()


async def test_an_unreachable_endpoint_is_a_connect_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    p = BedrockProvider(
        "gone", region="us-east-1", endpoint_url=f"http://127.0.0.1:{port}", credentials=CREDS
    )
    await p.start()
    try:
        with pytest.raises(UpstreamError) as caught:
            await p.stream(chat(True))
        assert caught.value.kind == "connect"
    finally:
        await p.close()


async def test_without_credentials_the_standard_chain_is_used(
    up: Upstream, aiohttp_server: ServerFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDFROMENV")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "env-secret")
    server = await aiohttp_server(fake_bedrock(up))
    p = BedrockProvider("env", region="eu-west-1", endpoint_url=str(server.make_url("")))
    await p.start()
    try:
        up.events = text_events("x")
        _, done, _ = await collect(await p.stream(chat(True)))
    finally:
        await p.close()
    assert done
    assert "Credential=AKIDFROMENV/" in up.requests[0][2]["Authorization"]
    assert "/eu-west-1/bedrock/aws4_request" in up.requests[0][2]["Authorization"]


async def test_unknown_credential_keys_are_refused() -> None:
    with pytest.raises(ValueError, match="aws_region"):
        BedrockProvider("x", region="us-east-1", credentials={"aws_region": "us-east-1"})


async def test_legacy_completions_are_unsupported(provider: BedrockProvider) -> None:
    with pytest.raises(UnsupportedFeatureError):
        await provider.stream(
            UpstreamRequest("completions", MODEL, {"model": MODEL, "prompt": "x"}, True)
        )


# The simulated Bedrock (proxy/sim) must be parseable by the real client too.


@pytest.fixture
async def sim(aiohttp_server: ServerFactory) -> AsyncIterator[tuple[SimState, BedrockProvider]]:
    state = SimState(scale=0.0, default=Profile(tokens=4))
    app = make_sim_app(state)
    add_bedrock_routes(app)
    server = await aiohttp_server(app)
    p = BedrockProvider(
        "sim", region="us-east-1", endpoint_url=str(server.make_url("")), credentials=CREDS
    )
    await p.start()
    yield state, p
    await p.close()


async def test_simulated_bedrock_streams_to_the_real_client(
    sim: tuple[SimState, BedrockProvider],
) -> None:
    state, p = sim
    chunks, done, error = await collect(await p.stream(chat(True)))
    assert error is None and done
    assert_chunks_valid(chunks)
    assert len([c for c in chunks if c["choices"] and c["choices"][0]["delta"].get("content")]) == 4
    assert chunks[-1]["usage"] == {"prompt_tokens": 1, "completion_tokens": 4, "total_tokens": 5}
    assert state.requests[MODEL] == 1


async def test_simulated_bedrock_tool_call_round_trip(
    sim: tuple[SimState, BedrockProvider],
) -> None:
    _, p = sim
    tool = {
        "type": "function",
        "function": {
            "name": "lookup",
            "parameters": {
                "type": "object",
                "properties": {"q": {"type": "string"}},
                "required": ["q"],
            },
        },
    }
    chunks, done, _ = await collect(await p.stream(chat(True, tools=[tool])))
    assert done
    calls = [
        c["choices"][0]["delta"]["tool_calls"][0]
        for c in chunks
        if c["choices"] and "tool_calls" in c["choices"][0]["delta"]
    ]
    assert orjson.loads("".join(c["function"]["arguments"] for c in calls)) == {"q": "sim"}
    call_id = calls[0]["id"]
    followup = chat(
        False,
        tools=[tool],
        messages=[
            {"role": "user", "content": "hello"},
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "lookup", "arguments": '{"q": "sim"}'},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": "found it"},
        ],
    )
    out = await p.complete(followup)
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["prompt_tokens"] == 3  # "hello" + "found it", as the OpenAI wire counts


async def test_simulated_bedrock_serves_json_schema_through_a_forced_tool(
    sim: tuple[SimState, BedrockProvider],
) -> None:
    state, p = sim
    schema = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
    fmt = {"type": "json_schema", "json_schema": {"name": "place", "schema": schema}}
    chunks, done, _ = await collect(await p.stream(chat(True, response_format=fmt)))
    assert done
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert orjson.loads(text) == {"city": "sim"}
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert state.last_body[MODEL]["toolConfig"]["toolChoice"] == {"tool": {"name": "place"}}


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        pytest.param(Fault(mode="status", status=429), "rate_limited", id="status-429"),
        pytest.param(Fault(mode="status", status=503), "overloaded", id="status-503"),
        pytest.param(Fault(mode="status", status=400), "client", id="status-400"),
    ],
)
async def test_simulated_bedrock_refusals_surface_as_failure_kinds(
    sim: tuple[SimState, BedrockProvider], fault: Fault, kind: str
) -> None:
    state, p = sim
    state.set_fault(MODEL, fault)
    with pytest.raises(UpstreamError) as caught:
        await p.stream(chat(True))
    assert caught.value.kind == kind


@pytest.mark.parametrize(
    ("fault", "kind"),
    [
        pytest.param(Fault(mode="error_event", after_chunks=1), "server", id="error-event"),
        pytest.param(Fault(mode="malformed", after_chunks=1), "protocol", id="malformed"),
        pytest.param(Fault(mode="bad_json", after_chunks=1), "protocol", id="bad-json"),
    ],
)
async def test_simulated_bedrock_mid_stream_faults_raise_after_the_first_chunks(
    sim: tuple[SimState, BedrockProvider], fault: Fault, kind: str
) -> None:
    state, p = sim
    state.set_fault(MODEL, fault)
    chunks, done, error = await collect(await p.stream(chat(True)))
    assert [c["choices"][0]["delta"].get("content") for c in chunks][:1] == [""]
    assert len(chunks) == 2 and not done
    assert error is not None and error.kind == kind
