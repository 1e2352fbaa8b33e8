"""The scaffolding every translating stream shares: an upstream SSE stream whose events are
JSON objects, each turned into zero or more OpenAI chunks (Anthropic Messages, Mistral FIM).

A subclass names its wire and translates one event; this class owns the reading, the JSON
checks, the ``[DONE]`` it emits, the transport-error mapping and whether the connection can
go back to the pool when the stream is closed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from typing import Any, ClassVar

import orjson

from .base import UpstreamError
from .http_errors import transport_error
from .session import Response, SessionError
from .sse import SSEDecoder
from .translate import DONE, sse


class TranslatedStream:
    """An accepted upstream stream, yielded as OpenAI SSE events ending in ``[DONE]``."""

    __slots__ = ("_done", "_gen", "_resp")

    # For the decoder's errors ("the Anthropic Messages API").
    wire: ClassVar[str]
    # For this class's own errors ("anthropic stream: invalid JSON").
    name: ClassVar[str]
    # What a complete stream ends with, for "ended before ..." ("message_stop").
    end: ClassVar[str]

    def __init__(self, resp: Response) -> None:
        self._resp = resp
        self._done = False  # the upstream said the answer is complete
        self._gen: AsyncGenerator[bytes, None] | None = None

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        if self._gen is None:
            self._gen = self._iterate()
        return self._gen

    def translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        """The OpenAI chunks for one upstream event; sets ``_done`` on the final one."""
        raise NotImplementedError

    def ends(self, payload: bytes) -> bool:
        """Whether a raw payload is a non-JSON end marker (``[DONE]``)."""
        return False

    async def _iterate(self) -> AsyncGenerator[bytes, None]:
        decoder = SSEDecoder(self.wire)
        # Per event, no call to the base ``ends`` (always False) and no ``_load`` frame: 11
        # bytecodes an event less (measured).
        ends = None if type(self).ends is TranslatedStream.ends else self.ends
        translate = self.translate
        try:
            readany = self._resp.readany
            while data := await readany():
                for _event, payload in decoder.feed(data):
                    if ends is not None and ends(payload):
                        self._done = True
                    else:
                        try:
                            event = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            raise UpstreamError(
                                "protocol", f"{self.name} stream: invalid JSON"
                            ) from None
                        if type(event) is not dict:
                            raise UpstreamError(
                                "protocol", f"{self.name} stream: event is not an object"
                            )
                        for chunk in translate(event):
                            yield sse(chunk)
                    if self._done:
                        yield DONE
                        return
        except SessionError as exc:
            raise transport_error(exc) from None
        raise UpstreamError("server", f"{self.name} stream ended before {self.end}")

    async def aclose(self) -> None:
        if self._gen is not None:
            await self._gen.aclose()
        if self._done:
            self._resp.release()
        else:
            self._resp.close()  # mid-answer: the connection cannot be reused
