"""What the HTTP adapters (OpenAI-wire, Anthropic) share about failures: a bounded read of
an error body, ``Retry-After`` in its three spellings, and the upstream session's transport
errors mapped to failure kinds."""

from __future__ import annotations

import email.utils
import time
from collections.abc import Mapping

from .base import UpstreamError
from .session import ConnectError, PayloadError, Response, SessionError

# Error bodies are read only this far: enough for a message, bounded against a hostile upstream.
MAX_ERROR_BODY = 64 * 1024


async def error_body(resp: Response) -> bytes:
    """The start of a non-2xx response's body (empty if it cannot be read); releases it."""
    try:
        return await resp.read_upto(MAX_ERROR_BODY)
    except SessionError:
        return b""
    finally:
        resp.release()


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date); the
    header names as the session gives them, in lower case."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.0)


def transport_error(exc: BaseException) -> UpstreamError:
    """The session's failures as kinds: no connection (or none in time), a break before the
    response head (connect: nothing was answered) or after it (server: an answer was cut)."""
    if isinstance(exc, TimeoutError):
        return UpstreamError("timeout", "upstream timed out")
    if isinstance(exc, ConnectError):
        return UpstreamError("connect", f"could not connect to upstream {exc.host}:{exc.port}")
    if isinstance(exc, PayloadError):
        return UpstreamError("server", "upstream connection broke mid-answer")
    return UpstreamError("connect", f"upstream connection failed ({type(exc).__name__})")
