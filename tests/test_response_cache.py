"""The response cache's pure parts: who may use it, what the key covers, expiry, size caps,
and SSE replays that validate against OpenAI's stream schema."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.accounting.cache import ResponseCache, cache_key, replay_sse, wants_cache
from proxy.config import CacheSettings
from proxy.errors import RouterError
from tests.openapi_schema import assert_valid

BODY: dict[str, Any] = {
    "model": "auto:fast",
    "messages": [{"role": "user", "content": "hi"}],
    "temperature": 0,
}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        pytest.param({}, True, id="temperature-0"),
        pytest.param({"temperature": 0.0}, True, id="temperature-0.0"),
        pytest.param({"temperature": 0.3}, False, id="temperature-0.3"),
        pytest.param({"temperature": None}, False, id="temperature-absent"),
        pytest.param({"temperature": False}, False, id="temperature-false-is-not-0"),
        pytest.param({"temperature": 0.9, "cache": True}, True, id="opt-in"),
        pytest.param({"cache": False}, False, id="opt-out-wins-over-temperature-0"),
    ],
)
def test_who_uses_the_cache(extra: dict[str, Any], expected: bool) -> None:
    assert wants_cache({**BODY, **extra}) is expected


def test_cache_field_must_be_boolean() -> None:
    with pytest.raises(RouterError) as err:
        wants_cache({**BODY, "cache": 1})
    assert (err.value.status, err.value.param) == (400, "cache")


def key(body: dict[str, Any], model: str = "gpt-5-nano", key_id: str | None = None) -> bytes:
    return cache_key("chat", model, key_id, body)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"stream": True, "stream_options": {"include_usage": True}}, id="stream"),
        pytest.param({"user": "someone"}, id="user"),
        pytest.param({"prefer": "fast", "tier": "economy", "models": ["x"]}, id="extensions"),
        pytest.param({"cache": True}, id="cache-flag"),
        pytest.param({"model": "gpt-5-nano"}, id="requested-model-name"),
        pytest.param({"temperature": 0.0}, id="0-vs-0.0"),
        pytest.param({"seed": None}, id="null-field"),
        pytest.param({"metadata": {"a": "b"}, "store": True}, id="metadata"),
    ],
)
def test_fields_that_do_not_change_the_answer_do_not_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) == key(BODY)


def test_key_ignores_field_order() -> None:
    assert key(dict(reversed(list(BODY.items())))) == key(BODY)


@pytest.mark.parametrize(
    "change",
    [
        pytest.param({"messages": [{"role": "user", "content": "hello"}]}, id="messages"),
        pytest.param({"max_tokens": 5}, id="max-tokens"),
        pytest.param({"seed": 7}, id="seed"),
        pytest.param({"tools": [{"type": "function", "function": {"name": "f"}}]}, id="tools"),
    ],
)
def test_fields_that_change_the_answer_change_the_key(change: dict[str, Any]) -> None:
    assert key({**BODY, **change}) != key(BODY)


def test_key_covers_routed_model_endpoint_and_api_key() -> None:
    assert key(BODY, model="gpt-5-mini") != key(BODY)
    assert cache_key("completions", "gpt-5-nano", None, BODY) != key(BODY)
    assert key(BODY, key_id="key-a") != key(BODY, key_id="key-b") != key(BODY)


ANSWER = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1,
    "model": "gpt-5-nano",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "hello there", "refusal": None},
            "logprobs": None,
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5, "cost": 0.01},
}


class Timer:
    now = 0.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_ttl_and_stored_copy_costs_nothing() -> None:
    timer = Timer()
    cache = ResponseCache(CacheSettings(ttl_s=10.0), timer)
    assert cache.put(b"k", orjson.dumps(ANSWER), "gpt-5-nano", "openai", 3, 2)
    entry = cache.get(b"k")
    assert entry is not None and orjson.loads(entry.body)["usage"]["cost"] == 0
    timer.now = 10.5
    assert cache.get(b"k") is None
    assert (cache.hits, cache.misses) == (1, 1)


def test_entry_count_and_entry_size_are_bounded() -> None:
    cache = ResponseCache(CacheSettings(max_entries=2, max_entry_bytes=2_000))
    body = orjson.dumps(ANSWER)
    for k in (b"a", b"b", b"c"):
        assert cache.put(k, body, "m", "p", 1, 1)
    assert cache.stats()["entries"] == 2
    big = orjson.dumps({**ANSWER, "id": "x" * 3_000})
    assert not cache.put(b"big", big, "m", "p", 1, 1)
    assert cache.too_large == 1 and cache.get(b"big") is None


def test_non_answers_are_not_stored() -> None:
    cache = ResponseCache(CacheSettings())
    assert not cache.put(b"k", b"not json", "m", "p", 0, 0)
    assert not cache.put(b"k", b'{"error": {}}', "m", "p", 0, 0)


def events(raw: bytes) -> list[Any]:
    parts = [e for e in raw.split(b"\n\n") if e]
    assert parts[-1] == b"data: [DONE]" and raw.endswith(b"\n\n")
    return [orjson.loads(e.removeprefix(b"data: ")) for e in parts[:-1]]


def test_chat_replay_with_two_choices_and_a_refusal_validates() -> None:
    answer = {
        **ANSWER,
        "system_fingerprint": "fp_1",
        "choices": [
            ANSWER["choices"][0],
            {
                "index": 1,
                "message": {"role": "assistant", "content": None, "refusal": "no"},
                "logprobs": None,
                "finish_reason": "content_filter",
            },
        ],
    }
    chunks = events(replay_sse(orjson.dumps(answer), "chat", include_usage=True))
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert all(c["system_fingerprint"] == "fp_1" for c in chunks)
    by_index: dict[int, list[Any]] = {}
    for c in chunks[:-1]:
        by_index.setdefault(c["choices"][0]["index"], []).append(c["choices"][0])
    assert "".join(c["delta"].get("content") or "" for c in by_index[0]) == "hello there"
    assert [c["delta"].get("refusal") for c in by_index[1]] == [None, "no", None]
    assert by_index[1][-1]["finish_reason"] == "content_filter"
    assert chunks[-1]["usage"]["total_tokens"] == 5


def test_completion_replay_validates_and_drops_usage_unless_asked() -> None:
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "created": 1,
        "model": "m",
        "choices": [{"text": "x = 1", "index": 0, "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }
    chunks = events(replay_sse(orjson.dumps(answer), "completions", include_usage=False))
    assert len(chunks) == 1
    assert_valid("CreateCompletionResponse", chunks[0])
    assert chunks[0]["choices"][0]["text"] == "x = 1"
    assert "usage" not in chunks[0]
