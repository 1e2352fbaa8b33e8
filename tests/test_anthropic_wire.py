"""Table tests of the Anthropic Messages translation: requests, answers, streams, errors."""

from __future__ import annotations

import copy
from typing import Any

import orjson
import pytest

from proxy.providers.anthropic_wire import (
    STOP_REASONS,
    AnthropicStreamTranslator,
    error_kind,
    from_anthropic_response,
    to_anthropic_request,
    upstream_error,
)
from proxy.providers.base import UnsupportedFeatureError, UpstreamError
from proxy.providers.sse import SSEDecoder, fields
from proxy.providers.translate import json_tool_name
from tests.openapi_schema import assert_valid

PNG = "iVBORw0KGgo="
USER = {"role": "user", "content": "hi"}


def assert_chunks_valid(chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)


def body(**fields: Any) -> dict[str, Any]:
    return {"model": "claude-x", "messages": [USER], **fields}


# Requests ------------------------------------------------------------------------------

CALL = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}
TOOL = {
    "type": "function",
    "function": {"name": "f", "description": "d", "parameters": {"type": "object"}},
}

REQUESTS = [
    pytest.param(
        body(),
        {
            "model": "claude-x",
            "max_tokens": 4096,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
        id="minimal-gets-default-max-tokens",
    ),
    pytest.param(
        {
            "model": "claude-x",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "developer", "content": [{"type": "text", "text": "and kind"}]},
                USER,
            ],
        },
        {
            "system": [{"type": "text", "text": "be brief"}, {"type": "text", "text": "and kind"}],
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
        },
        id="system-and-developer-gathered",
    ),
    pytest.param(
        body(max_tokens=10, temperature=0.5, top_p=0.9, top_k=5, stop="END", user="u1"),
        {
            "max_tokens": 10,
            "temperature": 0.5,
            "top_p": 0.9,
            "top_k": 5,
            "stop_sequences": ["END"],
            "metadata": {"user_id": "u1"},
        },
        id="sampling-fields",
    ),
    pytest.param(
        body(max_completion_tokens=7, max_tokens=99, stop=["a", "b"]),
        {"max_tokens": 7, "stop_sequences": ["a", "b"]},
        id="max-completion-tokens-wins",
    ),
    pytest.param(
        {
            "model": "claude-x",
            "messages": [
                USER,
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "again"},
                {"role": "user", "content": "and again"},
            ],
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "hello"}]},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "again"},
                        {"type": "text", "text": "and again"},
                    ],
                },
            ]
        },
        id="multi-turn-merges-same-role",
    ),
    pytest.param(
        {
            "model": "claude-x",
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "content": "",
                    "tool_calls": [
                        CALL,
                        {**CALL, "id": "call_2", "function": {"name": "g", "arguments": ""}},
                    ],
                },
                {"role": "tool", "tool_call_id": "call_1", "content": "one"},
                {
                    "role": "tool",
                    "tool_call_id": "call_2",
                    "content": [{"type": "text", "text": "two"}],
                },
                {"role": "user", "content": "thanks"},
            ],
            "tools": [TOOL],
        },
        {
            "messages": [
                {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                {
                    "role": "assistant",
                    "content": [
                        {"type": "tool_use", "id": "call_1", "name": "f", "input": {"a": 1}},
                        {"type": "tool_use", "id": "call_2", "name": "g", "input": {}},
                    ],
                },
                {
                    "role": "user",
                    "content": [
                        {"type": "tool_result", "tool_use_id": "call_1", "content": "one"},
                        {"type": "tool_result", "tool_use_id": "call_2", "content": "two"},
                        {"type": "text", "text": "thanks"},
                    ],
                },
            ],
            "tools": [{"name": "f", "description": "d", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "auto"},
        },
        id="tool-calls-and-results",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice="required", parallel_tool_calls=False),
        {"tool_choice": {"type": "any", "disable_parallel_tool_use": True}},
        id="tool-choice-required",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice="none"),
        {"tool_choice": {"type": "none"}},
        id="tool-choice-none",
    ),
    pytest.param(
        body(tools=[TOOL], tool_choice={"type": "function", "function": {"name": "f"}}),
        {"tool_choice": {"type": "tool", "name": "f"}},
        id="tool-choice-named",
    ),
    pytest.param(
        {
            "model": "claude-x",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                        {
                            "type": "image_url",
                            "image_url": {"url": "https://example.com/a.jpg", "detail": "low"},
                        },
                    ],
                }
            ],
        },
        {
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": "what is this"},
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                        },
                        {
                            "type": "image",
                            "source": {"type": "url", "url": "https://example.com/a.jpg"},
                        },
                    ],
                }
            ]
        },
        id="images-base64-and-url",
    ),
    pytest.param(
        body(
            response_format={
                "type": "json_schema",
                "json_schema": {
                    "name": "person",
                    "schema": {"type": "object", "properties": {"n": {"type": "string"}}},
                },
            }
        ),
        {
            "tools": [
                {
                    "name": "person",
                    "description": "Answer with JSON matching the schema.",
                    "input_schema": {"type": "object", "properties": {"n": {"type": "string"}}},
                }
            ],
            "tool_choice": {"type": "tool", "name": "person"},
        },
        id="json-schema-as-forced-tool",
    ),
    pytest.param(
        body(response_format={"type": "json_object"}),
        {"tool_choice": {"type": "tool", "name": "json_response"}},
        id="json-object-as-forced-tool",
    ),
    pytest.param(
        body(
            n=1,
            logprobs=False,
            frequency_penalty=0,
            presence_penalty=0,
            seed=3,
            stream=True,
            stream_options={"include_usage": True},
            response_format={"type": "text"},
            logit_bias={},
        ),
        {"stream": True},
        id="no-op-values-accepted",
    ),
]


@pytest.mark.parametrize(("request_body", "expected"), REQUESTS)
def test_request_translation(request_body: dict[str, Any], expected: dict[str, Any]) -> None:
    before = copy.deepcopy(request_body)
    out = to_anthropic_request(request_body)
    assert {k: out.get(k) for k in expected} == expected
    assert request_body == before, "the client's body must not be mutated"


def test_default_max_tokens_is_configurable() -> None:
    assert to_anthropic_request(body(), default_max_tokens=123)["max_tokens"] == 123


UNSUPPORTED = [
    pytest.param(body(n=2), "n", id="n>1"),
    pytest.param(body(logprobs=True), "logprobs", id="logprobs"),
    pytest.param(body(top_logprobs=3), "top_logprobs", id="top_logprobs"),
    pytest.param(body(frequency_penalty=0.5), "frequency_penalty", id="frequency_penalty"),
    pytest.param(body(presence_penalty=-1), "presence_penalty", id="presence_penalty"),
    pytest.param(body(logit_bias={"1": 5}), "logit_bias", id="logit_bias"),
    pytest.param(body(modalities=["text", "audio"]), "modalities", id="audio-out"),
    pytest.param(body(functions=[{"name": "f"}]), "functions", id="legacy-functions"),
    pytest.param(body(reasoning_effort="high"), "reasoning_effort", id="reasoning_effort"),
    pytest.param(body(temperature=1.5), "temperature", id="temperature-above-1"),
    pytest.param(body(max_tokens=0), "max_tokens", id="max-tokens-zero"),
    pytest.param(body(temperature="hot"), "temperature", id="temperature-not-a-number"),
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
    pytest.param(body(tool_choice="required"), "tool_choice", id="tool-choice-without-tools"),
    pytest.param(
        body(tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0]", id="custom-tool"
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [{"role": "user", "content": [{"type": "input_audio", "input_audio": {}}]}],
        },
        "messages[0].content[0]",
        id="audio-input",
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": "data:image/tiff;base64,AAAA"}}
                    ],
                }
            ],
        },
        "messages[0].content[0]",
        id="image-type",
    ),
    pytest.param(
        {
            "model": "m",
            "messages": [
                USER,
                {
                    "role": "assistant",
                    "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{oops"}}],
                },
            ],
        },
        "messages[1].tool_calls[0].function.arguments",
        id="tool-arguments-not-json",
    ),
    pytest.param(
        {"model": "m", "messages": [{"role": "function", "content": "x"}]},
        "messages[0].role",
        id="function-role",
    ),
    pytest.param({"model": "m", "messages": []}, "messages", id="no-messages"),
]


@pytest.mark.parametrize(("request_body", "param"), UNSUPPORTED)
def test_unsupported_features_are_refused_by_name(request_body: dict[str, Any], param: str) -> None:
    with pytest.raises(UnsupportedFeatureError) as caught:
        to_anthropic_request(request_body)
    assert caught.value.param == param


# Stop reasons and errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "finish"),
    [
        ("end_turn", "stop"),
        ("stop_sequence", "stop"),
        ("pause_turn", "stop"),
        ("max_tokens", "length"),
        ("model_context_window_exceeded", "length"),
        ("tool_use", "tool_calls"),
        ("refusal", "content_filter"),
    ],
)
def test_stop_reasons_map_to_finish_reasons(reason: str, finish: str) -> None:
    assert STOP_REASONS[reason] == finish


@pytest.mark.parametrize(
    ("status", "error_type", "kind"),
    [
        (400, "invalid_request_error", "client"),
        (413, "request_too_large", "client"),
        (401, "authentication_error", "auth"),
        (403, "permission_error", "auth"),
        (404, "not_found_error", "server"),
        (429, "rate_limit_error", "rate_limited"),
        (500, "api_error", "server"),
        (529, "overloaded_error", "overloaded"),
        (None, "overloaded_error", "overloaded"),
        (None, "rate_limit_error", "rate_limited"),
        (None, "api_error", "server"),
        (529, None, "overloaded"),
        (503, "something_new", "overloaded"),
        (504, None, "timeout"),
        (502, None, "server"),
        (422, None, "client"),
    ],
)
def test_error_classes(status: int | None, error_type: str | None, kind: str) -> None:
    assert error_kind(status, error_type) == kind


def test_error_bodies_keep_type_message_and_retry_after() -> None:
    raw = orjson.dumps({"type": "error", "error": {"type": "rate_limit_error", "message": "slow"}})
    err = upstream_error(429, raw, 7.0)
    assert (err.kind, err.status, err.retry_after, err.code) == (
        "rate_limited",
        429,
        7.0,
        "rate_limit_error",
    )
    assert "slow" in err.message


def test_an_unparseable_error_body_falls_back_to_the_status() -> None:
    assert upstream_error(529, b"<html>").kind == "overloaded"


# Non-streaming answers -----------------------------------------------------------------


def answer(content: list[dict[str, Any]], stop: str, **usage: int) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-x",
        "content": content,
        "stop_reason": stop,
        "usage": {"input_tokens": 10, "output_tokens": 5, **usage},
    }


def test_text_answer() -> None:
    out = from_anthropic_response(
        answer([{"type": "text", "text": "Hello"}], "end_turn"), created=1
    )
    assert_valid("CreateChatCompletionResponse", out)
    assert out["choices"][0]["message"]["content"] == "Hello"
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}


def test_tool_use_answer_keeps_text_and_calls() -> None:
    content = [
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "f", "input": {"a": 1}},
    ]
    out = from_anthropic_response(answer(content, "tool_use"), created=1)
    assert_valid("CreateChatCompletionResponse", out)
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Let me check."
    assert msg["tool_calls"] == [
        {"id": "toolu_1", "type": "function", "function": {"name": "f", "arguments": '{"a":1}'}}
    ]
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_forced_json_tool_comes_back_as_content() -> None:
    content = [{"type": "tool_use", "id": "toolu_1", "name": "person", "input": {"n": "Ada"}}]
    out = from_anthropic_response(answer(content, "tool_use"), created=1, json_tool="person")
    assert out["choices"][0]["message"]["content"] == '{"n":"Ada"}'
    assert "tool_calls" not in out["choices"][0]["message"]
    assert out["choices"][0]["finish_reason"] == "stop"


def test_cache_reads_and_writes_count_as_prompt_tokens() -> None:
    raw = answer(
        [{"type": "text", "text": "x"}],
        "end_turn",
        cache_read_input_tokens=100,
        cache_creation_input_tokens=20,
    )
    out = from_anthropic_response(raw, created=1)
    assert out["usage"]["prompt_tokens"] == 130
    assert out["usage"]["total_tokens"] == 135
    assert out["usage"]["prompt_tokens_details"] == {"cached_tokens": 100, "cache_write_tokens": 20}


def test_json_tool_name_follows_response_format() -> None:
    assert json_tool_name(body()) is None
    assert json_tool_name(body(response_format={"type": "json_object"})) == "json_response"


# Streams -------------------------------------------------------------------------------


def start(input_tokens: int = 25) -> dict[str, Any]:
    message = {
        "id": "msg_s",
        "type": "message",
        "role": "assistant",
        "model": "claude-x-2025",
        "content": [],
    }
    message["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    return {"type": "message_start", "message": message}


def text_block(index: int) -> dict[str, Any]:
    return {
        "type": "content_block_start",
        "index": index,
        "content_block": {"type": "text", "text": ""},
    }


def text_delta(index: int, text: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "text_delta", "text": text},
    }


def tool_block(index: int, id: str, name: str) -> dict[str, Any]:
    block = {"type": "tool_use", "id": id, "name": name, "input": {}}
    return {"type": "content_block_start", "index": index, "content_block": block}


def json_delta(index: int, partial: str) -> dict[str, Any]:
    return {
        "type": "content_block_delta",
        "index": index,
        "delta": {"type": "input_json_delta", "partial_json": partial},
    }


def stop_block(index: int) -> dict[str, Any]:
    return {"type": "content_block_stop", "index": index}


def end(reason: str, output_tokens: int) -> list[dict[str, Any]]:
    return [
        {
            "type": "message_delta",
            "delta": {"stop_reason": reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
        {"type": "message_stop"},
    ]


def translate(
    events: list[dict[str, Any]], json_tool: str | None = None
) -> tuple[list[dict[str, Any]], bool]:
    t = AnthropicStreamTranslator(model="claude-x", created=1700000000, json_tool=json_tool)
    chunks = [c for e in events for c in t.feed(e)]
    assert_chunks_valid(chunks)
    return chunks, t.done


def deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [c["choices"][0]["delta"] for c in chunks if c["choices"]]


def test_text_stream_becomes_role_content_finish_and_usage_chunks() -> None:
    events = [
        start(),
        text_block(0),
        {"type": "ping"},
        text_delta(0, "Hel"),
        text_delta(0, "lo"),
        stop_block(0),
        *end("end_turn", 12),
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
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 25, "completion_tokens": 12, "total_tokens": 37}
    assert {c["id"] for c in chunks} == {"msg_s"}
    assert {c["model"] for c in chunks} == {"claude-x-2025"}
    assert all(
        c["object"] == "chat.completion.chunk" and c["created"] == 1700000000 for c in chunks
    )


def test_tool_use_stream_gives_incremental_tool_call_deltas() -> None:
    events = [
        start(40),
        text_block(0),
        text_delta(0, "Checking."),
        stop_block(0),
        tool_block(1, "toolu_a", "get_weather"),
        json_delta(1, ""),
        json_delta(1, '{"city": "Par'),
        json_delta(1, 'is"}'),
        stop_block(1),
        tool_block(2, "toolu_b", "get_time"),
        json_delta(2, '{"tz": "CET"}'),
        stop_block(2),
        *end("tool_use", 57),
    ]
    chunks, _ = translate(events)
    calls = [d["tool_calls"][0] for d in deltas(chunks) if "tool_calls" in d]
    assert calls[0] == {
        "index": 0,
        "id": "toolu_a",
        "type": "function",
        "function": {"name": "get_weather", "arguments": ""},
    }
    assert calls[3] == {
        "index": 1,
        "id": "toolu_b",
        "type": "function",
        "function": {"name": "get_time", "arguments": ""},
    }
    args: dict[int, str] = {}
    for call in calls:
        args[call["index"]] = args.get(call["index"], "") + call["function"]["arguments"]
    assert args == {0: '{"city": "Paris"}', 1: '{"tz": "CET"}'}
    assert chunks[-2]["choices"][0]["finish_reason"] == "tool_calls"
    assert chunks[-1]["usage"] == {"prompt_tokens": 40, "completion_tokens": 57, "total_tokens": 97}


def test_forced_json_tool_streams_as_content() -> None:
    events = [
        start(),
        tool_block(0, "toolu_j", "person"),
        json_delta(0, '{"n": '),
        json_delta(0, '"Ada"}'),
        stop_block(0),
        *end("tool_use", 9),
    ]
    chunks, _ = translate(events, json_tool="person")
    assert "".join(d.get("content") or "" for d in deltas(chunks)) == '{"n": "Ada"}'
    assert not any("tool_calls" in d for d in deltas(chunks))
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_message_delta_usage_replaces_counts_and_adds_cache_tokens() -> None:
    begin = start(5)
    begin["message"]["usage"]["cache_read_input_tokens"] = 1000
    final = end("max_tokens", 30)
    final[0]["usage"] = {"output_tokens": 30, "input_tokens": 6}
    chunks, _ = translate([begin, text_block(0), text_delta(0, "x"), *final])
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["prompt_tokens"] == 1006
    assert chunks[-1]["usage"]["completion_tokens"] == 30


def test_error_event_raises_with_its_failure_class() -> None:
    t = AnthropicStreamTranslator(model="claude-x", created=1)
    t.feed(start())
    t.feed(text_block(0))
    assert t.feed(text_delta(0, "partial"))
    with pytest.raises(UpstreamError) as caught:
        t.feed({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})
    assert caught.value.kind == "overloaded"
    assert not t.done


def test_unknown_event_types_and_thinking_blocks_are_skipped() -> None:
    thinking = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "thinking", "thinking": ""},
    }
    events = [
        start(),
        thinking,
        {
            "type": "content_block_delta",
            "index": 0,
            "delta": {"type": "thinking_delta", "thinking": "hmm"},
        },
        {"type": "brand_new_event"},
        text_block(1),
        text_delta(1, "ok"),
        *end("end_turn", 3),
    ]
    chunks, _ = translate(events)
    assert deltas(chunks)[1:] == [{"content": "ok"}, {}]


# SSE framing ---------------------------------------------------------------------------

SSE = (
    b'event: message_start\r\ndata: {"type": "message_start"}\r\n\r\n'
    b": a comment\n\n"
    b'event: ping\ndata: {"type": "ping"}\n\n'
    b'event: content_block_delta\ndata: {"type":\ndata: "content_block_delta"}\nid: 3\n\n'
)


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, len(SSE)])
def test_sse_decoder_handles_any_split(size: int) -> None:
    decoder = SSEDecoder()
    events = [e for i in range(0, len(SSE), size) for e in decoder.feed(SSE[i : i + size])]
    assert [name for name, _ in events] == ["message_start", "ping", "content_block_delta"]
    assert orjson.loads(events[2][1]) == {"type": "content_block_delta"}


def test_sse_decoder_refuses_lines_that_are_not_sse() -> None:
    with pytest.raises(UpstreamError) as caught:
        list(SSEDecoder().feed(b"this line is not server-sent events\n\n"))
    assert caught.value.kind == "protocol"


def test_sse_decoder_bounds_a_line_without_newline() -> None:
    with pytest.raises(UpstreamError):
        list(SSEDecoder(max_line=100).feed(b"data: " + b"x" * 200))


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b'data: {"a": 1}', id="data"),
        pytest.param(b"data:  two spaces", id="data-two-spaces"),
        pytest.param(b"data: a:b", id="data-with-colon"),
        pytest.param(b"event: content_block_delta\ndata: {}", id="event-data"),
        pytest.param(b"event:  spaced\ndata:  x", id="event-data-two-spaces"),
        pytest.param(b"event: \xff\ndata: x", id="event-not-utf8"),
        pytest.param(b"event: \ndata: x", id="event-empty"),
        pytest.param(b"event: a\ndata: x\ndata: y", id="event-two-data"),
        pytest.param(b"event: a\nid: 1\ndata: x", id="event-id-data"),
        pytest.param(b"event:a\ndata:x", id="no-spaces"),
    ],
)
def test_sse_decoder_reads_each_event_as_its_fields(event: bytes) -> None:
    # The decoder's shortcut for one-data-line events reads what the line-by-line reader does.
    assert list(SSEDecoder().feed(event + b"\n\n")) == [fields(event, "upstream")]
