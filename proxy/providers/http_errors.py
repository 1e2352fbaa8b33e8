"""What the HTTP adapters (OpenAI-wire, Anthropic) share about failures: a bounded read of
an error body, ``Retry-After`` in its three spellings, and transport errors mapped to
failure kinds without aiohttp's repr (it carries request headers)."""

from __future__ import annotations

import asyncio
import email.utils
import time
from collections.abc import Mapping

import aiohttp

from .base import UpstreamError

# Error bodies are read only this far: enough for a message, bounded against a hostile upstream.
MAX_ERROR_BODY = 64 * 1024


async def error_body(resp: aiohttp.ClientResponse) -> bytes:
    """The start of a non-2xx response's body (empty if it cannot be read); releases it."""
    try:
        return await resp.content.read(MAX_ERROR_BODY)
    except (TimeoutError, aiohttp.ClientError):
        return b""
    finally:
        resp.release()


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` or ``Retry-After`` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000.0, 0.0)
        except ValueError:
            pass
    value = headers.get("Retry-After")
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
    """Map aiohttp's exceptions without their repr (it carries request headers)."""
    if isinstance(exc, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
        return UpstreamError("timeout", "upstream timed out")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return UpstreamError("connect", f"could not connect to upstream {exc.host}:{exc.port}")
    if isinstance(exc, aiohttp.ClientPayloadError):
        return UpstreamError("server", "upstream connection broke mid-answer")
    return UpstreamError("connect", f"upstream connection failed ({type(exc).__name__})")
