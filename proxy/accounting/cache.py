"""The response cache: whole non-streaming answers, reused for identical requests.

A request uses it when its temperature is 0, or when it sends ``"cache": true``
(``"cache": false`` opts out). Non-streaming answers fill it; streaming requests read it
and get the answer replayed as a well-formed SSE stream. Entries are bytes with a size cap.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from cachetools import TTLCache

from proxy.config import CacheSettings
from proxy.decide.fields import EXTENSION_FIELDS
from proxy.errors import bad_request

# Fields that do not change the answer. "model" is replaced by the routed model's id.
IGNORED_FIELDS = frozenset(
    {"model", "stream", "stream_options", "user", "metadata", "store", *EXTENSION_FIELDS}
)

FLOAT_FIELDS = frozenset({"temperature", "top_p", "presence_penalty", "frequency_penalty"})


def wants_cache(body: Mapping[str, Any]) -> bool:
    """Whether this request may be answered from (and fill) the cache."""
    opt = body.get("cache")
    if opt is not None:
        if not isinstance(opt, bool):
            raise bad_request("'cache' must be a boolean", "cache")
        return opt
    temperature = body.get("temperature")
    return temperature is not None and not isinstance(temperature, bool) and temperature == 0


def cache_key(endpoint: str, model_id: str, key_id: str | None, body: Mapping[str, Any]) -> bytes:
    """sha256 of the canonical request: answer-relevant fields, the routed model, the key id.

    The key id is part of it so that answers are never shared across API keys."""
    fields: dict[str, Any] = {}
    for name, value in body.items():
        if name in IGNORED_FIELDS or value is None:
            continue
        if name in FLOAT_FIELDS and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # 0 and 0.0 ask for the same thing
        fields[name] = value
    canonical = orjson.dumps(
        {"endpoint": endpoint, "model": model_id, "key_id": key_id, "request": fields},
        option=orjson.OPT_SORT_KEYS,
    )
    return hashlib.sha256(canonical).digest()


class CachedAnswer:
    """A complete answer as JSON bytes (``usage.cost`` already 0) and what the log needs."""

    __slots__ = ("body", "completion_tokens", "model", "prompt_tokens", "provider")

    def __init__(
        self, body: bytes, model: str, provider: str, prompt_tokens: int, completion_tokens: int
    ) -> None:
        self.body = body
        self.model = model
        self.provider = provider
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = completion_tokens


class ResponseCache:
    def __init__(
        self, settings: CacheSettings, timer: Callable[[], float] = time.monotonic
    ) -> None:
        self.settings = settings
        self._entries: TTLCache[bytes, CachedAnswer] = TTLCache(
            maxsize=settings.max_entries, ttl=settings.ttl_s, timer=timer
        )
        self.hits = 0
        self.misses = 0
        self.stored = 0
        self.too_large = 0

    def get(self, key: bytes) -> CachedAnswer | None:
        entry = self._entries.get(key)
        if entry is None:
            self.misses += 1
        else:
            self.hits += 1
        return entry

    def put(
        self, key: bytes, body: bytes, model: str, provider: str, prompt: int, completion: int
    ) -> bool:
        """Keep a non-streaming answer's body; False when it is too large or not JSON."""
        if len(body) > self.settings.max_entry_bytes:
            self.too_large += 1
            return False
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            return False
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            return False
        # A replayed answer costs nothing; the stored copy says so.
        if isinstance(usage := data.get("usage"), dict):
            usage["cost"] = 0.0
        self._entries[key] = CachedAnswer(orjson.dumps(data), model, provider, prompt, completion)
        self.stored += 1
        return True

    def stats(self) -> dict[str, Any]:
        return {
            "enabled": True,
            "entries": len(self._entries),
            "max_entries": self.settings.max_entries,
            "ttl_s": self.settings.ttl_s,
            "hits": self.hits,
            "misses": self.misses,
            "stored": self.stored,
            "too_large": self.too_large,
        }


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def replay_sse(body: bytes, endpoint: str, include_usage: bool) -> bytes:
    """A cached answer as the SSE stream the upstream would have sent for it."""
    data = orjson.loads(body)
    events = _chat_chunks(data, include_usage) if endpoint == "chat" else _completion_chunks(data)
    usage = data.get("usage")
    if include_usage and isinstance(usage, dict):
        events.append(_sse({**_base(data, endpoint), "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def _base(data: Mapping[str, Any], endpoint: str) -> dict[str, Any]:
    base = {
        "id": data.get("id", "cached"),
        "object": "chat.completion.chunk" if endpoint == "chat" else "text_completion",
        "created": data.get("created", 0),
        "model": data.get("model", ""),
    }
    if data.get("system_fingerprint"):
        base["system_fingerprint"] = data["system_fingerprint"]
    return base


def _chat_chunks(data: Mapping[str, Any], include_usage: bool) -> list[bytes]:
    base = _base(data, "chat")
    if include_usage:
        base["usage"] = None  # as OpenAI sends on every chunk but the last

    def chunk(
        index: int, delta: dict[str, Any], finish: str | None = None, lp: Any = None
    ) -> bytes:
        choice = {"index": index, "delta": delta, "logprobs": lp, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    events = []
    for choice in data.get("choices") or ():
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        events.append(chunk(index, {"role": "assistant", "content": ""}))
        if message.get("content"):
            events.append(chunk(index, {"content": message["content"]}, lp=choice.get("logprobs")))
        if message.get("refusal"):
            events.append(chunk(index, {"refusal": message["refusal"]}))
        for i, call in enumerate(message.get("tool_calls") or ()):
            fn = call.get("function") or {}
            part = {"index": i, "id": call.get("id"), "type": call.get("type", "function")}
            part["function"] = {"name": fn.get("name", ""), "arguments": fn.get("arguments", "")}
            events.append(chunk(index, {"tool_calls": [part]}))
        events.append(chunk(index, {}, choice.get("finish_reason") or "stop"))
    return events


def _completion_chunks(data: Mapping[str, Any]) -> list[bytes]:
    # One chunk per choice, text and finish reason together: OpenAI's schema for legacy
    # completion chunks has no null finish_reason, and a replay has nothing to wait for.
    base = _base(data, "completions")
    return [
        _sse(
            {
                **base,
                "choices": [
                    {
                        "text": choice.get("text", ""),
                        "index": choice.get("index", 0),
                        "logprobs": choice.get("logprobs"),
                        "finish_reason": choice.get("finish_reason") or "stop",
                    }
                ],
            }
        )
        for choice in data.get("choices") or ()
    ]
