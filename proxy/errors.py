"""Errors the router answers with, in OpenAI's shape ``{"error": {message, type, param, code}}``."""

from __future__ import annotations

from typing import Any

import orjson


class RouterError(Exception):
    """A request the router answers itself with an error status.

    ``param`` names the offending request field when the client is at fault.
    """

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers or {}

    def payload(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def body(self) -> bytes:
        return orjson.dumps(self.payload())

    def sse(self) -> bytes:
        """The in-band form sent after the first byte: the OpenAI SDK raises APIError on it."""
        return b"data: " + self.body() + b"\n\n"


def bad_request(message: str, param: str | None, code: str | None = None) -> RouterError:
    return RouterError(400, message, param=param, code=code)


# How much of a client-supplied value an error message may quote: enough to recognise it,
# never a 4 MB model name echoed back (or written to a log).
QUOTE_MAX = 256


def quote(value: object) -> str:
    """``repr(value)`` cut to at most QUOTE_MAX characters of the client's value."""
    if isinstance(value, str) and len(value) > QUOTE_MAX:
        return repr(value[:QUOTE_MAX]) + f"... ({len(value)} characters)"
    text = repr(value)
    if len(text) > QUOTE_MAX + 2:
        return text[: QUOTE_MAX + 2] + f"... ({len(text)} characters)"
    return text


class SimPortError(Exception):
    """The demo's simulator could not listen on its port (``--sim-port``)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error
