"""Bedrock Converse / ConverseStream <-> OpenAI Chat Completions, in boto3's parsed shapes.

Pure translation, no I/O: requests become keyword arguments for ``converse`` /
``converse_stream``; parsed answers and stream events become OpenAI objects; botocore error
codes become failure classes. ``response_format`` JSON is a forced tool, as for Anthropic;
Bedrock accepts a forced tool (``toolChoice.tool``) only for some models (Claude, Mistral
Large, Nova), so the catalog should claim "json" only for those.
"""

from __future__ import annotations

import base64
import binascii
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

WIRE = "Bedrock Converse"

STOP_REASONS: Mapping[str, str] = {
    "end_turn": "stop",
    "stop_sequence": "stop",
    "max_tokens": "length",
    "model_context_window_exceeded": "length",
    "tool_use": "tool_calls",
    "guardrail_intervened": "content_filter",
    "content_filtered": "content_filter",
}

# botocore error codes (HTTP errors, and in-stream exceptions, whose code is the stream
# member's name: "throttlingException") -> failure class. Keys are capitalised.
ERROR_CODES: Mapping[str, FailureKind] = {
    "ThrottlingException": "rate_limited",
    "ServiceQuotaExceededException": "rate_limited",
    "ModelNotReadyException": "overloaded",
    "ServiceUnavailableException": "overloaded",
    "InternalServerException": "server",
    "ModelErrorException": "server",
    "ModelStreamErrorException": "server",
    "ModelTimeoutException": "timeout",
    "ValidationException": "client",
    # The router chose the model id: not found is the deployment's fault.
    "ResourceNotFoundException": "server",
    "ConflictException": "client",
    "AccessDeniedException": "auth",
    "UnrecognizedClientException": "auth",
    "InvalidSignatureException": "auth",
    "ExpiredTokenException": "auth",
    "IncompleteSignatureException": "auth",
    "MissingAuthenticationTokenException": "auth",
}

_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/gif": "gif", "image/webp": "webp"}


def status_kind(status: int | None) -> FailureKind:
    if status == 429:
        return "rate_limited"
    if status == 503:
        return "overloaded"
    if status in (408, 504):
        return "timeout"
    if status in (401, 403):
        return "auth"
    if status is not None and 400 <= status < 500 and status != 404:
        return "client"
    return "server"


def error_kind(code: str, status: int | None = None) -> FailureKind:
    key = code[:1].upper() + code[1:]
    return ERROR_CODES.get(key) or status_kind(status)


def upstream_error(error: Mapping[str, Any], *, mid_stream: bool = False) -> UpstreamError:
    """From a botocore ``ClientError.response`` (or ``EventStreamError.response``)."""
    err = error.get("Error") or {}
    code = str(err.get("Code") or "")
    status = (error.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    status = None if mid_stream or not isinstance(status, int) else status
    retry_after = None
    headers = (error.get("ResponseMetadata") or {}).get("HTTPHeaders") or {}
    if isinstance(headers.get("retry-after"), str):
        try:
            retry_after = max(float(headers["retry-after"]), 0.0)
        except ValueError:
            retry_after = None
    message = str(err.get("Message") or "")[:500]
    where = "mid-stream" if mid_stream else f"HTTP {status}"
    return UpstreamError(
        error_kind(code, status),
        f"bedrock {where}: {code or 'error'}: {message}".rstrip(": "),
        status=status,
        retry_after=retry_after,
        code=code or None,
    )


def _block(part: Part) -> dict[str, Any]:
    if isinstance(part, Text):
        return {"text": part.text}
    if isinstance(part, Image):
        if part.url:
            raise UnsupportedFeatureError(
                part.param, f"{WIRE} takes images as base64 data URLs, not remote URLs"
            )
        try:
            raw = base64.b64decode(part.data, validate=True)
        except binascii.Error:
            raise UnsupportedFeatureError(part.param, "image data is not valid base64") from None
        return {"image": {"format": _FORMATS[part.media_type], "source": {"bytes": raw}}}
    if isinstance(part, ToolUse):
        return {"toolUse": {"toolUseId": part.id, "name": part.name, "input": part.input}}
    return {"toolResult": {"toolUseId": part.tool_use_id, "content": [{"text": part.text}]}}


def to_converse_request(upstream_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
    """OpenAI chat body -> ``converse(**kwargs)``. Raises UnsupportedFeatureError naming a field."""
    check_fields(body, WIRE)
    if body.get("parallel_tool_calls") is False:
        raise UnsupportedFeatureError("parallel_tool_calls", f"{WIRE} cannot forbid parallel calls")
    conv = conversation(body)
    if conv.turns[0].role != "user":
        raise UnsupportedFeatureError(
            "messages", f"{WIRE} needs the conversation to start with a user message"
        )
    out: dict[str, Any] = {
        "modelId": upstream_id,
        "messages": [{"role": t.role, "content": [_block(p) for p in t.parts]} for t in conv.turns],
    }
    if conv.system:
        out["system"] = [{"text": s} for s in conv.system]
    inference: dict[str, Any] = {}
    if (max_tokens := max_tokens_of(body)) is not None:
        inference["maxTokens"] = max_tokens
    for ours, theirs in (("temperature", "temperature"), ("top_p", "topP")):
        if body.get(ours) is not None:
            inference[theirs] = body[ours]
    if (stops := stop_list(body.get("stop"))) is not None:
        inference["stopSequences"] = stops
    if inference:
        out["inferenceConfig"] = inference
    tools = function_tools(body)
    choice = tool_choice_of(body)
    if (forced := json_response_tool(body, WIRE)) is not None:
        tools, choice = [forced], forced.name
    if tools and choice == "none":
        if conv.uses_tools:  # Converse wants toolConfig whenever the history holds tool blocks
            raise UnsupportedFeatureError("tool_choice", f"{WIRE} has no tool_choice 'none'")
        tools = []
    if tools:
        specs = []
        for t in tools:
            spec: dict[str, Any] = {"name": t.name, "inputSchema": {"json": t.parameters}}
            if t.description:
                spec["description"] = t.description
            specs.append({"toolSpec": spec})
        config: dict[str, Any] = {"tools": specs}
        if choice == "required":
            config["toolChoice"] = {"any": {}}
        elif choice not in (None, "auto"):
            config["toolChoice"] = {"tool": {"name": choice}}
        out["toolConfig"] = config
    elif choice not in (None, "none", "auto"):
        raise UnsupportedFeatureError("tool_choice", "tool_choice needs tools")
    return out


def _usage_of(u: Mapping[str, Any]) -> dict[str, Any]:
    cached = int(u.get("cacheReadInputTokens") or 0)
    written = int(u.get("cacheWriteInputTokens") or 0)
    prompt = int(u.get("inputTokens") or 0) + cached + written
    return usage(prompt, int(u.get("outputTokens") or 0), cached=cached, cache_write=written)


def from_converse_response(
    resp: Mapping[str, Any], *, id: str, created: int, model: str, json_tool: str | None = None
) -> dict[str, Any]:
    """A parsed ``converse`` answer -> ``chat.completion``."""
    message = (resp.get("output") or {}).get("message")
    if not isinstance(message, dict) or not isinstance(message.get("content"), list):
        raise UpstreamError("protocol", "bedrock answer has no output message")
    texts: list[str] = []
    reasoning: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in message["content"]:
        if not isinstance(block, dict):
            continue
        if "text" in block:
            texts.append(str(block["text"]))
        elif "toolUse" in block:
            use = block["toolUse"]
            args = orjson.dumps(use.get("input") or {}).decode()
            if json_tool is not None and use.get("name") == json_tool:
                texts.append(args)
            else:
                calls.append(tool_call(str(use.get("toolUseId")), str(use.get("name")), args))
        elif "reasoningContent" in block:
            reasoning.append(
                str((block["reasoningContent"].get("reasoningText") or {}).get("text", ""))
            )
    finish = STOP_REASONS.get(str(resp.get("stopReason")), "stop")
    if json_tool is not None and finish == "tool_calls":
        finish = "stop"
    return completion(
        id=id,
        created=created,
        model=model,
        message=assistant_message(
            "".join(texts) if texts or not calls else None, calls, "".join(reasoning) or None
        ),
        finish_reason=finish,
        usage=_usage_of(resp.get("usage") or {}),
    )


class ConverseStreamTranslator:
    """Consumes parsed ConverseStream events (``{"contentBlockDelta": {...}}``), returns OpenAI
    chunk dicts per event.

    ``done`` turns true at ``messageStop``; the usage chunk follows at ``metadata``, which
    Bedrock sends after it. Reasoning text (DeepSeek-R1 and friends) is passed on as
    ``delta.reasoning_content``, the field vLLM and DeepSeek's own API use.
    """

    __slots__ = ("_calls", "_json_tool", "_maker", "_tools", "done")

    def __init__(self, *, id: str, model: str, created: int, json_tool: str | None = None) -> None:
        self._maker = ChunkMaker(id, created, model)
        self._json_tool = json_tool
        # contentBlockIndex -> tool call index; None for the forced JSON tool (its input is text)
        self._tools: dict[int, int | None] = {}
        self._calls = 0
        self.done = False

    def feed(self, event: Mapping[str, Any]) -> list[dict[str, Any]]:
        m = self._maker
        if "messageStart" in event:
            return [m.chunk({"role": "assistant", "content": ""})]
        if (start := event.get("contentBlockStart")) is not None:
            use = (start.get("start") or {}).get("toolUse")
            if use is None:
                return []
            block_index = int(start.get("contentBlockIndex", 0))
            if self._json_tool is not None and use.get("name") == self._json_tool:
                self._tools[block_index] = None
                return []
            index = self._tools[block_index] = self._calls
            self._calls += 1
            first = {"index": index, "id": str(use.get("toolUseId", "")), "type": "function"}
            first["function"] = {"name": str(use.get("name", "")), "arguments": ""}
            return [m.chunk({"tool_calls": [first]})]
        if (block := event.get("contentBlockDelta")) is not None:
            return self._delta(block)
        if (stop := event.get("messageStop")) is not None:
            self.done = True
            finish = STOP_REASONS.get(str(stop.get("stopReason")), "stop")
            if self._json_tool is not None and finish == "tool_calls":
                finish = "stop"
            return [m.chunk({}, finish)]
        if (meta := event.get("metadata")) is not None:
            return [m.usage_chunk(_usage_of(meta.get("usage") or {}))]
        return []  # contentBlockStop, and event types added after this was written

    def _delta(self, block: Mapping[str, Any]) -> list[dict[str, Any]]:
        delta = block.get("delta")
        if not isinstance(delta, dict):
            raise UpstreamError("protocol", "bedrock stream: contentBlockDelta without delta")
        m = self._maker
        if "text" in delta:
            return [m.chunk({"content": str(delta["text"])})]
        if "toolUse" in delta:
            index = int(block.get("contentBlockIndex", 0))
            if index not in self._tools:
                raise UpstreamError("protocol", "bedrock stream: toolUse delta before its start")
            partial = str((delta["toolUse"] or {}).get("input", ""))
            call = self._tools[index]
            if not partial:
                return []
            if call is None:
                return [m.chunk({"content": partial})]
            return [m.chunk({"tool_calls": [{"index": call, "function": {"arguments": partial}}]})]
        if "reasoningContent" in delta:
            text = (delta["reasoningContent"] or {}).get("text")
            return [m.chunk({"reasoning_content": str(text)})] if text else []
        return []
