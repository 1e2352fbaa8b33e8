"""OpenAI-compatible upstreams (OpenAI, Gemini's compat endpoint, OpenRouter, DeepSeek, ...):
request bodies go as they are, stream bytes come back as they arrive.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import orjson

from probes.kinds import FailureKind

from .base import Sent, UpstreamError, UpstreamRequest, UpstreamStream
from .fim import render
from .http_errors import error_body, parse_retry_after, transport_error
from .session import USER_AGENT, Response, SessionError, UpstreamSession, encode_headers


def kind_for_status(status: int) -> FailureKind:
    if status == 429:
        return "rate_limited"
    if status in (401, 403):
        return "auth"
    if status in (400, 413, 422):
        return "client"
    if status == 408:
        return "timeout"
    if status in (503, 529):
        return "overloaded"
    return "server"  # 404 included: a deployment pointing at a model the upstream lacks


def error_message(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return "upstream answered with a non-JSON error body"
    err = data.get("error") if isinstance(data, dict) else None
    msg = err.get("message") if isinstance(err, dict) else err
    return str(msg)[:500] if msg else "upstream gave no error message"


async def status_error(resp: Response) -> UpstreamError:
    """An UpstreamError for a non-2xx response; releases the response."""
    body = await error_body(resp)
    return UpstreamError(
        kind_for_status(resp.status),
        f"upstream answered {resp.status}: {error_message(body)}",
        status=resp.status,
        retry_after=parse_retry_after(resp.headers),
    )


class OpenAIStream:
    """Yields the upstream's bytes as they arrive."""

    __slots__ = ("_resp",)

    def __init__(self, resp: Response) -> None:
        self._resp = resp

    def __aiter__(self) -> OpenAIStream:
        return self

    async def __anext__(self) -> bytes:
        try:
            data = await self._resp.readany()
        except SessionError as exc:
            raise transport_error(exc) from None
        if not data:
            raise StopAsyncIteration
        return data

    async def aclose(self) -> None:
        # An answer read to its end goes back to the pool (a probe's, so that live requests
        # find it warm); an unfinished one is closed: its connection must not be reused.
        if self._resp.at_eof():
            self._resp.release()
        else:
            self._resp.close()


class OpenAIProvider:
    kind = "openai"

    def __init__(
        self,
        name: str,
        *,
        base_url: str,
        api_key: str,
        session: UpstreamSession,
        ssl_context: ssl.SSLContext | None = None,
        fields: Mapping[str, frozenset[str]] | None = None,
    ) -> None:
        self.name = name
        self._session = session
        # True: the system trust store; a context: the provider's ca_file.
        self._ssl: ssl.SSLContext | bool = ssl_context if ssl_context is not None else True
        # Top-level fields this upstream is sent, per endpoint (proxy/decide/fields.py); None: all.
        self._fields = fields
        base = self._base = base_url.rstrip("/")
        self._urls = {"chat": f"{base}/chat/completions", "completions": f"{base}/completions"}
        # Built from an allowlist: nothing from the client's request reaches the upstream.
        headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
        if api_key:  # a keyless local server (Ollama, llama.cpp) gets no Authorization at all
            headers["Authorization"] = f"Bearer {api_key}"
        self._headers = encode_headers(headers)

    async def start(self) -> None:
        return None

    def pool_target(self) -> tuple[str, UpstreamSession, ssl.SSLContext | bool]:
        return self._base, self._session, self._ssl

    async def close(self) -> None:
        return None  # the session belongs to the app

    def _body(self, request: UpstreamRequest) -> dict[str, Any]:
        """The body as this upstream may see it: a field another provider's config allowed
        is not sent here (the router checked every field against the allowlist already)."""
        body = request.body
        if self._fields is not None:
            allowed = self._fields[request.endpoint]
            if not allowed.issuperset(body):
                body = {k: v for k, v in body.items() if k in allowed}
        return body

    async def _post(self, request: UpstreamRequest) -> Response:
        body = self._body(request)
        if request.fim_template and request.endpoint == "completions":
            body = render(request.fim_template, body)
        return await self._send(self._urls[request.endpoint], orjson.dumps(body), request.sent)

    async def _send(self, url: str, data: bytes, sent: Sent | None = None) -> Response:
        try:
            resp = await self._session.request(
                "POST", url, data, self._headers, tls=self._ssl, sent=sent
            )
        except SessionError as exc:
            raise transport_error(exc) from None
        if resp.status >= 300:
            raise await status_error(resp)
        return resp

    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        resp = await self._post(request)
        if not resp.content_type.startswith("text/event-stream"):
            resp.close()
            raise UpstreamError(
                "protocol", f"upstream answered a stream with {resp.content_type!r}"
            )
        return OpenAIStream(resp)

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        resp = await self._post(request)
        try:
            body = await resp.read()
        except SessionError as exc:
            raise transport_error(exc) from None
        finally:
            resp.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "upstream answer is not valid JSON") from None
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            raise UpstreamError("protocol", "upstream answer has no choices")
        return data
