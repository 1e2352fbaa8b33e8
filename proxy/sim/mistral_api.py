"""Mistral's FIM wire for the simulator: ``POST /v1/fim/completions`` (Codestral).

As strict as the real endpoint where it matters to an adapter: an unknown field is a 422
(Mistral forbids extra fields), ``prompt`` must be one string, and answers are chat-completion
shaped, the last stream chunk carrying ``finish_reason`` and ``usage``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .openai_api import _sse, _usage, openai_error
from .script import Answer, openai_conversation, script_answer
from .server import SIM_STATE, Rendered, apply_pre_byte_fault, reply_after, stream_rendered

FIM_FIELDS = frozenset(
    {
        "model",
        "prompt",
        "suffix",
        "temperature",
        "top_p",
        "max_tokens",
        "min_tokens",
        "stream",
        "stop",
        "random_seed",
    }
)


def render_fim_stream(model: str, answer: Answer) -> Rendered:
    created = int(time.time())
    base = {"id": f"fim-sim{created}", "object": "chat.completion.chunk", "created": created}
    base["model"] = model

    def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **extra})

    return Rendered(
        content_type="text/event-stream",
        head=[chunk({"role": "assistant", "content": ""})],
        body=[chunk({"content": piece}) for piece in answer.pieces],
        tail=[
            chunk({"content": ""}, answer.finish_reason, usage=_usage(answer)),
            b"data: [DONE]\n\n",
        ],
        error_event=_sse({"object": "error", "message": "simulated mid-stream failure"}),
    )


def fim_response(model: str, answer: Answer) -> dict[str, Any]:
    created = int(time.time())
    message = {"role": "assistant", "content": answer.text, "tool_calls": None}
    return {
        "id": f"fim-sim{created}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason}],
        "usage": _usage(answer),
    }


async def fim_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return openai_error(400, "simulator: body is not JSON")
    if not isinstance(body, dict):
        return openai_error(422, "simulator: body is not an object")
    model = str(body.get("model", ""))
    state.record(model, body, request.headers)
    if not request.headers.get("Authorization", "").startswith("Bearer "):
        return openai_error(401, "simulator: missing bearer token")
    extra = sorted(set(body) - FIM_FIELDS)
    if extra:
        return openai_error(422, f"simulator: extra inputs are not permitted: {extra}")
    if not isinstance(body.get("prompt"), str):
        return openai_error(422, "simulator: prompt must be a string")
    fault = state.take_fault(model)
    if (early := await apply_pre_byte_fault(request, fault, openai_error)) is not None:
        return early
    profile = state.profile(model)
    answer = script_answer(openai_conversation(body), profile)
    if body.get("stream"):
        return await stream_rendered(
            request, state, fault, profile, render_fim_stream(model, answer)
        )
    await reply_after(request, state, fault, profile, answer)
    state.completed += 1
    return web.json_response(fim_response(model, answer), dumps=lambda o: orjson.dumps(o).decode())


def add_mistral_routes(app: web.Application) -> None:
    if any(r.canonical == "/v1/fim/completions" for r in app.router.resources()):
        return
    app.router.add_post("/v1/fim/completions", fim_completions)
