"""Server-sent events, read in one place: the relay (OpenAI-wire upstreams) and the translating
streams (``translated.py``: Anthropic, Mistral FIM) split bytes into events here and read each
event's fields with ``fields``.
"""

from __future__ import annotations

from collections.abc import Iterator

from .base import UpstreamError

# A single event larger than this is not an LLM chunk; refuse to buffer it.
MAX_EVENT_BYTES = 1024 * 1024


def fields(event: bytes, wire: str) -> tuple[str, bytes | None]:
    """One event (its lines, without the blank line that ends it) -> (event name, its data
    lines joined by newlines, or None when it has none). Comments, ``id`` and ``retry`` are
    skipped; any other line is a protocol error."""
    name = ""
    data: list[bytes] = []
    for line in event.split(b"\n"):
        if not line or line.startswith(b":"):
            continue
        field, _, value = line.partition(b":")
        if value.startswith(b" "):
            value = value[1:]
        if field == b"data":
            data.append(value)
        elif field == b"event":
            name = value.decode("utf-8", "replace")
        elif field not in (b"id", b"retry"):
            raise UpstreamError("protocol", f"{wire} sent a line that is not server-sent events")
    return name, b"\n".join(data) if data else None


class SSEDecoder:
    """Incremental: bytes in, ``(event, data)`` pairs out, for events that carry data.
    An unfinished event longer than ``max_line`` is refused rather than buffered."""

    __slots__ = ("_buf", "max_line", "wire")

    def __init__(self, wire: str = "upstream", max_line: int = MAX_EVENT_BYTES) -> None:
        self._buf = b""
        self.wire = wire
        self.max_line = max_line

    def feed(self, data: bytes) -> Iterator[tuple[str, bytes]]:
        """Events completed by ``data``, lazily: those before a bad line still come out."""
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        *events, self._buf = buf.split(b"\n\n")
        if len(self._buf) > self.max_line:
            raise UpstreamError("protocol", f"{self.wire} stream: an SSE event is too long")
        for event in events:
            # The two shapes streams are made of, read without ``fields``' line loop (40
            # bytecodes an event where it is 110): one ``data`` line, or an ``event`` line
            # then one ``data`` line (Anthropic). Anything else is read line by line.
            if event.startswith(b"data: ") and b"\n" not in event:
                yield "", event[6:]
                continue
            if event.startswith(b"event: "):
                line, sep, data = event.partition(b"\ndata: ")
                if sep and b"\n" not in line and b"\n" not in data:
                    yield line[7:].decode("utf-8", "replace"), data
                    continue
            name, payload = fields(event, self.wire)
            if payload is not None:
                yield name, payload
