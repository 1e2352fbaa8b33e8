"""The simulated Bedrock runtime: Converse (JSON) and ConverseStream (binary event stream).

Speaks enough of the real service for aioboto3's client to parse it: rest-json errors with
``x-amzn-ErrorType``, and ``application/vnd.amazon.eventstream`` bodies from our encoder.
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

from .eventstream import encode_bedrock_event, encode_bedrock_exception, encode_event
from .script import Answer, Conversation, script_answer
from .server import SIM_STATE, Rendered, apply_pre_byte_fault, reply_after, stream_rendered

EVENT_STREAM = "application/vnd.amazon.eventstream"
STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}

ERROR_CODES = {
    400: "ValidationException",
    403: "AccessDeniedException",
    404: "ResourceNotFoundException",
    408: "ModelTimeoutException",
    424: "ModelErrorException",
    429: "ThrottlingException",
    500: "InternalServerException",
    503: "ServiceUnavailableException",
}

# A prelude whose CRC is wrong: botocore's decoder refuses it (ChecksumMismatch).
BROKEN_FRAME = struct.pack(">III", 16, 0, 0) + b"\x00\x00\x00\x00"


def bedrock_error(status: int, message: str, code: str | None = None) -> web.Response:
    code = (
        code
        or ERROR_CODES.get(status)
        or ("InternalServerException" if status >= 500 else "ValidationException")
    )
    headers = {
        "x-amzn-ErrorType": f"{code}:http://internal.amazon.com/coral/com.amazon.bedrock/",
        "x-amzn-RequestId": str(uuid.uuid4()),
    }
    body = orjson.dumps({"message": message})
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


def _texts(blocks: Any) -> list[str]:
    out: list[str] = []
    for block in blocks if isinstance(blocks, list) else []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            out.append(block["text"])
        elif isinstance(block.get("toolResult"), dict):
            out.extend(_texts(block["toolResult"].get("content")))
    return out


def bedrock_conversation(body: Mapping[str, Any]) -> Conversation:
    """The format-neutral view, counting the same texts the OpenAI wire counts."""
    texts = _texts(body.get("system"))
    last_role = "user"
    for msg in body.get("messages", []):
        content = msg.get("content")
        texts.extend(_texts(content))
        results = isinstance(content, list) and any(
            isinstance(b, dict) and "toolResult" in b for b in content
        )
        last_role = "tool" if results else str(msg.get("role"))
    tools = tuple(
        (str(t["toolSpec"].get("name")), (t["toolSpec"].get("inputSchema") or {}).get("json", {}))
        for t in (body.get("toolConfig") or {}).get("tools", [])
        if isinstance(t, dict) and isinstance(t.get("toolSpec"), dict)
    )
    max_tokens = (body.get("inferenceConfig") or {}).get("maxTokens")
    return Conversation(
        texts=tuple(texts),
        last_role=last_role,
        tools=tools,
        max_tokens=max_tokens if isinstance(max_tokens, int) else None,
        seed_text=texts[-1] if texts else "",
    )


def check_request(body: Mapping[str, Any]) -> str | None:
    """What the real service would refuse with ValidationException; None when acceptable."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return "A conversation must start with a user message."
    uses_tools = False
    expected = "user"
    for msg in messages:
        if not isinstance(msg, dict) or msg.get("role") != expected:
            return "A conversation must alternate between user and assistant roles."
        expected = "assistant" if expected == "user" else "user"
        for block in msg.get("content") or []:
            if not isinstance(block, dict) or len(block) != 1:
                return "Each content block must set exactly one member."
            uses_tools = uses_tools or "toolUse" in block or "toolResult" in block
    if uses_tools and not body.get("toolConfig"):
        return "The toolConfig field must be defined when using toolUse and toolResult blocks."
    return None


def _thirds(text: str) -> list[str]:
    n = len(text)
    return [text[: n // 3], text[n // 3 : 2 * n // 3], text[2 * n // 3 :]]


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "inputTokens": answer.prompt_tokens,
        "outputTokens": answer.completion_tokens,
        "totalTokens": answer.prompt_tokens + answer.completion_tokens,
    }


def render_converse_stream(answer: Answer, latency_ms: int = 0) -> Rendered:
    head = [encode_bedrock_event("messageStart", {"p": "abcdefgh", "role": "assistant"})]
    tc = answer.tool_call
    if tc is not None:
        start = {"toolUse": {"toolUseId": tc.id, "name": tc.name}}
        body = [encode_bedrock_event("contentBlockStart", {"contentBlockIndex": 0, "start": start})]
        body += [
            encode_bedrock_event(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"toolUse": {"input": part}}}
            )
            for part in _thirds(tc.arguments)
        ]
    else:
        body = [
            encode_bedrock_event(
                "contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": p}}
            )
            for p in answer.pieces
        ]
    tail = [
        encode_bedrock_event("contentBlockStop", {"contentBlockIndex": 0}),
        encode_bedrock_event("messageStop", {"stopReason": STOP_REASONS[answer.finish_reason]}),
        encode_bedrock_event(
            "metadata", {"usage": _usage(answer), "metrics": {"latencyMs": latency_ms}}
        ),
    ]
    bad_json_headers = {
        ":event-type": "contentBlockDelta",
        ":content-type": "application/json",
        ":message-type": "event",
    }
    return Rendered(
        content_type=EVENT_STREAM,
        head=head,
        body=body,
        tail=tail,
        error_event=encode_bedrock_exception(
            "modelStreamErrorException", "simulated mid-stream failure"
        ),
        malformed=BROKEN_FRAME,
        bad_json=encode_event(bad_json_headers, b'{"contentBlockIndex": 0, "delta": {'),
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


def converse_response(answer: Answer, latency_ms: int = 0) -> dict[str, Any]:
    content: list[dict[str, Any]] = []
    if answer.text:
        content.append({"text": answer.text})
    if answer.tool_call is not None:
        tc = answer.tool_call
        use = {"toolUseId": tc.id, "name": tc.name, "input": orjson.loads(tc.arguments)}
        content.append({"toolUse": use})
    return {
        "output": {"message": {"role": "assistant", "content": content}},
        "stopReason": STOP_REASONS[answer.finish_reason],
        "usage": _usage(answer),
        "metrics": {"latencyMs": latency_ms},
    }


async def _converse(request: web.Request, stream: bool) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    model = request.match_info["model_id"]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return bedrock_error(400, "simulator: body is not JSON", "SerializationException")
    if not isinstance(body, dict):
        return bedrock_error(400, "simulator: body is not an object", "SerializationException")
    state.record(model, body, request.headers)
    if not request.headers.get("Authorization", "").startswith("AWS4-HMAC-SHA256 "):
        return bedrock_error(
            403, "simulator: request is not SigV4-signed", "UnrecognizedClientException"
        )
    if (problem := check_request(body)) is not None:
        return bedrock_error(400, problem)
    fault = state.take_fault(model)
    if (early := await apply_pre_byte_fault(request, fault, bedrock_error)) is not None:
        return early
    profile = state.profile(model)
    answer = script_answer(bedrock_conversation(body), profile)
    latency_ms = int(profile.ttft_ms + profile.gap_ms * max(len(answer.pieces) - 1, 0))
    if stream:
        rendered = render_converse_stream(answer, latency_ms)
        return await stream_rendered(request, state, fault, profile, rendered, model)
    await reply_after(request, state, fault, profile, answer)
    if fault.mode in {"malformed", "bad_json"}:
        return web.Response(body=b'{"output": ', content_type="application/json")
    state.completed += 1
    return web.Response(
        body=orjson.dumps(converse_response(answer, latency_ms)),
        content_type="application/json",
        headers={"x-amzn-RequestId": str(uuid.uuid4())},
    )


async def converse(request: web.Request) -> web.StreamResponse:
    return await _converse(request, stream=False)


async def converse_stream(request: web.Request) -> web.StreamResponse:
    return await _converse(request, stream=True)


def add_bedrock_routes(app: web.Application) -> None:
    """Register the Bedrock wire on a simulator app (one that holds ``SIM_STATE``).

    Model and inference-profile ids hold ':' and '/', hence the greedy patterns. Idempotent,
    so tests may call it whether or not ``make_sim_app`` already did.
    """
    if any(r.canonical == "/model/{model_id}/converse" for r in app.router.resources()):
        return
    app.router.add_post("/model/{model_id:.+}/converse", converse)
    app.router.add_post("/model/{model_id:.+}/converse-stream", converse_stream)
