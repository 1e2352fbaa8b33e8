"""Simulated upstream providers: pacing, fault injection, a control API and the OpenAI wire.

One aiohttp app serves every simulated model; behaviour per model (by the upstream id in
the request) comes from a latency ``Profile`` and an optional ``Fault`` that tests switch
at run time through ``/_sim/*`` or directly on ``SimState``. The demo, the tests and the
benchmarks share it.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from .script import (
    FAULT_MODES,
    Answer,
    Fault,
    Profile,
    openai_conversation,
    script_answer,
)

PRE_BYTE_FAULTS = frozenset({"status", "reset", "hang_headers"})


class SimState:
    """Everything a test may want to switch or inspect while the simulator runs."""

    def __init__(self, *, scale: float = 1.0, default: Profile | None = None) -> None:
        self.scale = scale
        self.default = default or Profile()
        self.profiles: dict[str, Profile] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: Counter[str] = Counter()
        self.last_body: dict[str, dict[str, Any]] = {}
        self.last_headers: dict[str, dict[str, str]] = {}
        self.rng = random.Random(0)  # draws heavy-tail TTFTs (Profile.tail_p); seedable
        self.open_streams = 0
        self.cancelled = 0
        self.cancel_times: list[float] = []  # loop time each cancelled stream noticed it
        self.completed = 0
        # Models served as vLLM / llama.cpp serve them: a completions `suffix` is refused, so
        # the proxy must send the prompt in the model's FIM template instead.
        self.no_suffix: set[str] = set()
        # Client connections seen (by peer address): what the warm-pool tests count.
        self.connections: set[str] = set()

    def profile(self, model: str) -> Profile:
        return self.profiles.get(model, self.default)

    def set_fault(self, model: str, fault: Fault) -> None:
        self.faults[model] = fault

    def take_fault(self, model: str) -> Fault:
        fault = self.faults.get(model) or self.faults.get("*")
        if fault is None or fault.mode == "none":
            return Fault()
        if fault.remaining is not None:
            fault.remaining -= 1
            if fault.remaining <= 0:
                self.faults.pop(model if model in self.faults else "*", None)
        return fault

    def record(self, model: str, body: dict[str, Any], headers: Mapping[str, str]) -> None:
        self.requests[model] += 1
        self.last_body[model] = body
        self.last_headers[model] = dict(headers)

    async def pause(self, ms: float) -> None:
        delay = ms * self.scale / 1000.0
        if delay > 0:
            await asyncio.sleep(delay)

    async def pause_until(self, deadline: float) -> None:
        """Sleep until ``deadline`` on the running loop's clock."""
        delay = deadline - asyncio.get_running_loop().time()
        if delay > 0:
            await asyncio.sleep(delay)

    def reset(self) -> None:
        self.faults.clear()
        self.requests.clear()
        self.last_body.clear()
        self.last_headers.clear()
        self.cancelled = self.completed = 0


SIM_STATE = web.AppKey("sim_state", SimState)


@dataclass(slots=True)
class Rendered:
    """An answer rendered in one wire format, split by when each part is sent."""

    content_type: str
    head: list[bytes]  # right after the headers, before the time to first token
    body: list[bytes]  # content events: the first after TTFT, then one per gap
    tail: list[bytes]  # after the content, ending a complete stream
    error_event: bytes  # an in-band error in this wire format
    malformed: bytes = b"this line is not server-sent events\n\n"
    bad_json: bytes = b'data: {"id": "broken", "choices": [\n\n'
    headers: dict[str, str] = field(default_factory=dict)


async def _hang() -> None:
    await asyncio.Event().wait()


async def apply_pre_byte_fault(
    request: web.Request,
    fault: Fault,
    error_response: Callable[[int, str], web.Response],
) -> web.StreamResponse | None:
    """Faults that strike before the response starts; None when there is none."""
    if fault.mode == "status":
        resp = error_response(fault.status, f"simulated upstream failure {fault.status}")
        if fault.retry_after is not None:
            resp.headers["Retry-After"] = f"{fault.retry_after:g}"
        return resp
    if fault.mode == "reset":
        if request.transport is not None:
            request.transport.abort()
        raise asyncio.CancelledError  # nothing more to do on a dead connection
    if fault.mode == "hang_headers":
        await _hang()
    return None


async def stream_rendered(
    request: web.Request, state: SimState, fault: Fault, profile: Profile, r: Rendered
) -> web.StreamResponse:
    """Send a rendered stream with the model's pacing, striking the fault when due."""
    resp = web.StreamResponse(headers={"Content-Type": r.content_type, **r.headers})
    state.open_streams += 1
    try:
        await resp.prepare(request)
        for part in r.head:
            await resp.write(part)
        if fault.mode == "hang_first_token":
            await _hang()
        await state.pause(profile.draw_ttft_ms(state.rng))
        first = asyncio.get_running_loop().time()
        for i, part in enumerate(r.body):
            if i == fault.after_chunks and await _strike(request, resp, fault, r):
                return resp
            if i:
                # On a fixed schedule from the first chunk: timer jitter does not accumulate,
                # so a paced stream's length is the same on every run (benchmarks compare it).
                await state.pause_until(first + i * profile.gap_ms * state.scale / 1000.0)
            await resp.write(part)
        if len(r.body) <= fault.after_chunks and await _strike(request, resp, fault, r):
            return resp
        for part in r.tail:
            await resp.write(part)
        await resp.write_eof()
        state.completed += 1
        return resp
    except (asyncio.CancelledError, ConnectionResetError):
        state.cancelled += 1
        state.cancel_times.append(asyncio.get_running_loop().time())
        raise
    finally:
        state.open_streams -= 1


async def _strike(
    request: web.Request, resp: web.StreamResponse, fault: Fault, r: Rendered
) -> bool:
    """Mid-stream faults; True when the stream is over."""
    if fault.mode == "stall":
        await _hang()
    if fault.mode == "malformed":
        await resp.write(r.malformed)
    elif fault.mode == "bad_json":
        await resp.write(r.bad_json)
    elif fault.mode == "error_event":
        await resp.write(r.error_event)
        await resp.write_eof()
        return True
    elif fault.mode == "close":
        if request.transport is not None:
            request.transport.abort()
        return True
    return False


async def reply_after(
    request: web.Request, state: SimState, fault: Fault, profile: Profile, answer: Answer
) -> None:
    """Wait as long as a non-streaming answer of this length takes; hang on stream faults."""
    if fault.mode in {"hang_first_token", "stall"}:
        await _hang()
    if fault.mode == "close" and request.transport is not None:
        request.transport.abort()
        raise asyncio.CancelledError
    await state.pause(profile.ttft_ms + profile.gap_ms * max(len(answer.pieces) - 1, 0))


# --- OpenAI wire -----------------------------------------------------------------------


def _sse(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def openai_error(status: int, message: str) -> web.Response:
    kind = {429: "rate_limit_exceeded", 400: "invalid_request_error"}.get(status, "server_error")
    body = {"error": {"message": message, "type": kind, "param": None, "code": None}}
    return web.json_response(body, status=status, dumps=lambda o: orjson.dumps(o).decode())


def _usage(answer: Answer) -> dict[str, int]:
    return {
        "prompt_tokens": answer.prompt_tokens,
        "completion_tokens": answer.completion_tokens,
        "total_tokens": answer.prompt_tokens + answer.completion_tokens,
    }


def render_openai_chat(model: str, answer: Answer, include_usage: bool) -> Rendered:
    created = int(time.time())
    base = {"id": f"chatcmpl-sim{created}", "object": "chat.completion.chunk", "created": created}
    base["model"] = model
    extra = {"usage": None} if include_usage else {}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
        return _sse({**base, "choices": [choice], **extra})

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
        tail.append(_sse({**base, "choices": [], "usage": _usage(answer)}))
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


def openai_chat_response(model: str, answer: Answer) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "assistant", "content": answer.text or None}
    message["refusal"] = None
    if answer.tool_call is not None:
        tc = answer.tool_call
        fn = {"name": tc.name, "arguments": tc.arguments}
        message["tool_calls"] = [{"id": tc.id, "type": "function", "function": fn}]
    created = int(time.time())
    choice = {
        "index": 0,
        "message": message,
        "logprobs": None,
        "finish_reason": answer.finish_reason,
    }
    return {
        "id": f"chatcmpl-sim{created}",
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [choice],
        "usage": _usage(answer),
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
    # No Authorization at all is how a local server (Ollama, vLLM, llama.cpp) is called.
    if not request.headers.get("Authorization", "Bearer ").startswith("Bearer "):
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
    if body.get("stream"):
        render = render_openai_completion if legacy else render_openai_chat
        return await stream_rendered(
            request, state, fault, profile, render(model, answer, include_usage)
        )
    await reply_after(request, state, fault, profile, answer)
    if fault.mode in {"malformed", "bad_json"}:
        return web.Response(body=b'{"id": "broken", ', content_type="application/json")
    respond = openai_completion_response if legacy else openai_chat_response
    state.completed += 1
    return web.json_response(respond(model, answer), dumps=lambda o: orjson.dumps(o).decode())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, legacy=False)


async def completions(request: web.Request) -> web.StreamResponse:
    return await _openai(request, legacy=True)


# --- control API -----------------------------------------------------------------------


async def control_profile(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    data = await request.json()
    model = data.pop("model")
    current = state.default if model == "*" else state.profile(model)
    updated = Profile(
        ttft_ms=float(data.get("ttft_ms", current.ttft_ms)),
        gap_ms=float(data.get("gap_ms", current.gap_ms)),
        tokens=int(data.get("tokens", current.tokens)),
    )
    if model == "*":
        state.default = updated
    else:
        state.profiles[model] = updated
    return web.json_response({"ok": True})


async def control_fault(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    data = await request.json()
    mode = data.get("mode", "none")
    if mode not in FAULT_MODES:
        return web.json_response({"error": f"unknown mode {mode!r}"}, status=400)
    state.set_fault(
        data["model"],
        Fault(
            mode=mode,
            status=int(data.get("status", 500)),
            retry_after=data.get("retry_after"),
            after_chunks=int(data.get("after_chunks", 0)),
            remaining=data.get("count"),
        ),
    )
    return web.json_response({"ok": True})


async def control_reset(request: web.Request) -> web.Response:
    request.app[SIM_STATE].reset()
    return web.json_response({"ok": True})


async def control_stats(request: web.Request) -> web.Response:
    state = request.app[SIM_STATE]
    return web.json_response(
        {
            "requests": dict(state.requests),
            "open_streams": state.open_streams,
            "cancelled": state.cancelled,
            "completed": state.completed,
            "connections": len(state.connections),
        }
    )


@web.middleware
async def _count_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if peer is not None:
        request.app[SIM_STATE].connections.add(f"{peer[0]}:{peer[1]}")
    return await handler(request)


def make_sim_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_count_connection])
    app[SIM_STATE] = state
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/_sim/profile", control_profile)
    app.router.add_post("/_sim/fault", control_fault)
    app.router.add_post("/_sim/reset", control_reset)
    app.router.add_get("/_sim/stats", control_stats)
    # Imported here: the wire modules import this one for the pacing and fault helpers.
    from .anthropic_wire import add_anthropic_routes
    from .bedrock_wire import add_bedrock_routes
    from .mistral_wire import add_mistral_routes

    add_anthropic_routes(app)
    add_bedrock_routes(app)
    add_mistral_routes(app)
    return app


def bound_port(site: web.TCPSite) -> int:
    """The port a site listens on (it may have been asked for port 0)."""
    # asyncio's Server and uvloop's both have .sockets; neither is the other's subclass.
    sockets = getattr(site._server, "sockets", None)
    if not sockets:
        raise RuntimeError("site is not started")
    return int(sockets[0].getsockname()[1])


async def start_sim(
    state: SimState,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: ssl.SSLContext | None = None,
    keepalive_timeout_s: float = 75.0,
) -> tuple[web.AppRunner, str]:
    """Start the simulator on loopback; returns the runner (to clean up) and its base URL
    (``https://`` when ``tls`` is given: see ``proxy.sim.tls``).

    ``handler_cancellation`` is on so a departed client cancels the simulated answer, as a
    real provider would notice. Idle connections are kept ``keepalive_timeout_s`` (aiohttp's
    default is 75 s, as many providers' load balancers).
    """
    runner = web.AppRunner(
        make_sim_app(state),
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = bound_port(site)
    scheme = "https" if tls is not None else "http"
    return runner, f"{scheme}://{host}:{bound}"
