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
