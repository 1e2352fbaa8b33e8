"""Anthropic Messages <-> OpenAI Chat Completions: requests, answers, stream events, errors.

Pure translation, no I/O. ``response_format`` (json_object / json_schema) is served with a
forced tool whose input is the JSON answer (``translate.json_response_tool``); the
translators turn that tool's input back into message content, so the client sees ordinary
JSON text with ``finish_reason: "stop"``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from probes.kinds import FailureKind

from .base import UnsupportedFeatureError, UpstreamError
from .translate import (
    ChunkMaker,
    Image,
    Part,
    Text,
    ToolUse,
    assistant_message,
    check_fields,
    completion,
    conversation,
    function_tools,
    json_response_tool,
    max_tokens_of,
    stop_list,
    tool_call,
    tool_choice_of,
    usage,
)

WIRE = "the Anthropic Messages API"

STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "pause_turn": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "refusal": "content_filter",
}

# error.type in an error body or an in-stream ``error`` event -> failure class.
ERROR_TYPES: Mapping[str, FailureKind] = {
    "invalid_request_error": "client",
    # The router chose the model id: a 404 is the deployment's fault, as in the OpenAI adapter.
    "not_found_error": "server",
    "request_too_large": "client",
    "authentication_error": "auth",
    "permission_error": "auth",
    "billing_error": "auth",
    "rate_limit_error": "rate_limited",
    "overloaded_error": "overloaded",
    "api_error": "server",
    "timeout_error": "timeout",
}


def status_kind(status: int) -> FailureKind:
    if status == 429:
        return "rate_limited"
    if status in (503, 529):
        return "overloaded"
    if status in (408, 504):
        return "timeout"
    if status in (401, 402, 403):
        return "auth"
    if 400 <= status < 500 and status != 404:
        return "client"
    return "server"


def error_kind(status: int | None, error_type: str | None) -> FailureKind:
    """The error body's type wins over the status; unknown types fall back to the status."""
    if error_type is not None and error_type in ERROR_TYPES:
        return ERROR_TYPES[error_type]
    return status_kind(status) if status is not None else "server"


def upstream_error(
    status: int | None, body: bytes, retry_after: float | None = None
) -> UpstreamError:
    """An ``UpstreamError`` from an error status and body (``{"type": "error", "error": ...}``)."""
    error_type: str | None = None
    message = ""
    try:
        parsed = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        parsed = None
    err = parsed.get("error") if isinstance(parsed, dict) else None
    if isinstance(err, dict):
        error_type = err.get("type") if isinstance(err.get("type"), str) else None
        message = str(err.get("message", ""))[:500]
    where = f"HTTP {status}" if status is not None else "mid-stream"
    return UpstreamError(
        error_kind(status, error_type),
        f"anthropic {where}: {error_type or 'error'}: {message}".rstrip(": "),
        status=status,
        retry_after=retry_after,
        code=error_type,
    )


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"type": "text", "text": part.text}
    if isinstance(part, Image):
        if part.url:
            return {"type": "image", "source": {"type": "url", "url": part.url}}
        source = {"type": "base64", "media_type": part.media_type, "data": part.data}
        return {"type": "image", "source": source}
    if isinstance(part, ToolUse):
        return {"type": "tool_use", "id": part.id, "name": part.name, "input": part.input}
    return {"type": "tool_result", "tool_use_id": part.tool_use_id, "content": part.text}


def to_anthropic_request(
    body: Mapping[str, Any], *, default_max_tokens: int = 4096
) -> dict[str, Any]:
    """OpenAI chat body -> Messages API body. Raises UnsupportedFeatureError naming a field.

    ``max_tokens`` is required upstream; absent, it is ``default_max_tokens``.
    """
    check_fields(body, WIRE, extra=frozenset({"top_k"}))
    temperature = body.get("temperature")
    if temperature is not None and (
        isinstance(temperature, bool)
        or not isinstance(temperature, int | float)
        or not 0 <= temperature <= 1
    ):
        raise UnsupportedFeatureError("temperature", f"{WIRE} accepts temperature from 0 to 1")
    conv = conversation(body)
    out: dict[str, Any] = {
        "model": body["model"],
        "max_tokens": max_tokens_of(body) or default_max_tokens,
        "messages": [{"role": t.role, "content": [_block(p) for p in t.parts]} for t in conv.turns],
    }
    if conv.system:
        out["system"] = [{"type": "text", "text": s} for s in conv.system]
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if (stops := stop_list(body.get("stop"))) is not None:
        out["stop_sequences"] = stops
    if isinstance(body.get("user"), str):
        out["metadata"] = {"user_id": body["user"]}
    _add_tools(body, out)
    if body.get("stream"):
        out["stream"] = True
    return out


def _add_tools(body: Mapping[str, Any], out: dict[str, Any]) -> None:
    """``tools`` and ``tool_choice``; ``response_format`` becomes one forced tool."""
    tools = [
        {
            "name": t.name,
            **({"description": t.description} if t.description else {}),
            "input_schema": t.parameters,
        }
        for t in function_tools(body)
    ]
    choice = tool_choice_of(body)
    if (forced := json_response_tool(body, WIRE)) is not None:
        out["tools"] = [
            {
                "name": forced.name,
                "description": forced.description,
                "input_schema": forced.parameters,
            }
        ]
        out["tool_choice"] = {"type": "tool", "name": forced.name}
    elif tools:
        out["tools"] = tools
        tc: dict[str, Any] = {
            None: {"type": "auto"},
            "auto": {"type": "auto"},
            "none": {"type": "none"},
            "required": {"type": "any"},
        }.get(choice) or {"type": "tool", "name": choice}
        if body.get("parallel_tool_calls") is False and tc["type"] != "none":
            tc["disable_parallel_tool_use"] = True
        out["tool_choice"] = tc
    elif choice not in (None, "none", "auto"):
        raise UnsupportedFeatureError("tool_choice", "tool_choice needs tools")


def _usage_of(u: Mapping[str, Any]) -> dict[str, Any]:
    cached = int(u.get("cache_read_input_tokens") or 0)
    written = int(u.get("cache_creation_input_tokens") or 0)
    prompt = int(u.get("input_tokens") or 0) + cached + written
    return usage(prompt, int(u.get("output_tokens") or 0), cached=cached, cache_write=written)


def from_anthropic_response(
    resp: Mapping[str, Any], *, created: int, json_tool: str | None = None
) -> dict[str, Any]:
    """Messages API answer -> ``chat.completion``; raises UpstreamError(protocol) if malformed."""
    content = resp.get("content")
    if not isinstance(content, list):
        raise UpstreamError("protocol", "anthropic answer has no content list")
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in content:
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            texts.append(str(block.get("text", "")))
        elif kind == "tool_use":
            args = orjson.dumps(block.get("input") or {}).decode()
            if json_tool is not None and block.get("name") == json_tool:
                texts.append(args)
            else:
                calls.append(tool_call(str(block.get("id")), str(block.get("name")), args))
    finish = STOP_REASONS.get(str(resp.get("stop_reason")), "stop")
    if json_tool is not None and finish == "tool_calls":
        finish = "stop"
    return completion(
        id=str(resp.get("id", "")),
        created=created,
        model=str(resp.get("model", "")),
        message=assistant_message("".join(texts) if texts or not calls else None, calls),
        finish_reason=finish,
        usage=_usage_of(resp.get("usage") or {}),
    )


class AnthropicStreamTranslator:
    """Consumes parsed Anthropic stream events, returns OpenAI chunk dicts per event.

    ``done`` turns true at ``message_stop``; an ``error`` event raises UpstreamError.
    Usage is the upstream's: input (with cache reads and writes) from ``message_start`` or a
    later ``message_delta``, the cumulative output count from the last ``message_delta``.
    """

    __slots__ = ("_blocks", "_finish", "_json_tool", "_maker", "_tools", "_usage", "done")

    def __init__(self, *, model: str, created: int, json_tool: str | None = None) -> None:
        self._maker = ChunkMaker("", created, model)
        self._json_tool = json_tool
        self._blocks: dict[int, int | None] = {}  # block index -> tool call index (None: text)
        self._tools = 0
        self._usage: dict[str, Any] = {}
        self._finish: str | None = None
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        m = self._maker
        if kind == "message_start":
            msg = event.get("message") or {}
            m.id = str(msg.get("id", ""))
            m.model = str(msg.get("model") or m.model)
            self._usage.update(msg.get("usage") or {})
            return [m.chunk({"role": "assistant", "content": ""})]
        if kind == "content_block_start":
            return self._block_start(int(event.get("index", 0)), event.get("content_block") or {})
        if kind == "content_block_delta":
            return self._block_delta(int(event.get("index", 0)), event.get("delta") or {})
        if kind == "message_delta":
            self._usage.update(
                {k: v for k, v in (event.get("usage") or {}).items() if v is not None}
            )
            reason = (event.get("delta") or {}).get("stop_reason")
            if reason is None:
                return []
            finish = STOP_REASONS.get(reason, "stop")
            if self._json_tool is not None and finish == "tool_calls":
                finish = "stop"
            self._finish = finish
            return [m.chunk({}, finish)]
        if kind == "message_stop":
            self.done = True
            out = [] if self._finish is not None else [m.chunk({}, "stop")]
            return [*out, m.usage_chunk(_usage_of(self._usage))]
        if kind == "error":
            err = event.get("error") or {}
            raise upstream_error(None, orjson.dumps({"error": err}))
        return []  # ping, content_block_stop, and event types added after this was written

    def _block_start(self, index: int, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = block.get("type")
        m = self._maker
        if kind == "text":
            self._blocks[index] = None
            text = block.get("text")
            return [m.chunk({"content": text})] if text else []
        if kind != "tool_use":
            return []  # thinking blocks: never requested
        if self._json_tool is not None and block.get("name") == self._json_tool:
            self._blocks[index] = None
            return []
        self._blocks[index] = call = self._tools
        self._tools += 1
        first = {"index": call, "id": str(block.get("id", "")), "type": "function"}
        first["function"] = {"name": str(block.get("name", "")), "arguments": ""}
        out = [m.chunk({"tool_calls": [first]})]
        if block.get("input"):  # servers stream input as deltas; a filled start is complete
            args = orjson.dumps(block["input"]).decode()
            out.append(m.chunk({"tool_calls": [{"index": call, "function": {"arguments": args}}]}))
        return out

    def _block_delta(self, index: int, delta: Mapping[str, Any]) -> list[dict[str, Any]]:
        kind = delta.get("type")
        m = self._maker
        if kind == "text_delta":
            return [m.chunk({"content": str(delta.get("text", ""))})]
        if kind != "input_json_delta" or index not in self._blocks:
            return []
        partial = str(delta.get("partial_json", ""))
        if not partial:
            return []
        call = self._blocks[index]
        if call is None:  # the forced JSON tool: its input is the answer
            return [m.chunk({"content": partial})]
        return [m.chunk({"tool_calls": [{"index": call, "function": {"arguments": partial}}]})]
