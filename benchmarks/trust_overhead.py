"""What issue 20's checks cost per request, in CPU: the field allowlist (the door's check and
the OpenAI-wire provider's per-upstream filter) and the per-address connection accounting
(peer address, trusted-proxy test, count in and out). Run:
``python -m benchmarks.trust_overhead [--json]``.

The goal: at most 5 us of CPU per request together (a request on a new connection: the
worst case; kept-alive connections pay the address accounting once for many requests).
Each figure is the loop with the operation minus the same loop without it, measured with
``time.process_time`` (CPU, not wall clock), best of ``--rounds``.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

import orjson

from proxy.config import parse_config
from proxy.http.hostile_input import AddressCounts, is_trusted, peer_of
from proxy.providers.base import UpstreamRequest
from proxy.providers.openai import OpenAIProvider

GOAL_US = 5.0

# An autocomplete chat request and a FIM completion, as editors send them.
CHAT = {
    "model": "auto:fast",
    "messages": [
        {"role": "system", "content": "You complete code."},
        {"role": "user", "content": "def fib(n):"},
    ],
    "stream": True,
    "max_tokens": 64,
    "temperature": 0.2,
    "stop": ["\n\n"],
    "prefer": "fast",
}
FIM = {
    "model": "auto:fast",
    "prompt": "def add(a, b):\n    return ",
    "suffix": "\n",
    "max_tokens": 16,
}


def cpu_us(fn: Callable[[int], None], n: int, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        start = time.process_time()
        fn(n)
        best = min(best, time.process_time() - start)
    return best / n * 1e6


def measure(requests: int, rounds: int, transport: Any) -> dict[str, Any]:
    plain = parse_config({})
    extras = parse_config(
        {
            "forwarding": {"extra_body_fields": ["min_p"]},
            "providers": {"openai": {"extra_body_fields": ["top_k", "repetition_penalty"]}},
            "limits": {"trusted_proxies": ["10.0.0.0/8", "192.168.1.10"]},
        }
    )
    chat_up = UpstreamRequest("chat", "gpt-5-nano", {**CHAT, "model": "gpt-5-nano"}, True)
    fim_up = UpstreamRequest("completions", "m", {**FIM, "model": "m"}, False)
    provider = OpenAIProvider(
        "openai",
        base_url="http://127.0.0.1:1/v1",
        api_key="x",
        session=None,  # type: ignore[arg-type]  # never used: _body only
        fields=extras.fields.forwarded["openai"],
    )
    results: dict[str, Any] = {}

    def loop_only(n: int) -> None:
        for _ in range(n):
            pass

    base = cpu_us(loop_only, requests, rounds)
    for name, config in (("no extras", plain), ("with extras and trusted proxies", extras)):
        fields, limits = config.fields, config.limits

        def allowlist(n: int, fields: Any = fields) -> None:
            for _ in range(n):
                fields.check(CHAT, "chat")
                fields.check(FIM, "completions")
                provider._body(chat_up)
                provider._body(fim_up)

        def per_address(n: int, limits: Any = limits) -> None:
            counts = AddressCounts()
            trusted, cap = limits.trusted_proxies, limits.per_address
            for _ in range(n):
                address = peer_of(transport)
                if not is_trusted(address, trusted):
                    counts.open(address, cap)
                    counts.close(address)

        # Two requests (chat + FIM) per allowlist loop: halve it to per request.
        allow_us = (cpu_us(allowlist, requests, rounds) - base) / 2
        address_us = cpu_us(per_address, requests, rounds) - base
        results[name] = {
            "allowlist_us": round(allow_us, 3),
            "per_address_us": round(address_us, 3),
            "total_us": round(allow_us + address_us, 3),
        }
    worst = max(r["total_us"] for r in results.values())
    return {
        "requests": requests,
        "rounds": rounds,
        "cases": results,
        "worst_total_us": worst,
        "goal_us": GOAL_US,
        "within_goal": worst <= GOAL_US,
    }


async def run(requests: int, rounds: int) -> dict[str, Any]:
    # A real TCP transport, so peer_of reads a real peer name.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, _ = await asyncio.get_running_loop().create_connection(
        asyncio.Protocol, "127.0.0.1", port, family=socket.AF_INET
    )
    try:
        return measure(requests, rounds, transport)
    finally:
        transport.close()
        server.close()
        await server.wait_closed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.requests, args.rounds))
    if args.json:
        sys.stdout.write(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    print(f"CPU per request, best of {args.rounds} x {args.requests:,} (goal <= {GOAL_US} us):")
    for name, r in result["cases"].items():
        print(
            f"  {name:<34} allowlist {r['allowlist_us']:.2f} us + per-address "
            f"{r['per_address_us']:.2f} us = {r['total_us']:.2f} us"
        )
    print("within goal" if result["within_goal"] else "OVER GOAL")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
