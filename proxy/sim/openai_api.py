"""The simulated OpenAI upstream: POST /v1/chat/completions and /v1/completions, streaming
(SSE) and not, with the shared pacing and faults of ``server``.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from .script import Answer, openai_conversation, script_answer
from .server import SIM_STATE, Rendered, apply_pre_byte_fault, reply_after, stream_rendered


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_error(status: int, message: str) -> web.Response:
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


def _usage(answer: Answer, n: int = 1) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens * n,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens * n,
    }


def _token_logprobs(pieces: tuple[str, ...] | list[str], top: int) -> dict[str, Any]:
    """``logprobs`` for a choice: each piece a token, with ``top`` made-up alternatives."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode())}

    def alternatives(piece: str) -> list[dict[str, Any]]:
        others = [entry(f"{piece.strip()}~{i}", -1.5 - i) for i in range(1, top)]
        return [entry(piece, -0.25), *others] if top else []

    content = [{**entry(p, -0.25), "top_logprobs": alternatives(p)} for p in pieces]
    return {"content": content, "refusal": None}


def sampling(body: dict[str, Any]) -> tuple[int, int | None]:
    """``n`` (how many choices) and ``top_logprobs`` (None: no logprobs asked for)."""
    n = body.get("n")
    n = n if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= 128 else 1
    top = body.get("top_logprobs")
    top = top if isinstance(top, int) and not isinstance(top, bool) and top >= 0 else 0
    return n, (top if body.get("logprobs") is True else None)


def render_openai_chat(
    model: str, answer: Answer, include_usage: bool, n: int = 1, top_logprobs: int | None = None
) -> Rendered:
    """The stream; with ``n`` choices each event goes out once per choice, back to back."""
    created = int(time.time())
    base = {"id": f"chatcmpl-sim{created}", "object": "chat.completion.chunk", "created": created}
    base["model"] = model
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        piece = delta.get("content")
        lp = None
        if top_logprobs is not None and piece:
            lp = _token_logprobs([piece], top_logprobs)
        return b"".join(
            _sse({**base, "choices": [choice], **extra})
            for choice in (
                {"index": i, "delta": delta, "logprobs": lp, "finish_reason": finish}
                for i in range(n)
            )
        )

    body: list[bytes]
    if answer.tool_call is not None:
        tc = answer.tool_call
        args = tc.arguments
        thirds = [args[: len(args) // 3], args[len(args) // 3 : 2 * len(args) // 3]]
        thirds.append(args[2 * len(args) // 3 :])
        first = {"index": 0, "id": tc.id, "type": "function"}
        first["function"] = {"name": tc.name, "arguments": ""}
        body = [chunk({"tool_calls": [first]})]
        body += [
            chunk({"tool_calls": [{"index": 0, "function": {"arguments": a}}]}) for a in thirds
        ]
    else:
        body = [chunk({"content": piece}) for piece in answer.pieces]
    tail = [chunk({}, answer.finish_reason)]
    if include_usage:
        tail.append(_sse({**base, "choices": [], "usage": _usage(answer, n)}))
    tail.append(b"data: [DONE]\n\n")
    return Rendered(
        content_type="text/event-stream",
        head=[chunk({"role": "assistant", "content": ""})],
        body=body,
        tail=tail,
        error_event=_sse(
            {
                "error": {
                    "message": "simulated mid-stream failure",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        ),
    )


def openai_chat_response(
    model: str, answer: Answer, n: int = 1, top_logprobs: int | None = None
) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    message["refusal"] = None
    if answer.tool_call is not None:
        tc = answer.tool_call
        fn = {"name": tc.name, "arguments": tc.arguments}
        message["tool_calls"] = [{"id": tc.id, "type": "function", "function": fn}]
    created = int(time.time())
    lp = _token_logprobs(answer.pieces, top_logprobs) if top_logprobs is not None else None
    choices = [
        {"index": i, "message": message, "logprobs": lp, "finish_reason": answer.finish_reason}
        for i in range(n)
    ]
    return {
        "id": f"chatcmpl-sim{created}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": choices,
        "usage": _usage(answer, n),
    }


def render_openai_completion(model: str, answer: Answer, include_usage: bool) -> Rendered:
    created = int(time.time())
    base = {"id": f"cmpl-sim{created}", "object": "text_completion", "created": created}
    base["model"] = model

    def chunk(text: str, finish: str | None = None) -> bytes:
        choice = {"text": text, "index": 0, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice]})

    tail = [chunk("", answer.finish_reason)]
    if include_usage:
        tail.append(_sse({**base, "choices": [], "usage": _usage(answer)}))
    tail.append(b"data: [DONE]\n\n")
    return Rendered(
        content_type="text/event-stream",
        head=[],
        body=[chunk(p) for p in answer.pieces],
        tail=tail,
        error_event=_sse(
            {
                "error": {
                    "message": "simulated mid-stream failure",
                    "type": "server_error",
                    "param": None,
                    "code": None,
                }
            }
        ),
    )


def openai_completion_response(model: str, answer: Answer) -> dict[str, Any]:
    created = int(time.time())
    choice = {
        "text": answer.text,
        "index": 0,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    return {
        "id": f"cmpl-sim{created}",
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(answer),
    }


async def _openai(request: web.Request, legacy: bool) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    try:
        body = orjson.loads(await request.read())
    except orjson.JSONDecodeError:
        return openai_error(400, "simulator: body is not JSON")
    model = str(body.get("model", ""))
    state.record(model, body, request.headers)
    state.fields_seen.update(body)
    # No Authorization at all is how a local server (Ollama, vLLM, llama.cpp) is called;
    # a keyless simulator takes any.
    auth = request.headers.get("Authorization", "Bearer ")
    if not state.keyless and not auth.startswith("Bearer "):
        return openai_error(401, "simulator: not a bearer token")
    if legacy and body.get("suffix") is not None and model in state.no_suffix:
        return openai_error(400, "simulator: suffix is not currently supported")
    fault = state.take_fault(model)
    if (early := await apply_pre_byte_fault(request, fault, openai_error)) is not None:
        return early
    profile = state.profile(model)
    try:
        answer = script_answer(openai_conversation(body), profile)
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
    except (TypeError, ValueError, KeyError, AttributeError):
        # A real provider answers a malformed body with a 400, not a crash.
        return openai_error(400, "simulator: malformed request body")
    n, top_logprobs = sampling(body)
    if body.get("stream"):
        rendered = (
            render_openai_completion(model, answer, include_usage)
            if legacy
            else render_openai_chat(model, answer, include_usage, n, top_logprobs)
        )
        return await stream_rendered(request, state, fault, profile, rendered, model)
    await reply_after(request, state, fault, profile, answer)
    if fault.mode in {"malformed", "bad_json"}:
        return web.Response(body=b'{"id": "broken", ', content_type="application/json")
    state.completed += 1
    done = (
        openai_completion_response(model, answer)
        if legacy
        else openai_chat_response(model, answer, n, top_logprobs)
    )
    return web.json_response(done, dumps=lambda o: orjson.dumps(o).decode())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, legacy=False)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, legacy=True)


def add_openai_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
