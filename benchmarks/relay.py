"""The relay's cost per streamed chunk, in-process: ``SSERelay.feed`` on the simulator's own
OpenAI chunks (one event per read, as a paced upstream delivers them), beside the parts it is
made of: SSE framing alone and the ``orjson.loads`` that validates every event.
"""

from __future__ import annotations

import gc
import time
from typing import Any

import orjson

from proxy.serve.relay import SSERelay
from proxy.sim.openai_api import render_openai_chat
from proxy.sim.script import Conversation, Profile, script_answer

from .common import Context, stats

NAME = "relay"


def chunks(tokens: int = 64) -> list[bytes]:
    answer = script_answer(
        Conversation(texts=("benchmark",), last_role="user"), Profile(tokens=tokens)
    )
    r = render_openai_chat("gpt-4o-mini", answer, include_usage=True)
    return [*r.head, *r.body, *r.tail]


def _per_chunk_us(events: list[bytes], fn: Any, rounds: int) -> list[float]:
    """Mean microseconds per chunk for each round over the whole stream."""
    out = []
    clock = time.perf_counter_ns
    for _ in range(rounds):
        t0 = clock()
        fn(events)
        out.append((clock() - t0) / 1000.0 / len(events))
    return out


def _relay(events: list[bytes]) -> None:
    relay = SSERelay(True, lambda p, c: 0.0)
    for e in events:
        relay.feed(e)
    relay.finish()


def _relay_batched(events: list[bytes]) -> None:
    relay = SSERelay(True, lambda p, c: 0.0)
    relay.feed(b"".join(events))
    relay.finish()


def _framing(events: list[bytes]) -> None:
    buf = b""
    for e in events:
        buf += e
        start = 0
        while (end := buf.find(b"\n\n", start)) >= 0:
            start = end + 2
        buf = buf[start:]


def _loads(events: list[bytes]) -> None:
    for e in events:
        payload = e[6:-2]
        if payload != b"[DONE]":
            orjson.loads(payload)


def run(ctx: Context) -> dict[str, Any]:
    rounds = ctx.size.relay_iters
    ctx.display.phase(f"{NAME}: SSERelay.feed per chunk, {rounds} streams of 68 events")
    events = chunks()
    gc.collect()
    relay = _per_chunk_us(events, _relay, rounds)
    batched = _per_chunk_us(events, _relay_batched, rounds)
    framing = _per_chunk_us(events, _framing, rounds)
    loads = _per_chunk_us(events, _loads, rounds)
    return {
        "events_per_stream": len(events),
        "bytes_per_event": round(sum(map(len, events)) / len(events), 1),
        "feed_us_per_chunk": stats(relay),
        "feed_batched_us_per_chunk": stats(batched),
        "framing_only_us_per_chunk": stats(framing),
        "orjson_loads_us_per_chunk": stats(loads),
    }


def checks(result: dict[str, Any]) -> list[Any]:
    return []  # reported, not a target of its own: it shows up in (a) and (b)
