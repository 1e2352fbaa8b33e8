"""The simulated Anthropic Messages upstream: POST /v1/messages, streaming (SSE) and not.

Renders the same scripted ``Answer`` as the OpenAI wire, with the same pacing and faults,
and checks the request the way the real API would reject a malformed translation.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .script import Answer, Conversation, script_answer
from .server import SIM_STATE, Rendered, apply_pre_byte_fault, reply_after, stream_rendered

STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    529: "overloaded_error",
}


def anthropic_error(status: int, message: str) -> web.Response:
    kind = ERROR_TYPES.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


def _texts(content: Any) -> list[str]:
    if isinstance(content, str):
        return [content]
    out: list[str] = []
    for block in content if isinstance(content, list) else []:
        if not isinstance(block, dict):
            continue
        if block.get("type") == "text":
            out.append(str(block.get("text", "")))
        elif block.get("type") == "tool_result":
            out.extend(_texts(block.get("content", "")))
    return out


def anthropic_conversation(body: Mapping[str, Any]) -> Conversation:
    """The format-neutral view, counting the same texts the OpenAI wire counts."""
    texts = _texts(body.get("system", ""))
    last_role = "user"
    for msg in body.get("messages", []):
        content = msg.get("content")
        texts.extend(_texts(content))
        results = isinstance(content, list) and any(
            isinstance(b, dict) and b.get("type") == "tool_result" for b in content
        )
        last_role = "tool" if results else str(msg.get("role"))
    tools = tuple(
        (str(t.get("name")), t.get("input_schema") or {})
        for t in body.get("tools") or []
        if isinstance(t, dict)
    )
    max_tokens = body.get("max_tokens")
    return Conversation(
        texts=tuple(texts),
        last_role=last_role,
        tools=tools,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        seed_text=texts[-1] if texts else "",
    )


def check_request(body: Mapping[str, Any]) -> str | None:
    """What the real API would refuse with invalid_request_error; None when acceptable."""
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    tool_ids: set[str] = set()
    for i, msg in enumerate(messages):
        role = msg.get("role") if isinstance(msg, dict) else None
        if role not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = msg.get("content")
        blocks = content if isinstance(content, list) else []
        for block in blocks:
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "tool_result" and block.get("tool_use_id") not in tool_ids:
                return f"messages.{i}: tool_result block(s) without a matching tool_use block"
        tool_ids = {
            str(b.get("id")) for b in blocks if isinstance(b, dict) and b.get("type") == "tool_use"
        }
    return None


def _event(kind: str, data: Mapping[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps({"type": kind, **data}) + b"\n\n"


def _thirds(text: str) -> list[str]:
    n = len(text)
    return [text[: n // 3], text[n // 3 : 2 * n // 3], text[2 * n // 3 :]]


def render_anthropic(model: str, answer: Answer) -> Rendered:
    created = int(time.time())
    message: dict[str, Any] = {
        "id": f"msg_sim{created}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": 1},
    }
    head = [_event("message_start", {"message": message})]
    tc = answer.tool_call
    if tc is not None:
        block = {"type": "tool_use", "id": tc.id, "name": tc.name, "input": {}}
        body = [_event("content_block_start", {"index": 0, "content_block": block})]
        body += [
            _event(
                "content_block_delta",
                {"index": 0, "delta": {"type": "input_json_delta", "partial_json": part}},
            )
            for part in _thirds(tc.arguments)
        ]
        head.append(_event("ping", {}))
    else:
        block = {"type": "text", "text": ""}
        head.append(_event("content_block_start", {"index": 0, "content_block": block}))
        head.append(_event("ping", {}))
        body = [
            _event("content_block_delta", {"index": 0, "delta": {"type": "text_delta", "text": p}})
            for p in answer.pieces
        ]
    delta = {"stop_reason": STOP_REASONS[answer.finish_reason], "stop_sequence": None}
    tail = [
        _event("content_block_stop", {"index": 0}),
        _event(
            "message_delta", {"delta": delta, "usage": {"output_tokens": answer.completion_tokens}}
        ),
        _event("message_stop", {}),
    ]
    error = {"type": "api_error", "message": "simulated mid-stream failure"}
    return Rendered(
        content_type="text/event-stream",
        head=head,
        body=body,
        tail=tail,
        error_event=_event("error", {"error": error}),
        bad_json=b'event: content_block_delta\ndata: {"type": "content_block_delta", "index":\n\n',
        headers={"request-id": f"req_sim{created}"},
    )


def anthropic_response(model: str, answer: Answer) -> dict[str, Any]:
    created = int(time.time())
    content: list[dict[str, Any]] = []
    if answer.text:
        content.append({"type": "text", "text": answer.text})
    if answer.tool_call is not None:
        tc = answer.tool_call
        content.append(
            {"type": "tool_use", "id": tc.id, "name": tc.name, "input": orjson.loads(tc.arguments)}
        )
    return {
        "id": f"msg_sim{created}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": STOP_REASONS[answer.finish_reason],
        "stop_sequence": None,
        "usage": {"input_tokens": answer.prompt_tokens, "output_tokens": answer.completion_tokens},
    }


async def messages(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return anthropic_error(400, "simulator: body is not JSON")
    if not isinstance(body, dict):
        return anthropic_error(400, "simulator: body is not an object")
    model = str(body.get("model", ""))
    state.record(model, body, request.headers)
    if not request.headers.get("x-api-key"):
        return anthropic_error(401, "x-api-key header is required")
    if not request.headers.get("anthropic-version"):
        return anthropic_error(400, "anthropic-version: header is required")
    if (problem := check_request(body)) is not None:
        return anthropic_error(400, problem)
    fault = state.take_fault(model)
    if (early := await apply_pre_byte_fault(request, fault, anthropic_error)) is not None:
        return early
    profile = state.profile(model)
    answer = script_answer(anthropic_conversation(body), profile)
    if body.get("stream"):
        rendered = render_anthropic(model, answer)
        return await stream_rendered(request, state, fault, profile, rendered, model)
    await reply_after(request, state, fault, profile, answer)
    if fault.mode in {"malformed", "bad_json"}:
        return web.Response(body=b'{"id": "broken", ', content_type="application/json")
    state.completed += 1
    return web.Response(
        body=orjson.dumps(anthropic_response(model, answer)), content_type="application/json"
    )


def add_anthropic_routes(app: web.Application) -> None:
    """Register the Anthropic wire on a simulator app (one that holds ``SIM_STATE``).

    Idempotent, so tests may call it whether or not ``make_sim_app`` already did.
    """
    if any(r.canonical == "/v1/messages" for r in app.router.resources()):
        return
    app.router.add_post("/v1/messages", messages)
