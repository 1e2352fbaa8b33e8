"""Table tests of the Bedrock Converse translation: requests, answers, streams, errors."""

from __future__ import annotations

import copy
import functools
from typing import Any

import pytest
from botocore.model import OperationModel
from botocore.session import get_session
from botocore.validate import ParamValidator

from proxy.providers.base import UnsupportedFeatureError, UpstreamError
from proxy.providers.bedrock_wire import (
    STOP_REASONS,
    ConverseStreamTranslator,
    error_kind,
    from_converse_response,
    to_converse_request,
    upstream_error,
)
from tests.openapi_schema import assert_valid

MODEL = "us.anthropic.claude-3-5-haiku-20241022-v1:0"
PNG = "iVBORw0KGgo="
USER = {"role": "user", "content": "hi"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
TOOL = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
}


def assert_chunks_valid(chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [USER], **fields}


@functools.cache
def operation(name: str) -> OperationModel:
    return get_session().get_service_model("bedrock-runtime").operation_model(name)


def assert_valid_for_botocore(kwargs: dict[str, Any]) -> None:
    for name in ("Converse", "ConverseStream"):
        report = ParamValidator().validate(kwargs, operation(name).input_shape)
        assert not report.has_errors(), report.generate_report()


REQUESTS = [
    pytest.param(
        body(),
        {"modelId": MODEL, "messages": [{"role": "user", "content": [{"text": "hi"}]}]},
        id="minimal-has-no-inference-config",
    ),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": "and kind"},
                USER,
            ],
        },
        {"system": [{"text": "be brief"}, {"text": "and kind"}]},
        id="system-and-developer-gathered",
    ),
    pytest.param(
        body(max_tokens=10, temperature=0.5, top_p=0.9, stop="END"),
        {
            "inferenceConfig": {
                "maxTokens": 10,
                "temperature": 0.5,
                "topP": 0.9,
                "stopSequences": ["END"],
            }
        },
        id="inference-config",
    ),
    pytest.param(
        body(max_completion_tokens=7, temperature=1, stop=["a", ""]),
        {"inferenceConfig": {"maxTokens": 7, "temperature": 1, "stopSequences": ["a"]}},
        id="max-completion-tokens-and-empty-stop-dropped",
    ),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                USER,
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
                {"role": "user", "content": "thanks"},
            ],
            "tools": [TOOL],
        },
        {
            "messages": [
                {"role": "user", "content": [{"text": "hi"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"toolUse": {"toolUseId": "call_1", "name": "f", "input": {"a": 1}}}
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"toolResult": {"toolUseId": "call_1", "content": [{"text": "42"}]}},
                        {"text": "thanks"},
                    ],
                },
            ],
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "f",
                            "inputSchema": {"json": {"type": "object"}},
                            "description": "d",
                        }
                    }
                ]
            },
        },
        id="tool-use-and-result",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice="required"),
        {
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "f",
                            "inputSchema": {"json": {"type": "object"}},
                            "description": "d",
                        }
                    }
                ],
                "toolChoice": {"any": {}},
            }
        },
        id="tool-choice-required",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}),
        {
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "f",
                            "inputSchema": {"json": {"type": "object"}},
                            "description": "d",
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": "f"}},
            }
        },
        id="tool-choice-named",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice="none"),
        {"toolConfig": None},
        id="tool-choice-none-without-tool-history-drops-tools",
    ),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                    ],
                }
            ],
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"text": "what is this"},
                        {"image": {"format": "png", "source": {"bytes": b"\x89PNG\r\n\x1a\n"}}},
                    ],
                }
            ]
        },
        id="base64-image-as-bytes",
    ),
    pytest.param(
        body(
            n=1,
            logprobs=False,
            seed=1,
            user="u",
            stream=True,
            stream_options={"include_usage": True},
        ),
        {"modelId": MODEL},
        id="no-op-values-accepted",
    ),
    pytest.param(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "place", "schema": {"type": "object", "required": ["c"]}},
            }
        ),
        {
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "place",
                            "inputSchema": {"json": {"type": "object", "required": ["c"]}},
                            "description": "Answer with JSON matching the schema.",
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": "place"}},
            }
        },
        id="json-schema-as-forced-tool",
    ),
    pytest.param(
        body(response_format={"type": "json_object"}),
        {
            "toolConfig": {
                "tools": [
                    {
                        "toolSpec": {
                            "name": "json_response",
                            "inputSchema": {"json": {"type": "object"}},
                            "description": "Answer with a JSON object.",
                        }
                    }
                ],
                "toolChoice": {"tool": {"name": "json_response"}},
            }
        },
        id="json-object-as-forced-tool",
    ),
]


@pytest.mark.parametrize(("request_body", "expected"), REQUESTS)
def test_request_translation(request_body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(request_body)
    out = to_converse_request(MODEL, request_body)
    assert {k: out.get(k) for k in expected} == expected
    assert request_body == before, "the client's body must not be mutated"
    assert_valid_for_botocore(out)


UNSUPPORTED = [
    pytest.param(body(n=3), "n", id="n>1"),
    pytest.param(body(logprobs=True), "logprobs", id="logprobs"),
    pytest.param(body(presence_penalty=0.2), "presence_penalty", id="presence_penalty"),
    pytest.param(
        body(response_format={"type": "json_object"}, tools=[TOOL]),
        "response_format",
        id="json-and-tools",
    ),
    pytest.param(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "array"}},
            }
        ),
        "response_format",
        id="json-schema-array-root",
    ),
    pytest.param(
        body(tools=[TOOL], parallel_tool_calls=False), "parallel_tool_calls", id="serial-tools"
    ),
    pytest.param(body(top_k=5), "top_k", id="top_k"),
    pytest.param(body(tool_choice="required"), "tool_choice", id="tool-choice-without-tools"),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                USER,
                {"role": "assistant", "tool_calls": [CALL]},
                {"role": "tool", "tool_call_id": "call_1", "content": "42"},
            ],
            "tools": [TOOL],
            "tool_choice": "none",
        },
        "tool_choice",
        id="tool-choice-none-with-tool-history",
    ),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [{"type": "image_url", "image_url": {"url": "https://x/y.png"}}],
                }
            ],
        },
        "messages[0].content[0]",
        id="remote-image-url",
    ),
    pytest.param(
        {
            "model": MODEL,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/png;base64,@@@"}}
                    ],
                }
            ],
        },
        "messages[0].content[0]",
        id="image-not-base64",
    ),
]


@pytest.mark.parametrize(("request_body", "param"), UNSUPPORTED)
def test_unsupported_features_are_refused_by_name(request_body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as caught:
        to_converse_request(MODEL, request_body)
    assert caught.value.param == param


# Stop reasons and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("guardrail_intervened", "content_filter"),
        ("content_filtered", "content_filter"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(reason: str, finish: str) -> None:
    assert STOP_REASONS[reason] == finish


def test_every_stop_reason_in_the_service_model_is_mapped() -> None:
    model = get_session().get_service_model("bedrock-runtime")
    assert set(model.shape_for("StopReason").enum) == set(STOP_REASONS)


@pytest.mark.parametrize(
    ("code", "status", "kind"),
    [
        ("ThrottlingException", 429, "rate_limited"),
        ("ModelNotReadyException", 429, "overloaded"),
        ("ServiceUnavailableException", 503, "overloaded"),
        ("InternalServerException", 500, "server"),
        ("ModelErrorException", 424, "server"),
        ("ModelTimeoutException", 408, "timeout"),
        ("ValidationException", 400, "client"),
        ("ResourceNotFoundException", 404, "server"),
        ("AccessDeniedException", 403, "auth"),
        ("UnrecognizedClientException", 403, "auth"),
        ("ExpiredTokenException", 403, "auth"),
        ("ServiceQuotaExceededException", 400, "rate_limited"),
        # In-stream exceptions carry the stream member's name.
        ("throttlingException", None, "rate_limited"),
        ("modelStreamErrorException", None, "server"),
        ("validationException", None, "client"),
        ("serviceUnavailableException", None, "overloaded"),
        ("internalServerException", None, "server"),
        # Codes we have never seen fall back to the status.
        ("SomethingNewException", 503, "overloaded"),
        ("SomethingNewException", 429, "rate_limited"),
        ("SomethingNewException", 400, "client"),
        ("", None, "server"),
    ],
)
def test_error_classes(code: str, status: int | None, kind: str) -> None:
    assert error_kind(code, status) == kind


def test_every_declared_converse_error_is_classified() -> None:
    for name in ("Converse", "ConverseStream"):
        for shape in operation(name).error_shapes:
            assert error_kind(shape.name, None) != "server" or shape.name in {
                "InternalServerException",
                "ModelErrorException",
                "ResourceNotFoundException",
            }, shape.name


def test_client_error_responses_keep_code_status_and_retry_after() -> None:
    response = {
        "Error": {"Code": "ThrottlingException", "Message": "Too many requests"},
        "ResponseMetadata": {"HTTPStatusCode": 429, "HTTPHeaders": {"retry-after": "3"}},
    }
    err = upstream_error(response)
    assert (err.kind, err.status, err.retry_after, err.code) == (
        "rate_limited",
        429,
        3.0,
        "ThrottlingException",
    )


# Non-streaming answers -----------------------------------------------------------------


def answer(content: list[dict[str, Any]], stop: str, **usage: int) -> dict[str, Any]:
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": stop,
        "usage": {"inputTokens": 11, "outputTokens": 4, "totalTokens": 15, **usage},
        "metrics": {"latencyMs": 100},
    }


def test_text_answer() -> None:
    out = from_converse_response(
        answer([{"text": "Hello"}], "end_turn"), id="chatcmpl-1", created=1, model=MODEL
    )
    assert_valid("CreateChatCompletionResponse", out)
    assert out["choices"][0]["message"]["content"] == "Hello"
    assert out["usage"] == {"prompt_tokens": 11, "completion_tokens": 4, "total_tokens": 15}


def test_tool_use_answer() -> None:
    content = [{"toolUse": {"toolUseId": "tooluse_1", "name": "f", "input": {"a": [1, 2]}}}]
    out = from_converse_response(
        answer(content, "tool_use"), id="chatcmpl-1", created=1, model=MODEL
    )
    assert_valid("CreateChatCompletionResponse", out)
    msg = out["choices"][0]["message"]
    assert msg["content"] is None
    assert msg["tool_calls"] == [
        {
            "id": "tooluse_1",
            "type": "function",
            "function": {"name": "f", "arguments": '{"a":[1,2]}'},
        }
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_reasoning_blocks_become_reasoning_content() -> None:
    content = [{"reasoningContent": {"reasoningText": {"text": "think"}}}, {"text": "42"}]
    out = from_converse_response(answer(content, "end_turn"), id="c", created=1, model=MODEL)
    assert out["choices"][0]["message"]["reasoning_content"] == "think"
    assert out["choices"][0]["message"]["content"] == "42"


def test_forced_json_tool_comes_back_as_content() -> None:
    content = [{"toolUse": {"toolUseId": "t", "name": "place", "input": {"c": "Rome"}}}]
    raw = answer(content, "tool_use")
    out = from_converse_response(raw, id="c", created=1, model=MODEL, json_tool="place")
    assert out["choices"][0]["message"]["content"] == '{"c":"Rome"}'
    assert "tool_calls" not in out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_an_answer_without_output_is_a_protocol_error() -> None:
    with pytest.raises(UpstreamError) as caught:
        from_converse_response({"stopReason": "end_turn"}, id="c", created=1, model=MODEL)
    assert caught.value.kind == "protocol"


# Streams -------------------------------------------------------------------------------


def translate(events: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], bool]:
    t = ConverseStreamTranslator(id="chatcmpl-r", model=MODEL, created=1700000000)
    chunks = [c for e in events for c in t.feed(e)]
    assert_chunks_valid(chunks)
    return chunks, t.done


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def metadata(inp: int, out: int, **extra: int) -> dict[str, Any]:
    usage = {"inputTokens": inp, "outputTokens": out, "totalTokens": inp + out, **extra}
    return {"metadata": {"usage": usage, "metrics": {"latencyMs": 5}}}


def test_text_stream() -> None:
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Hel"}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "lo"}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {"messageStop": {"stopReason": "end_turn"}},
        metadata(9, 2),
    ]
    chunks, done = translate(events)
    assert done
    assert deltas(chunks) == [
        {"role": "assistant", "content": ""},
        {"content": "Hel"},
        {"content": "lo"},
        {},
    ]
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert chunks[-1] == {
        "id": "chatcmpl-r",
        "object": "chat.completion.chunk",
        "created": 1700000000,
        "model": MODEL,
        "choices": [],
        "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    }


def test_tool_use_stream_gives_incremental_tool_call_deltas() -> None:
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"text": "Let me look."}}},
        {"contentBlockStop": {"contentBlockIndex": 0}},
        {
            "contentBlockStart": {
                "contentBlockIndex": 1,
                "start": {"toolUse": {"toolUseId": "tu_a", "name": "weather"}},
            }
        },
        {
            "contentBlockDelta": {
                "contentBlockIndex": 1,
                "delta": {"toolUse": {"input": '{"city":'}},
            }
        },
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '"Oslo"}'}}}},
        {"contentBlockStop": {"contentBlockIndex": 1}},
        {
            "contentBlockStart": {
                "contentBlockIndex": 2,
                "start": {"toolUse": {"toolUseId": "tu_b", "name": "time"}},
            }
        },
        {"contentBlockDelta": {"contentBlockIndex": 2, "delta": {"toolUse": {"input": "{}"}}}},
        {"contentBlockStop": {"contentBlockIndex": 2}},
        {"messageStop": {"stopReason": "tool_use"}},
        metadata(120, 64, cacheReadInputTokens=30),
    ]
    chunks, _ = translate(events)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "tu_a",
        "type": "function",
        "function": {"name": "weather", "arguments": ""},
    }
    args: dict[int, str] = {}
    for call in calls:
        args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert args == {0: '{"city":"Oslo"}', 1: "{}"}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"]["prompt_tokens"] == 150
    assert chunks[-1]["usage"]["completion_tokens"] == 64
    assert chunks[-1]["usage"]["prompt_tokens_details"]["cached_tokens"] == 30


def test_forced_json_tool_streams_as_content() -> None:
    start = {"toolUse": {"toolUseId": "t", "name": "place"}}
    events = [
        {"messageStart": {"role": "assistant"}},
        {"contentBlockStart": {"contentBlockIndex": 0, "start": start}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '{"c": '}}}},
        {"contentBlockDelta": {"contentBlockIndex": 0, "delta": {"toolUse": {"input": '"Rome"}'}}}},
        {"messageStop": {"stopReason": "tool_use"}},
        metadata(4, 6),
    ]
    t = ConverseStreamTranslator(id="c", model=MODEL, created=1, json_tool="place")
    chunks = [c for e in events for c in t.feed(e)]
    assert_chunks_valid(chunks)
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == '{"c": "Rome"}'
    assert not any("tool_calls" in d for d in deltas(chunks))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_reasoning_deltas_pass_as_reasoning_content() -> None:
    events = [
        {"messageStart": {"role": "assistant"}},
        {
            "contentBlockDelta": {
                "contentBlockIndex": 0,
                "delta": {"reasoningContent": {"text": "hmm"}},
            }
        },
        {
            "contentBlockDelta": {
                "contentBlockIndex": 0,
                "delta": {"reasoningContent": {"signature": "sig"}},
            }
        },
        {"contentBlockDelta": {"contentBlockIndex": 1, "delta": {"text": "42"}}},
        {"messageStop": {"stopReason": "max_tokens"}},
    ]
    chunks, done = translate(events)
    assert done
    assert deltas(chunks)[1:] == [{"reasoning_content": "hmm"}, {"content": "42"}, {}]
    assert chunks[-1]["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({"contentBlockDelta": {}}, id="delta-missing"),
        pytest.param(
            {"contentBlockDelta": {"contentBlockIndex": 4, "delta": {"toolUse": {"input": "{}"}}}},
            id="tool-delta-before-start",
        ),
    ],
)
def test_malformed_events_are_protocol_errors(event: dict[str, Any]) -> None:
    t = ConverseStreamTranslator(id="c", model=MODEL, created=1)
    with pytest.raises(UpstreamError) as caught:
        t.feed(event)
    assert caught.value.kind == "protocol"
