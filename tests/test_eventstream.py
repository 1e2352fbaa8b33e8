"""Our event stream encoder against botocore's own decoder and ConverseStream parser."""

from __future__ import annotations

import itertools
import struct
import zlib
from typing import Any

import orjson
import pytest
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer, EventStreamMessage
from botocore.exceptions import EventStreamError
from botocore.parsers import create_parser
from botocore.session import get_session
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.sim.eventstream import encode_bedrock_event, encode_bedrock_exception, encode_event


def decode_all(data: bytes, cuts: list[int] | None = None) -> list[EventStreamMessage]:
    buffer = EventStreamBuffer()
    out: list[EventStreamMessage] = []
    edges = [0, *sorted(set(cuts or [])), len(data)]
    for start, end in itertools.pairwise(edges):
        buffer.add_data(data[start:end])
        out.extend(buffer)
    return out


def test_one_event_decodes_with_its_headers_and_payload() -> None:
    headers = {":message-type": "event", ":event-type": "chunk", ":content-type": "text/plain"}
    [msg] = decode_all(encode_event(headers, b"hello"))
    assert msg.headers == headers
    assert msg.payload == b"hello"


def test_prelude_and_message_crcs_are_crc32_of_what_precedes_them() -> None:
    raw = encode_event({":event-type": "x"}, b"{}")
    total, headers_len, prelude_crc = struct.unpack(">III", raw[:12])
    assert total == len(raw)
    assert headers_len == 1 + len(":event-type") + 1 + 2 + 1
    assert prelude_crc == zlib.crc32(raw[:8])
    assert struct.unpack(">I", raw[-4:])[0] == zlib.crc32(raw[:-4])


def test_utf8_header_values_and_empty_payload_round_trip() -> None:
    [msg] = decode_all(encode_event({":event-type": "héllo ✓"}, b""))
    assert msg.headers == {":event-type": "héllo ✓"}
    assert msg.payload == b""


@pytest.mark.parametrize(
    "offset",
    [pytest.param(9, id="prelude-crc"), pytest.param(-6, id="payload")],
)
def test_a_flipped_byte_fails_the_checksum(offset: int) -> None:
    raw = bytearray(encode_event({":event-type": "x"}, b"payload!"))
    raw[offset] ^= 0xFF
    with pytest.raises(ChecksumMismatch):
        decode_all(bytes(raw))


def test_a_header_name_over_255_bytes_is_refused() -> None:
    with pytest.raises(ValueError, match="too long"):
        encode_event({"x" * 256: "v"}, b"")


EVENTS = [
    encode_bedrock_event("messageStart", {"role": "assistant"}),
    encode_bedrock_event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "Hi"}}),
    encode_bedrock_event(
        "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "ü" * 300}}
    ),
    encode_bedrock_event("messageStop", {"stopReason": "end_turn"}),
    encode_bedrock_exception("throttlingException", "slow down"),
]
STREAM = b"".join(EVENTS)


@settings(max_examples=300, deadline=None)
@given(cuts=st.lists(st.integers(min_value=1, max_value=len(STREAM) - 1), max_size=40))
def test_events_split_across_arbitrary_byte_boundaries_decode_whole(cuts: list[int]) -> None:
    assert [(m.headers, m.payload) for m in decode_all(STREAM, cuts)] == [
        (m.headers, m.payload) for m in decode_all(STREAM)
    ]


def test_every_single_byte_split_decodes_the_same_events() -> None:
    messages = decode_all(STREAM, list(range(1, len(STREAM))))
    assert len(messages) == len(EVENTS)
    assert orjson.loads(messages[2].payload)["delta"]["text"] == "ü" * 300


def _converse_stream_parse(raw: bytes) -> dict[str, Any]:
    """Parse one message the way botocore parses a live ConverseStream event."""
    model = get_session().get_service_model("bedrock-runtime")
    shape = model.operation_model("ConverseStream").output_shape.members["stream"]
    parser = create_parser("rest-json").EVENT_STREAM_PARSER_CLS()
    [msg] = decode_all(raw)
    response = msg.to_response_dict()
    parsed: dict[str, Any] = parser.parse(response, shape)
    if response["status_code"] != 200:
        raise EventStreamError(parsed, "ConverseStream")
    return parsed


@pytest.mark.parametrize(
    ("event_type", "payload"),
    [
        pytest.param("messageStart", {"role": "assistant"}, id="messageStart"),
        pytest.param(
            "contentBlockStart",
            {"contentBlockIndex": 1, "start": {"toolUse": {"toolUseId": "t1", "name": "f"}}},
            id="contentBlockStart",
        ),
        pytest.param(
            "contentBlockDelta",
            {"contentBlockIndex": 1, "delta": {"toolUse": {"input": '{"a": '}}},
            id="contentBlockDelta",
        ),
        pytest.param("contentBlockStop", {"contentBlockIndex": 1}, id="contentBlockStop"),
        pytest.param("messageStop", {"stopReason": "tool_use"}, id="messageStop"),
        pytest.param(
            "metadata",
            {
                "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7},
                "metrics": {"latencyMs": 12},
            },
            id="metadata",
        ),
    ],
)
def test_bedrock_events_parse_as_converse_stream_members(
    event_type: str, payload: dict[str, Any]
) -> None:
    assert _converse_stream_parse(encode_bedrock_event(event_type, payload)) == {
        event_type: payload
    }


@pytest.mark.parametrize(
    "exception_type",
    [
        "throttlingException",
        "modelStreamErrorException",
        "validationException",
        "serviceUnavailableException",
        "internalServerException",
    ],
)
def test_bedrock_exceptions_raise_event_stream_errors_with_their_code(exception_type: str) -> None:
    with pytest.raises(EventStreamError) as caught:
        _converse_stream_parse(encode_bedrock_exception(exception_type, "it broke"))
    assert caught.value.response["Error"] == {"Code": exception_type, "Message": "it broke"}
