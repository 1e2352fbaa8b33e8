"""Simulated upstream providers: per-model state, pacing, fault injection and the control API.

One aiohttp app serves every simulated model; behaviour per model (by the upstream id in
the request) comes from a latency ``Profile`` and an optional ``Fault`` that tests switch
at run time through ``/_sim/*`` or directly on ``SimState``. The demo, the tests and the
benchmarks share it. Each wire format renders here (``openai_api``, ``anthropic_api``,
``bedrock_api``); ``launch`` assembles the app.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .script import FAULT_MODES, Answer, Fault, Profile

PRE_BYTE_FAULTS = frozenset({"status", "reset", "hang_headers"})


class SimState:
    """Everything a test may want to switch or inspect while the simulator runs."""

    def __init__(
        self, *, scale: float = 1.0, default: Profile | None = None, keyless: bool = False
    ) -> None:
        self.scale = scale
        # A local server (Ollama, llama.cpp) takes requests without a bearer token.
        self.keyless = keyless
        self.default = default or Profile()
        self.profiles: dict[str, Profile] = {}
        self.faults: dict[str, Fault] = {}
        self.requests: Counter[str] = Counter()
        self.last_body: dict[str, dict[str, Any]] = {}
        self.last_headers: dict[str, dict[str, str]] = {}
        self.rng = random.Random(0)  # draws heavy-tail TTFTs (Profile.tail_p); seedable
        # Every top-level field of the OpenAI-wire requests (tests check what the router
        # forwards), and content chunks written per model (what a stream had sent).
        self.fields_seen: set[str] = set()
        self.chunks_sent: Counter[str] = Counter()
        self.open_streams = 0
        self.cancelled = 0
        self.cancel_times: list[float] = []  # loop time each cancelled stream noticed it
        self.completed = 0
        # Models served as vLLM / llama.cpp serve them: a completions `suffix` is refused, so
        # the proxy must send the prompt in the model's FIM template instead.
        self.no_suffix: set[str] = set()
        # Client connections seen (by peer address): what the warm-pool tests count.
        self.connections: set[str] = set()
        # time.perf_counter() when the last POST arrived (before its body is read): splits a
        # benchmark's TTFT at the upstream (benchmarks/warm_pool.py).
        self.last_arrival = 0.0

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
        self.fields_seen.clear()
        self.chunks_sent.clear()
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
    request: web.Request,
    state: SimState,
    fault: Fault,
    profile: Profile,
    r: Rendered,
    model: str = "",
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
            state.chunks_sent[model] += 1
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
            "fields_seen": sorted(state.fields_seen),
            "chunks_sent": dict(state.chunks_sent),
        }
    )
