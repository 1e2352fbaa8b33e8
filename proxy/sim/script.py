"""Scripted answers for the simulated providers: deterministic text, tool calls and usage.

Every wire format (OpenAI, Anthropic, Bedrock) renders the same ``Answer`` so a
conversation gets the same content, tool call and token counts whichever format served it.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

FaultMode = Literal[
    "none",
    "status",  # answer `status` (with Retry-After when set) before any byte
    "reset",  # close the connection before answering
    "hang_headers",  # never send the response headers
    "hang_first_token",  # send headers (and the role chunk) then nothing
    "stall",  # stop sending after `after_chunks` content chunks
    "malformed",  # a line that is not SSE after `after_chunks`
    "bad_json",  # a data line with invalid JSON after `after_chunks`
    "close",  # close the connection without [DONE] after `after_chunks`
    "error_event",  # an in-band error event after `after_chunks`
]
FAULT_MODES: frozenset[str] = frozenset(FaultMode.__args__)  # type: ignore[attr-defined]

_WORDS = [
    "the",
    "quick",
    "router",
    "streams",
    "tokens",
    "while",
    "probes",
    "measure",
    "latency",
    "and",
    "breakers",
    "guard",
    "every",
    "provider",
    "so",
    "answers",
    "arrive",
    "fast",
    "cheap",
    "and",
    "whole",
    "without",
    "silent",
    "truncation",
]


@dataclass(slots=True)
class Profile:
    """Latency profile of one simulated model; times in milliseconds."""

    ttft_ms: float = 20.0
    gap_ms: float = 2.0
    tokens: int = 12
    # A heavy tail: this share of answers takes tail_ttft_ms to the first token instead.
    tail_p: float = 0.0
    tail_ttft_ms: float = 0.0

    def draw_ttft_ms(self, rng: random.Random) -> float:
        if self.tail_p and rng.random() < self.tail_p:
            return self.tail_ttft_ms
        return self.ttft_ms


@dataclass(slots=True)
class Fault:
    mode: FaultMode = "none"
    status: int = 500
    retry_after: float | None = None
    after_chunks: int = 0
    remaining: int | None = None  # apply to this many requests, then clear; None = until reset


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # a JSON object as text


@dataclass(frozen=True, slots=True)
class Answer:
    pieces: tuple[str, ...]
    tool_call: ToolCall | None
    finish_reason: Literal["stop", "length", "tool_calls"]
    prompt_tokens: int
    completion_tokens: int

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def count_words(texts: Iterable[str]) -> int:
    """Prompt "tokens" as the simulators count them: whitespace-separated words of all
    message text, so the three wire formats agree on usage for the same conversation."""
    return sum(len(t.split()) for t in texts)


def _arguments_for(schema: Mapping[str, Any]) -> dict[str, Any]:
    props = schema.get("properties", {}) if isinstance(schema, Mapping) else {}
    required = schema.get("required", list(props)) if isinstance(schema, Mapping) else []
    args: dict[str, Any] = {}
    for name in required:
        kind = props.get(name, {}).get("type", "string") if isinstance(props, Mapping) else ""
        args[name] = {"integer": 1, "number": 1.5, "boolean": True}.get(kind, "sim")
    return args


@dataclass(frozen=True, slots=True)
class Conversation:
    """What a wire format extracted from a request, in format-neutral terms."""

    texts: tuple[str, ...]
    last_role: str  # "user", "assistant" or "tool" (a tool result was the last turn)
    tools: tuple[tuple[str, Mapping[str, Any]], ...] = ()  # (name, JSON schema)
    max_tokens: int | None = None
    seed_text: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)
    # response_format json_schema's schema ({} for json_object): the answer is a JSON object.
    json_schema: Mapping[str, Any] | None = None


def script_answer(conv: Conversation, profile: Profile) -> Answer:
    prompt_tokens = count_words(conv.texts)
    if conv.tools and conv.last_role != "tool":
        name, schema = conv.tools[0]
        args = orjson.dumps(_arguments_for(schema)).decode()
        digest = hashlib.sha256(conv.seed_text.encode()).hexdigest()[:24]
        return Answer(
            pieces=(),
            tool_call=ToolCall(id=f"call_{digest}", name=name, arguments=args),
            finish_reason="tool_calls",
            prompt_tokens=prompt_tokens,
            completion_tokens=max(1, len(args) // 4),
        )
    if conv.json_schema is not None:
        return _json_answer(conv, prompt_tokens)
    n = profile.tokens
    finish: Literal["stop", "length"] = "stop"
    if conv.max_tokens is not None and conv.max_tokens < n:
        n, finish = max(conv.max_tokens, 0), "length"
    start = int(hashlib.sha256(conv.seed_text.encode()).hexdigest()[:8], 16)
    pieces = tuple(
        ("" if i == 0 else " ") + _WORDS[(start + i) % len(_WORDS)] for i in range(max(n, 0))
    )
    return Answer(
        pieces=pieces,
        tool_call=None,
        finish_reason=finish,
        prompt_tokens=prompt_tokens,
        completion_tokens=len(pieces),
    )


def _json_answer(conv: Conversation, prompt_tokens: int) -> Answer:
    """A JSON object in 4-character pieces: the schema's required fields, or for json_object
    (an empty schema) one ``answer`` string."""
    schema = conv.json_schema
    doc = _arguments_for(schema) if schema else {"answer": "sim"}
    text = orjson.dumps(doc).decode()
    pieces = tuple(text[i : i + 4] for i in range(0, len(text), 4))
    return Answer(pieces, None, "stop", prompt_tokens, len(pieces))


def _json_schema_of(response_format: Any) -> Mapping[str, Any] | None:
    if not isinstance(response_format, Mapping):
        return None
    if response_format.get("type") == "json_object":
        return {}
    spec = response_format.get("json_schema")
    if response_format.get("type") == "json_schema" and isinstance(spec, Mapping):
        schema = spec.get("schema")
        return schema if isinstance(schema, Mapping) else {}
    return None


def _content_texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        return [
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        ]
    return []


def openai_conversation(body: Mapping[str, Any]) -> Conversation:
    """Conversation from an OpenAI chat or legacy completions body."""
    if "messages" not in body:
        prompt = body.get("prompt", "")
        parts = [prompt] if isinstance(prompt, str) else [str(p) for p in prompt]
        suffix = body.get("suffix")
        if isinstance(suffix, str):
            parts.append(suffix)
        return Conversation(
            texts=tuple(parts),
            last_role="user",
            max_tokens=body.get("max_tokens"),
            seed_text="".join(parts),
        )
    texts: list[str] = []
    last_role = "user"
    for msg in body.get("messages", []):
        if not isinstance(msg, dict):
            continue
        texts.extend(_content_texts(msg.get("content")))
        last_role = "tool" if msg.get("role") == "tool" else str(msg.get("role", "user"))
    tools = tuple(
        (t["function"]["name"], t["function"].get("parameters", {}))
        for t in body.get("tools", []) or []
        if isinstance(t, dict) and isinstance(t.get("function"), dict)
    )
    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    return Conversation(
        texts=tuple(texts),
        last_role=last_role,
        tools=tools,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        seed_text=texts[-1] if texts else "",
        json_schema=_json_schema_of(body.get("response_format")),
    )
