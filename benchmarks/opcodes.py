"""Python bytecodes executed per request: model-router against the thin forwarder, by function.

CPU time on a shared two-core VM moves 20-30 % between runs, so a cut of a few microseconds
cannot be seen in it. The number of bytecodes the interpreter executes per request does not
move: it is the same on every run of the same code, on any machine. The CPU gap to the
forwarder is almost all Python (``perf``: libpython 74 % of the router's samples, its kernel
time is the forwarder's), so this count is the steady measure of what each function adds.

    python -m benchmarks.opcodes                  # non-streaming, 300 requests each
    python -m benchmarks.opcodes --stream --top 60
    python -m benchmarks.opcodes --json out.json  # every function's counts, for a diff

Each target runs under ``python -m benchmarks.opcodes --child MODULE ...``, which counts
opcodes (``sys.settrace`` with ``f_trace_opcodes``) between SIGUSR1 and SIGUSR2 only: start-up
and warm-up are not counted. Tracing slows the target ~50x; nothing here is a timing.
"""

from __future__ import annotations

import argparse
import os
import runpy
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp
import orjson
import uvloop

from . import procs
from .common import ROUTER_MODEL, ZERO, set_profile

Key = tuple[str, int, str]  # file, first line, function
Tracer = Callable[[FrameType, str, Any], Any]
PROMPT = "Say hello in one short sentence please."


def _child(argv: list[str]) -> None:
    """Run ``python -m MODULE ARGS`` and count bytecodes per function between the signals."""
    opcodes: Counter[Key] = Counter()
    calls: Counter[Key] = Counter()
    out = os.environ["OPCODES_OUT"]

    def trace(frame: FrameType, event: str, arg: Any) -> Tracer:
        frame.f_trace_opcodes = True
        code = frame.f_code
        key = (code.co_filename, code.co_firstlineno, code.co_name)
        calls[key] += 1  # a coroutine counts once per resumption

        def local(frame: FrameType, event: str, arg: Any) -> Tracer:
            if event == "opcode":
                opcodes[key] += 1
            return local

        return local

    def start(*_: object) -> None:
        opcodes.clear()
        calls.clear()
        sys.settrace(trace)

    def stop(*_: object) -> None:
        sys.settrace(None)
        rows = [[*k, opcodes[k], calls[k]] for k in set(opcodes) | set(calls)]
        Path(out).write_bytes(orjson.dumps(rows))

    signal.signal(signal.SIGUSR1, start)
    signal.signal(signal.SIGUSR2, stop)
    sys.argv = argv
    runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


async def _load(url: str, model: str, n: int, stream: bool) -> int:
    """``n`` sequential chat completions; returns the content chunks received."""
    body = {"model": model, "messages": [{"role": "user", "content": PROMPT}], "stream": stream}
    chunks = 0
    async with aiohttp.ClientSession() as session:
        for _ in range(n):
            async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise RuntimeError(f"{url}: HTTP {resp.status}: {text[:200]}")
                chunks += text.count('"content":"') if stream else 1
    return chunks


def _short(path: str) -> str:
    for cut in ("site-packages/", str(procs.ROOT) + "/", "python3.11/"):
        if cut in path:
            return path.split(cut, 1)[1]
    return path


def count(name: str, n: int, stream: bool) -> tuple[dict[Key, tuple[float, float]], float]:
    """Bytecodes and calls per request for one target, and content chunks per request."""
    with tempfile.TemporaryDirectory(prefix="mr-opcodes-") as tmp:
        sim = procs.spawn("sim", procs.sim_argv(tokens=int(ZERO["tokens"])), cpus=None)
        try:
            set_profile(sim.url, ZERO)
            out = Path(tmp) / "counts.json"
            env = {"OPCODES_OUT": str(out)}
            if name == "model-router":
                config = Path(tmp) / "router.toml"
                config.write_text(procs.router_config(sim.url))
                argv, model = procs.router_argv(config), ROUTER_MODEL
                env.update(procs.router_env())
            else:
                argv, model = procs.forwarder_argv(sim.url), "gpt-4o-mini"
            child = [sys.executable, "-m", "benchmarks.opcodes", "--child", *argv[2:]]
            target = procs.spawn(name, child, cpus=None, env=env)
            try:
                uvloop.run(_load(target.url, model, 50, stream))  # warm: pools, caches
                os.kill(target.pid, signal.SIGUSR1)
                time.sleep(0.2)
                chunks = uvloop.run(_load(target.url, model, n, stream))
                time.sleep(0.2)  # the sinks that run after the answer
                os.kill(target.pid, signal.SIGUSR2)
                for _ in range(100):
                    if out.exists():
                        break
                    time.sleep(0.05)
                rows = orjson.loads(out.read_bytes())
            finally:
                target.stop()
        finally:
            sim.stop()
    per = {(_short(f), line, fn): (ops / n, calls / n) for f, line, fn, ops, calls in rows}
    return per, chunks / n


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        _child(sys.argv[2:])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=300, help="requests per target (counted)")
    parser.add_argument("--stream", action="store_true", help="streamed requests (64 chunks)")
    parser.add_argument("--top", type=int, default=40, help="functions listed")
    parser.add_argument("--json", type=Path, help="write every function's counts here")
    args = parser.parse_args()
    results = {name: count(name, args.n, args.stream) for name in ("forwarder", "model-router")}
    (fwd, _), (router, chunks) = results["forwarder"], results["model-router"]
    total = {name: sum(ops for ops, _ in per.values()) for name, (per, _) in results.items()}
    mode = f"streamed, {chunks:.0f} content chunks each" if args.stream else "non-streaming"
    print(f"bytecodes per request ({mode}, {args.n} requests)")
    for name, ops in total.items():
        print(f"  {name:<13} {ops:9.0f}  ({ops / total['forwarder']:.2f}x the forwarder)")
    if args.stream:
        per_chunk = (total["model-router"] - total["forwarder"]) / max(chunks, 1)
        print(f"  model-router's extra per content chunk: {per_chunk:.1f}")
    ours = sum(ops for (f, _, _), (ops, _) in router.items() if f.startswith(("proxy/", "probes/")))
    print(f"  of model-router's, in proxy/ and probes/: {ours:.0f}")
    print(f"\n{'extra':>8} {'router':>8} {'calls':>6}  function (router minus forwarder)")
    diff = []
    for key in set(router) | set(fwd):
        r_ops, r_calls = router.get(key, (0.0, 0.0))
        f_ops, _ = fwd.get(key, (0.0, 0.0))
        diff.append((r_ops - f_ops, r_ops, r_calls, key))
    diff.sort(key=lambda row: -abs(row[0]))
    for extra, ops, calls, (f, line, fn) in diff[: args.top]:
        print(f"{extra:8.1f} {ops:8.1f} {calls:6.1f}  {f}:{line} {fn}")
    if args.json:
        data = {
            name: [[*k, ops, calls] for k, (ops, calls) in per.items()]
            for name, (per, _) in results.items()
        }
        args.json.write_bytes(orjson.dumps(data, option=orjson.OPT_INDENT_2))


if __name__ == "__main__":
    main()
