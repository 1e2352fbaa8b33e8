"""Encoder for the AWS event stream (``application/vnd.amazon.eventstream``) that Bedrock's
ConverseStream speaks, so the simulated Bedrock is parsed by the real botocore decoder.

One message: a 12-byte prelude (total length, headers length, CRC32 of those 8 bytes), the
headers, the payload, and a CRC32 of everything before it; integers are big-endian.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Mapping
from typing import Any

import orjson

STRING_HEADER = 7  # header value type: 2-byte length, then UTF-8 bytes
_PRELUDE = struct.Struct(">II")
_CRC = struct.Struct(">I")


def _headers(headers: Mapping[str, str]) -> bytes:
    out = bytearray()
    for name, value in headers.items():
        raw_name, raw_value = name.encode(), value.encode()
        if len(raw_name) > 255 or len(raw_value) > 0xFFFF:
            raise ValueError(f"event stream header {name!r} is too long")
        out += bytes((len(raw_name),)) + raw_name
        out += bytes((STRING_HEADER,)) + struct.pack(">H", len(raw_value)) + raw_value
    return bytes(out)


def encode_event(headers: Mapping[str, str], payload: bytes) -> bytes:
    """One event stream message with string headers."""
    raw_headers = _headers(headers)
    total = _PRELUDE.size + _CRC.size + len(raw_headers) + len(payload) + _CRC.size
    prelude = _PRELUDE.pack(total, len(raw_headers))
    head = prelude + _CRC.pack(zlib.crc32(prelude))
    message = head + raw_headers + payload
    return message + _CRC.pack(zlib.crc32(message))


def encode_bedrock_event(event_type: str, payload: Mapping[str, Any]) -> bytes:
    """A ConverseStream event such as ``contentBlockDelta`` with its JSON payload."""
    headers = {
        ":event-type": event_type,
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return encode_event(headers, orjson.dumps(payload))


def encode_bedrock_exception(exception_type: str, message: str) -> bytes:
    """An in-stream exception such as ``throttlingException`` (the stream member's name)."""
    headers = {
        ":exception-type": exception_type,
        ":content-type": "application/json",
        ":message-type": "exception",
    }
    return encode_event(headers, orjson.dumps({"message": message}))
