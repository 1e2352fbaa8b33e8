# Over 400 lines: the request checks, neutral conversation and OpenAI shapes both wires share.
"""Shared by the translating adapters (Anthropic, Bedrock): OpenAI request checks, a neutral
form of the conversation, and the OpenAI chunk and usage shapes they emit.

Pure functions only; each wire module renders the neutral form in its own dialect.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import orjson

from .base import UnsupportedFeatureError

# Accepted and ignored on purpose: transport or bookkeeping hints with no upstream effect.
# ``seed`` is best-effort in OpenAI too; ``stream_options`` is ours (usage is always kept).
IGNORED_FIELDS: frozenset[str] = frozenset(
    {
        "model",
        "stream",
        "stream_options",
        "seed",
        "store",
        "metadata",
        "service_tier",
        "safety_identifier",
        "prompt_cache_key",
    }
)

# Fields every translating adapter maps (or checks for a no-op value).
COMMON_FIELDS: frozenset[str] = frozenset(
    {
        "messages",
        "max_tokens",
        "max_completion_tokens",
        "temperature",
        "top_p",
        "stop",
        "tools",
        "tool_choice",
        "parallel_tool_calls",
        "response_format",
        "n",
        "logprobs",
        "top_logprobs",
        "frequency_penalty",
        "presence_penalty",
        "logit_bias",
        "modalities",
        "user",
    }
)

IMAGE_TYPES: frozenset[str] = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})

DONE = b"data: [DONE]\n\n"


def sse(chunk: Mapping[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(chunk) + b"\n\n"


def check_fields(body: Mapping[str, Any], wire: str, extra: frozenset[str] = frozenset()) -> None:
    """Refuse what ``wire`` cannot express instead of dropping it silently."""
    for key, value in body.items():
        if key in IGNORED_FIELDS or key in extra:
            continue
        if key not in COMMON_FIELDS:
            raise UnsupportedFeatureError(key, f"{key} is not supported by {wire}")
        no_op = {
            "n": value in (None, 1),
            "logprobs": value in (None, False),
            "top_logprobs": value in (None, 0),
            "frequency_penalty": value in (None, 0),
            "presence_penalty": value in (None, 0),
            "logit_bias": not value,
            "modalities": value is None or value == ["text"],
        }.get(key, True)
        if not no_op:
            raise UnsupportedFeatureError(key, f"{key}={value!r} is not supported by {wire}")


def max_tokens_of(body: Mapping[str, Any]) -> int | None:
    value = body.get("max_completion_tokens", body.get("max_tokens"))
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        param = "max_completion_tokens" if "max_completion_tokens" in body else "max_tokens"
        raise UnsupportedFeatureError(param, f"{param} must be a positive integer")
    return value


def stop_list(stop: Any) -> list[str] | None:
    if stop is None:
        return None
    items = [stop] if isinstance(stop, str) else stop
    if not isinstance(items, list) or not all(isinstance(s, str) for s in items):
        raise UnsupportedFeatureError("stop", "stop must be a string or a list of strings")
    return [s for s in items if s] or None


# Neutral conversation ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Image:
    """Either ``data`` (base64) with ``media_type``, or a remote ``url``."""

    media_type: str = ""
    data: str = ""
    url: str = ""
    param: str = ""


@dataclass(frozen=True, slots=True)
class ToolUse:
    id: str
    name: str
    input: dict[str, Any]


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_use_id: str
    text: str


Part = Text | Image | ToolUse | ToolResult


@dataclass(slots=True)
class Turn:
    role: Literal["user", "assistant"]
    parts: list[Part] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Conversation:
    system: list[str]
    turns: list[Turn]

    @property
    def uses_tools(self) -> bool:
        return any(isinstance(p, ToolUse | ToolResult) for t in self.turns for p in t.parts)


def _texts(content: Any, param: str) -> list[str]:
    """Text of a system, developer or tool message: a string or a list of text parts."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out = []
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise UnsupportedFeatureError(
                    f"{param}[{j}]", f"content part {kind!r} is not supported here"
                )
            out.append(str(part.get("text", "")))
        return out
    raise UnsupportedFeatureError(param, "content must be a string or a list of parts")


def _image(part: Mapping[str, Any], param: str) -> Image:
    image_url = part.get("image_url")
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    if not isinstance(url, str):
        raise UnsupportedFeatureError(param, "image_url.url must be a string")
    if url.startswith("data:"):
        head, sep, data = url[5:].partition(",")
        media_type, _, encoding = head.partition(";")
        if not sep or encoding != "base64":
            raise UnsupportedFeatureError(param, "image data URLs must be base64-encoded")
        if media_type not in IMAGE_TYPES:
            raise UnsupportedFeatureError(param, f"image type {media_type!r} is not supported")
        return Image(media_type=media_type, data=data, param=param)
    if url.startswith(("https://", "http://")):
        return Image(url=url, param=param)
    raise UnsupportedFeatureError(param, "image URLs must be http(s) or base64 data URLs")


def _user_parts(content: Any, param: str) -> list[Part]:
    if isinstance(content, str):
        return [Text(content)]
    if not isinstance(content, list):
        raise UnsupportedFeatureError(param, "content must be a string or a list of parts")
    parts: list[Part] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part, dict):
            parts.append(Text(str(part.get("text", ""))))
        elif kind == "image_url" and isinstance(part, dict):
            parts.append(_image(part, f"{param}[{j}]"))
        else:
            raise UnsupportedFeatureError(
                f"{param}[{j}]", f"content part {kind!r} is not supported"
            )
    return parts


def parse_arguments(arguments: Any, param: str) -> dict[str, Any]:
    if arguments in (None, ""):
        return {}
    try:
        value = orjson.loads(arguments) if isinstance(arguments, str | bytes) else arguments
    except orjson.JSONDecodeError:
        raise UnsupportedFeatureError(param, "tool call arguments must be a JSON object") from None
    if not isinstance(value, dict):
        raise UnsupportedFeatureError(param, "tool call arguments must be a JSON object")
    return value


def _assistant_parts(msg: Mapping[str, Any], param: str) -> list[Part]:
    parts: list[Part] = []
    content = msg.get("content")
    if isinstance(content, str):
        if content:
            parts.append(Text(content))
    elif isinstance(content, list):
        for j, part in enumerate(content):
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in ("text", "refusal") or not isinstance(part, dict):
                raise UnsupportedFeatureError(
                    f"{param}.content[{j}]", f"content part {kind!r} is not supported"
                )
            text = str(part.get("text" if kind == "text" else "refusal", ""))
            if text:
                parts.append(Text(text))
    elif content is not None:
        raise UnsupportedFeatureError(
            f"{param}.content", "content must be a string or a list of parts"
        )
    for k, call in enumerate(msg.get("tool_calls") or []):
        cparam = f"{param}.tool_calls[{k}]"
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or call.get("type", "function") != "function":
            raise UnsupportedFeatureError(cparam, "only function tool calls are supported")
        args = parse_arguments(fn.get("arguments"), f"{cparam}.function.arguments")
        parts.append(ToolUse(id=str(call.get("id", "")), name=str(fn.get("name", "")), input=args))
    if msg.get("function_call") is not None:
        raise UnsupportedFeatureError(
            f"{param}.function_call", "function_call is deprecated; use tool_calls"
        )
    return parts


def conversation(body: Mapping[str, Any]) -> Conversation:
    """OpenAI ``messages`` -> system texts plus alternating user/assistant turns.

    System and developer messages are gathered, in order, into the system prompt (neither
    target wire has a mid-conversation system role). Tool messages become tool results in a
    user turn; consecutive turns of one role merge, so tool results for one assistant turn
    travel together, ahead of any user text that follows them.
    """
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise UnsupportedFeatureError("messages", "messages must be a non-empty list")
    system: list[str] = []
    turns: list[Turn] = []

    def add(role: Literal["user", "assistant"], parts: list[Part]) -> None:
        if turns and turns[-1].role == role:
            turns[-1].parts.extend(parts)
        else:
            turns.append(Turn(role, parts))

    for i, msg in enumerate(messages):
        param = f"messages[{i}]"
        if not isinstance(msg, dict):
            raise UnsupportedFeatureError(param, "each message must be an object")
        role = msg.get("role")
        if role in ("system", "developer"):
            system.extend(t for t in _texts(msg.get("content"), f"{param}.content") if t)
        elif role == "user":
            add("user", _user_parts(msg.get("content"), f"{param}.content"))
        elif role == "assistant":
            add("assistant", _assistant_parts(msg, param))
        elif role == "tool":
            text = "\n".join(_texts(msg.get("content"), f"{param}.content"))
            add("user", [ToolResult(tool_use_id=str(msg.get("tool_call_id", "")), text=text)])
        else:
            raise UnsupportedFeatureError(f"{param}.role", f"role {role!r} is not supported")
    if not turns:
        # OpenAI answers a system prompt alone; neither target wire accepts an empty turn list.
        raise UnsupportedFeatureError(
            "messages", "system messages alone cannot be sent: add a user message"
        )
    return Conversation(system=system, turns=turns)


@dataclass(frozen=True, slots=True)
class FunctionTool:
    name: str
    description: str | None
    parameters: dict[str, Any]


def function_tools(body: Mapping[str, Any]) -> list[FunctionTool]:
    tools = body.get("tools") or []
    if not isinstance(tools, list):
        raise UnsupportedFeatureError("tools", "tools must be a list")
    out = []
    for i, tool in enumerate(tools):
        fn = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(fn, dict) or tool.get("type") != "function":
            raise UnsupportedFeatureError(f"tools[{i}]", "only function tools are supported")
        params = fn.get("parameters") or {"type": "object", "properties": {}}
        desc = fn.get("description")
        out.append(FunctionTool(str(fn.get("name", "")), str(desc) if desc else None, params))
    return out


DEFAULT_JSON_TOOL = "json_response"


def json_response_tool(body: Mapping[str, Any], wire: str) -> FunctionTool | None:
    """``response_format`` json_object / json_schema as a tool the model is forced to call;
    its input is the JSON answer. None for text (or no) response_format."""
    fmt = body.get("response_format")
    kind = fmt.get("type") if isinstance(fmt, dict) else fmt
    if kind in (None, "text"):
        return None
    if body.get("tools"):
        raise UnsupportedFeatureError(
            "response_format", f"response_format {kind} cannot be combined with tools on {wire}"
        )
    if kind == "json_object":
        return FunctionTool(DEFAULT_JSON_TOOL, "Answer with a JSON object.", {"type": "object"})
    if kind == "json_schema" and isinstance(fmt, dict):
        spec = fmt.get("json_schema") or {}
        schema = spec.get("schema") or {"type": "object"}
        if not isinstance(schema, dict) or schema.get("type") != "object":
            raise UnsupportedFeatureError(
                "response_format", f"{wire} needs a json_schema whose root is an object"
            )
        description = str(spec.get("description") or "Answer with JSON matching the schema.")
        return FunctionTool(str(spec.get("name") or DEFAULT_JSON_TOOL), description, schema)
    raise UnsupportedFeatureError("response_format", f"response_format {kind!r} is not supported")


def json_tool_name(body: Mapping[str, Any]) -> str | None:
    """The forced tool that carries a ``response_format`` JSON answer, if one was asked for."""
    tool = json_response_tool(body, "this upstream")
    return tool.name if tool is not None else None


ToolChoice = Literal["auto", "none", "required"] | str


def tool_choice_of(body: Mapping[str, Any]) -> ToolChoice | None:
    """ "auto" / "none" / "required", or the name of the one function to call; None = unset."""
    choice = body.get("tool_choice")
    if choice is None or choice in ("auto", "none", "required"):
        return choice
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return name
    raise UnsupportedFeatureError("tool_choice", f"tool_choice {choice!r} is not supported")


# OpenAI answer shapes ------------------------------------------------------------------


def usage(
    prompt_tokens: int, completion_tokens: int, *, cached: int = 0, cache_write: int = 0
) -> dict[str, Any]:
    """``prompt_tokens`` includes cache reads and writes, as OpenAI counts cached tokens."""
    out: dict[str, Any] = {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }
    if cached or cache_write:
        out["prompt_tokens_details"] = {"cached_tokens": cached, "cache_write_tokens": cache_write}
    return out


class ChunkMaker:
    """Stamps OpenAI ``chat.completion.chunk`` objects with one id, created and model."""

    __slots__ = ("created", "id", "model")

    def __init__(self, id: str, created: int, model: str) -> None:
        self.id = id
        self.created = created
        self.model = model

    def chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [choice],
        }

    def usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": self.model,
            "choices": [],
            "usage": usage,
        }


def assistant_message(
    text: str | None, tool_calls: list[dict[str, Any]], reasoning: str | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": text, "refusal": None}
    if tool_calls:
        message["tool_calls"] = tool_calls
    if reasoning:
        message["reasoning_content"] = reasoning
    return message


def completion(
    *,
    id: str,
    created: int,
    model: str,
    message: dict[str, Any],
    finish_reason: str,
    usage: dict[str, Any],
) -> dict[str, Any]:
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {
        "id": id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": usage,
    }


def tool_call(id: str, name: str, arguments: str) -> dict[str, Any]:
    return {"id": id, "type": "function", "function": {"name": name, "arguments": arguments}}
