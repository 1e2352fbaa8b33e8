"""Mistral's API: chat completions are OpenAI's wire and pass through; legacy completions
(FIM, Codestral) go to ``POST /v1/fim/completions`` and come back in the completions shape.

Mistral refuses fields it does not know (HTTP 422), so the FIM body is built from an
allowlist, and what it cannot express is a 400 naming the field, before anything is sent.
Its FIM answers are chat-completion shaped (``message.content``, ``delta.content``); the
final stream chunk carries ``usage``.
"""

from __future__ import annotations

from typing import Any

import orjson

from .base import UnsupportedFeatureError, UpstreamError, UpstreamRequest, UpstreamStream
from .fim import single_prompt
from .http_errors import transport_error
from .openai import OpenAIProvider
from .session import Response, SessionError
from .translated import TranslatedStream

# OpenAI completions field -> Mistral FIM field.
_RENAMED = {"seed": "random_seed"}
_PASSED = frozenset({"prompt", "suffix", "max_tokens", "temperature", "top_p", "stop", "stream"})
# Accepted when they ask for nothing Mistral would do differently.
_NO_OP = {
    "n": lambda v: v in (None, 1),
    "best_of": lambda v: v in (None, 1),
    "echo": lambda v: v in (None, False),
    "logprobs": lambda v: v is None,
    "presence_penalty": lambda v: v in (None, 0),
    "frequency_penalty": lambda v: v in (None, 0),
    "logit_bias": lambda v: not v,
}
# Ours or transport-only: usage always comes on the last chunk; ``user`` has no Mistral field.
_DROPPED = frozenset({"model", "stream_options", "user"})


def fim_body(request: UpstreamRequest) -> dict[str, Any]:
    """The Mistral FIM request for an OpenAI completions body."""
    body = request.body
    out: dict[str, Any] = {"model": request.upstream_id}
    for key, value in body.items():
        if key in _DROPPED:
            continue
        if key in _PASSED:
            if value is not None:
                out[key] = value
        elif key in _RENAMED:
            if value is not None:
                out[_RENAMED[key]] = value
        elif key in _NO_OP and _NO_OP[key](value):
            continue
        else:
            raise UnsupportedFeatureError(key, f"{key} is not supported by Mistral FIM")
    out["prompt"] = single_prompt(body, "Mistral FIM")
    out["stream"] = request.stream
    return out


def _choice(choice: dict[str, Any], text: str | None) -> dict[str, Any]:
    return {
        "index": choice.get("index", 0),
        "text": text or "",
        "finish_reason": choice.get("finish_reason"),
        "logprobs": None,
    }


def completion_from_fim(data: Any) -> dict[str, Any]:
    """A non-streamed FIM answer in the shape of OpenAI's ``CreateCompletionResponse``."""
    if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
        raise UpstreamError("protocol", "mistral: answer has no choices")
    choices = []
    for c in data["choices"]:
        if not isinstance(c, dict) or not isinstance(c.get("message"), dict):
            raise UpstreamError("protocol", "mistral: a choice has no message")
        choices.append(_choice(c, c["message"].get("content")))
    out = {
        "id": data.get("id", ""),
        "object": "text_completion",
        "created": data.get("created", 0),
        "model": data.get("model", ""),
        "choices": choices,
    }
    if isinstance(data.get("usage"), dict):
        out["usage"] = data["usage"]
    return out


def chunks_from_fim(event: dict[str, Any]) -> list[dict[str, Any]]:
    """One Mistral stream chunk as OpenAI completions chunks: the text (if any), then the
    usage on a chunk of its own (``choices: []``), as OpenAI sends it."""
    head = {
        "id": event.get("id", ""),
        "object": "text_completion",
        "created": event.get("created", 0),
        "model": event.get("model", ""),
    }
    out = []
    choices = []
    for c in event.get("choices") or ():
        if not isinstance(c, dict):
            raise UpstreamError("protocol", "mistral: a stream choice is not an object")
        delta = c.get("delta")
        text = delta.get("content") if isinstance(delta, dict) else None
        if text or c.get("finish_reason"):
            choices.append(_choice(c, text))
    if choices:
        out.append({**head, "choices": choices})
    if isinstance(event.get("usage"), dict):
        out.append({**head, "choices": [], "usage": event["usage"]})
    return out


class MistralFIMStream(TranslatedStream):
    """A FIM stream, yielded as OpenAI completions SSE events."""

    __slots__ = ()
    wire = name = "mistral"
    end = "[DONE]"

    def ends(self, payload: bytes) -> bool:
        return payload.strip() == b"[DONE]"

    def translate(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        if "error" in event or event.get("object") == "error":
            message = event.get("message") or event.get("error")
            raise UpstreamError("server", f"mistral error mid-stream: {message}")
        return chunks_from_fim(event)


class MistralProvider(OpenAIProvider):
    """Chat passes through as OpenAI's wire; completions become Mistral FIM."""

    kind = "mistral"

    async def _post_fim(self, request: UpstreamRequest) -> Response:
        body = orjson.dumps(fim_body(request))
        return await self._send(f"{self._base}/fim/completions", body, request.sent)

    async def stream(self, request: UpstreamRequest) -> UpstreamStream:
        if request.endpoint != "completions":
            return await super().stream(request)
        resp = await self._post_fim(request)
        if not resp.content_type.startswith("text/event-stream"):
            resp.close()
            raise UpstreamError("protocol", f"mistral answered a stream with {resp.content_type!r}")
        return MistralFIMStream(resp)

    async def complete(self, request: UpstreamRequest) -> dict[str, Any]:
        if request.endpoint != "completions":
            return await super().complete(request)
        resp = await self._post_fim(request)
        try:
            body = await resp.read()
        except SessionError as exc:
            raise transport_error(exc) from None
        finally:
            resp.release()
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError("protocol", "mistral answer is not valid JSON") from None
        return completion_from_fim(data)
