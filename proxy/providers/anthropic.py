"""The Anthropic Messages adapter: POST /v1/messages over the app's shared upstream session.

Translation lives in ``anthropic_wire``; this module only sends, maps transport failures to
``UpstreamError`` kinds and turns the SSE byte stream into OpenAI chunks.
"""

from __future__ import annotations

import ssl
import time
from typing import Any

import orjson

from .anthropic_wire import (
    WIRE,
    AnthropicStreamTranslator,
    from_anthropic_response,
    to_anthropic_request,
    upstream_error,
)
from .base import Sent, UnsupportedFeatureError, UpstreamError, UpstreamRequest
from .http_errors import error_body, parse_retry_after, transport_error
from .session import USER_AGENT, Response, SessionError, UpstreamSession, encode_headers
from .translate import json_tool_name
from .translated import TranslatedStream

# The Messages API version every request names.
API_VERSION = "2023-06-01"


class AnthropicStream(TranslatedStream):
    """An accepted Messages stream, yielded as OpenAI SSE chunks."""

    __slots__ = ("_translator",)
    wire = WIRE
    name = "anthropic"
    end = "message_stop"

    def __init__(self, resp: Response, translator: AnthropicStreamTranslator) -> None:
        super().__init__(resp)
        self._translator = translator

    def translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            chunks = self._translator.feed(event)
        except (TypeError, ValueError, AttributeError):
            raise UpstreamError(
                "protocol", f"anthropic: malformed {event.get('type')} event"
            ) from None
        self._done = self._translator.done
        return chunks


class AnthropicProvider:
    """One Anthropic Messages endpoint (api.anthropic.com or a compatible server)."""

    kind = "anthropic"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str,
        session: UpstreamSession,
        default_max_tokens: int = 4096,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.name = name
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        root = base_url.rstrip("/")
        self._url = root + ("/messages" if root.endswith("/v1") else "/v1/messages")
        self._headers = encode_headers(
            {
                "x-api-key": api_key,
                "anthropic-version": API_VERSION,
                "content-type": "application/json",
                "user-agent": USER_AGENT,
            }
        )
        self._session = session
        self.default_max_tokens = default_max_tokens

    def __repr__(self) -> str:
        return f"AnthropicProvider(name={self.name!r}, url={self._url!r})"

    async def start(self) -> None:
        """Nothing to create: the upstream session belongs to the app."""

    def pool_target(self) -> tuple[str, UpstreamSession, ssl.SSLContext | bool]:
        return self._url.rsplit("/messages", 1)[0], self._session, self._ssl

    async def close(self) -> None:
        """Nothing to close: the upstream session belongs to the app."""

    def _payload(self, request: UpstreamRequest, stream: bool) -> dict[str, Any]:
        if request.endpoint != "chat":
            raise UnsupportedFeatureError(
                "prompt", "legacy completions are not supported by Anthropic"
            )
        body = {**request.body, "model": request.upstream_id, "stream": stream}
        return to_anthropic_request(body, default_max_tokens=self.default_max_tokens)

    async def _post(self, payload: dict[str, Any], sent: Sent | None) -> Response:
        try:
            resp = await self._session.request(
                "POST", self._url, orjson.dumps(payload), self._headers, tls=self._ssl, sent=sent
            )
        except SessionError as exc:
            raise transport_error(exc) from None
        if resp.status == 200:
            return resp
        body = await error_body(resp)
        raise upstream_error(resp.status, body, parse_retry_after(resp.headers))

    async def stream(self, request: UpstreamRequest) -> AnthropicStream:
        payload = self._payload(request, stream=True)
        translator = AnthropicStreamTranslator(
            model=request.reported_model,
            created=int(time.time()),
            json_tool=json_tool_name(request.body),
        )
        return AnthropicStream(await self._post(payload, request.sent), translator)

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        payload = self._payload(request, stream=False)
        resp = await self._post(payload, request.sent)
        try:
            raw = await resp.read()
        except SessionError as exc:
            raise transport_error(exc) from None
        finally:
            resp.release()
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "anthropic answer is not JSON") from None
        if not isinstance(parsed, dict):
            raise UpstreamError("protocol", "anthropic answer is not an object")
        try:
            return from_anthropic_response(
                parsed, created=int(time.time()), json_tool=json_tool_name(request.body)
            )
        except (TypeError, ValueError, AttributeError):
            raise UpstreamError("protocol", "anthropic answer is malformed") from None
