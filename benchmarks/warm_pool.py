"""Warm pools: the first completion after a pause, over TLS, with the upstream pools kept warm
and without, against the same request on a connection that was held open through the pause.
The real proxy (its own process, uvloop, production server settings) streams from the simulator
serving HTTPS with a certificate made at start (``proxy/sim/tls.py``), so a cold request pays
TCP and a full TLS handshake as against a real provider (on loopback: no network round trips,
only the handshake's CPU, so the gap is smaller than in production).

    python -m benchmarks.warm_pool            # ~8 min
    python -m benchmarks.warm_pool --smoke    # tiny

All five setups below run side by side, each with its own simulator (and router or forwarder
process), and take turns: before each turn 2 s of silence (nothing at all is sent, as when a
developer stops typing), then the setup's first request after its pause and a few back to
back. So each setup's connections have been idle for five turns, ~10 s, which stands for the
60 s pause: time is compressed 6x, and every keep-alive is divided by 6 too (the router's
upstream pool, its client-side keep-alive, the simulator's 75 s, the forwarder's pool).
Taking turns spreads the load of a shared machine evenly over the setups; ``held`` and ``on``
take adjacent turns, and each pair of their turns gives a ratio too.

- ``direct``: the client straight to the simulator on a connection held open (the floor);
- ``forwarder``: through the thin forwarder, its pool held open (no routing);
- ``off``: the old pool (30 s keep-alive, no warming): the pause outlives the connection;
- ``held``: through the router, no warming, a 1 h upstream keep-alive: the upstream connection
  is certainly still open after the pause. This is "a request on a connection already open"
  after the same pause, the comparison the warm pools are judged by;
- ``on``: the defaults (60 s keep-alive, pre-connect, re-use check before expiry).

Per setup: TTFT at the client (the first content token, not the role chunk) of the first
request after each pause, and of requests sent back to back right after it. The client's own
connection is held open and counted (a reconnect to the router would show), and so are the
simulator's connections; the simulator's arrival time splits each TTFT into the leg up to
the upstream and the leg back. Output: a table, and JSON in ``benchmarks/out/``.

What the ratios mean: on this kind of machine any request after a pause of more than a few
milliseconds costs more than one sent back to back, with every connection open (``direct``
and ``forwarder`` show it): code that has not run for a while runs slower the first time (the
CPU's caches, TLB and predictors were refilled by other work; see RESULTS.md). So the warm
pools are judged by ``on`` against ``held`` after the same pause; the back-to-back ratio is
printed beside it for each setup.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import multiprocessing.connection
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from benchmarks import procs
from proxy.sim.catalogs import only_models, sim_model
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from proxy.sim.tls import make_sim_tls

OUT = Path(__file__).resolve().parent / "out"
SCALE = 6.0  # seconds of production per second here
HOUR = 3600.0


@dataclass(frozen=True, slots=True)
class Setup:
    name: str
    via: str  # "direct", "forwarder" or "router"
    warm: bool = False
    keepalive_s: float = 0.0  # the router's upstream keep-alive, production seconds


@dataclass(frozen=True, slots=True)
class Size:
    rounds: int
    open_requests: int
    idle_s: float  # production seconds


FULL = Size(rounds=40, open_requests=4, idle_s=60.0)
SMOKE = Size(rounds=1, open_requests=2, idle_s=20.0)
SETUPS = (
    Setup("direct", "direct"),
    Setup("forwarder", "forwarder"),
    Setup("off", "router", warm=False, keepalive_s=30.0),
    Setup("held", "router", warm=False, keepalive_s=HOUR),
    Setup("on", "router", warm=True, keepalive_s=60.0),
)


@dataclass(slots=True)
class Result:
    setup: Setup
    after_idle_ms: list[float] = field(default_factory=list)
    open_ms: list[float] = field(default_factory=list)
    # The first request after each pause, split at the simulator's arrival.
    after_idle_up_ms: list[float] = field(default_factory=list)
    after_idle_back_ms: list[float] = field(default_factory=list)
    open_up_ms: list[float] = field(default_factory=list)
    upstream_connections: int = 0  # connections the simulator saw
    client_connections: int = 0  # connections the client opened (to the router or forwarder)
    ratio_open: float = 0.0  # after the pause / back to back, same setup


def config_data(setup: Setup) -> dict[str, Any]:
    return {
        **only_models(sim_model("m-a", provider="openai", nominal_ttft_ms=100.0)),
        "probes": {"enabled": False},
        "server": {
            "upstream_keepalive_s": setup.keepalive_s / SCALE,
            "warm_connections": setup.warm,
        },
        # The router's own keep-alive for its clients (75 s), compressed like everything else:
        # a client connection lives through the pause, as in production.
        "limits": {"keepalive_timeout_s": 75.0 / SCALE},
    }


def serve_proxy(
    data: dict[str, Any], sim_url: str, ca_file: str, conn: multiprocessing.connection.Connection
) -> None:
    import uvloop

    from proxy.app import make_app, start_server
    from proxy.assembly.demo import demo_config
    from proxy.config import parse_config

    async def main() -> None:
        cfg = demo_config(parse_config(data), sim_url, ca_file)
        with procs.private_state() as state:
            app = make_app(cfg, environ={"OPENAI_API_KEY": "bench", "STATE_DIRECTORY": state})
            runner, port = await start_server(app, "127.0.0.1", 0)
            conn.send(port)
            await asyncio.get_running_loop().run_in_executor(None, conn.recv)
            await runner.cleanup()

    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main())


def is_content(line: bytes) -> bool:
    """A content event: a delta with text (the role chunk, ``"content":""``, is not one)."""
    if not line.startswith(b"data: {") or b'"content":"' not in line:
        return False
    choices = orjson.loads(line[6:]).get("choices") or [{}]
    return bool((choices[0].get("delta") or {}).get("content"))


@dataclass(frozen=True, slots=True)
class Timing:
    ttft_ms: float
    up_ms: float  # from the client's send to the simulator's arrival


async def ttft(
    session: aiohttp.ClientSession, url: str, state: SimState, ssl: Any = True
) -> Timing:
    body = {"model": "m-a", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    started = time.perf_counter()
    first = None
    async with session.post(f"{url}/v1/chat/completions", json=body, ssl=ssl) as resp:
        if resp.status != 200:
            raise RuntimeError(f"{url} answered {resp.status}")
        async for line in resp.content:
            if first is None and is_content(line):
                first = time.perf_counter()
    if first is None:
        raise RuntimeError("a stream ended without content")
    # The simulator runs in this process, on the same clock.
    return Timing((first - started) * 1000, (state.last_arrival - started) * 1000)


def p50(values: Sequence[float]) -> float:
    return statistics.median(values)


def counting_trace(counter: list[int]) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    async def created(_s: aiohttp.ClientSession, _c: SimpleNamespace, _p: object) -> None:
        counter[0] += 1

    trace.on_connection_create_end.append(created)
    return trace


class Bench:
    """One setup: its simulator, what the client talks to (the simulator itself, the
    forwarder or the router, each in its own process, stopped by its own handle), the
    client's session, and what was measured."""

    def __init__(self, setup: Setup, size: Size, workdir: Path) -> None:
        self.setup = setup
        self.size = size
        self.tls = make_sim_tls(workdir / setup.name)
        self.state = SimState(default=Profile(ttft_ms=2.0, gap_ms=0.0, tokens=4))
        self.result = Result(setup)
        self.url = ""
        self._created = [0]
        self._sim: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._fwd: procs.Service | None = None
        self._proc: Any = None
        self._pipe: multiprocessing.connection.Connection | None = None
        # One context for the whole run: aiohttp pools connections per SSL context.
        self._ssl: Any = self.tls.client_context() if setup.via == "direct" else True

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._sim, sim_url = await start_sim(
            self.state, tls=self.tls.server, keepalive_timeout_s=75 / SCALE
        )
        self.url = sim_url
        if self.setup.via == "forwarder":
            # The forwarder trusts the simulator's CA through OpenSSL's SSL_CERT_FILE; its
            # pool outlives the pause, like the router's in "held".
            env = {"SSL_CERT_FILE": str(self.tls.ca_file)}
            argv = [*procs.forwarder_argv(sim_url), "--keepalive-s", str(HOUR / SCALE)]
            self._fwd = await loop.run_in_executor(
                None, lambda: procs.spawn("forwarder", argv, cpus=None, env=env)
            )
            self.url = self._fwd.url
        elif self.setup.via == "router":
            ctx = multiprocessing.get_context("spawn")
            ours, theirs = ctx.Pipe()
            args = (config_data(self.setup), sim_url, str(self.tls.ca_file), theirs)
            self._proc = ctx.Process(target=serve_proxy, args=args, daemon=True)
            self._proc.start()
            self._pipe = ours
            if not await loop.run_in_executor(None, ours.poll, 30):
                raise RuntimeError("the proxy did not start")
            self.url = f"http://127.0.0.1:{ours.recv()}"
        # The client holds its connection for the whole run; a reconnect would be counted.
        connector = aiohttp.TCPConnector(keepalive_timeout=10 * self.size.idle_s)
        self._session = aiohttp.ClientSession(
            connector=connector, trace_configs=[counting_trace(self._created)]
        )

    async def ttft(self) -> Timing:
        assert self._session is not None
        return await ttft(self._session, self.url, self.state, self._ssl)

    async def warm_up(self) -> None:
        for _ in range(3):  # the client's connection, the upstream's, code paths loaded
            await self.ttft()

    async def turn(self) -> None:
        """The first request after the pause, then a few back to back."""
        r = self.result
        first = await self.ttft()
        r.after_idle_ms.append(first.ttft_ms)
        r.after_idle_up_ms.append(first.up_ms)
        r.after_idle_back_ms.append(first.ttft_ms - first.up_ms)
        for _ in range(self.size.open_requests):
            t = await self.ttft()
            r.open_ms.append(t.ttft_ms)
            r.open_up_ms.append(t.up_ms)

    async def stop(self) -> None:
        loop = asyncio.get_running_loop()
        self.result.upstream_connections = len(self.state.connections)
        self.result.client_connections = self._created[0]
        if self._session is not None:
            await self._session.close()
        if self._fwd is not None:
            await loop.run_in_executor(None, self._fwd.stop)
        if self._proc is not None and self._pipe is not None:
            self._pipe.send("stop")
            await loop.run_in_executor(None, self._proc.join, 10)
            if self._proc.is_alive():
                self._proc.kill()  # by its own handle, i.e. its PID
                await loop.run_in_executor(None, self._proc.join, 5)
        if self._sim is not None:
            await self._sim.cleanup()
        r = self.result
        if r.after_idle_ms and r.open_ms:
            r.ratio_open = p50(r.after_idle_ms) / p50(r.open_ms)


def quantile(values: Sequence[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


def verdict(results: Sequence[Result]) -> dict[str, float]:
    """The first request after the pause against the same request with the upstream
    connection held open through it (``held``): ratios of the medians and of the lower
    quartiles (the quieter half of a shared machine), and for ``on`` the median of the
    per-round ratios (``held`` and ``on`` take adjacent turns)."""
    by = {r.setup.name: r for r in results}
    held = by["held"].after_idle_ms
    out = {}
    for name in ("off", "on"):
        if name in by:
            ms = by[name].after_idle_ms
            out[f"{name}_p50"] = p50(ms) / p50(held)
            if len(ms) > 1:
                out[f"{name}_p25"] = quantile(ms, 0.25) / quantile(held, 0.25)
    if "on" in by:
        out["on_paired"] = p50([a / b for a, b in zip(by["on"].after_idle_ms, held, strict=True)])
    return out


def report(results: Sequence[Result], size: Size) -> str:
    vs_held = verdict(results)
    lines = [
        f"first request after {size.idle_s:g} s of silence (at 1/{SCALE:g} time) over TLS "
        "upstream, TTFT at the client, p50 ms",
        f"  {'setup':>9} {'after pause':>11} {'(up':>6} {'back)':>6} {'back to back':>12} "
        f"{'ratio':>6} {'vs held':>7} {'upstream conns':>14} {'client conns':>12}",
    ]
    for r in results:
        name = r.setup.name
        held = f"{vs_held[name + '_p50']:.2f}" if name + "_p50" in vs_held else "-"
        lines.append(
            f"  {name:>9} {p50(r.after_idle_ms):>11.2f} {p50(r.after_idle_up_ms):>6.2f} "
            f"{p50(r.after_idle_back_ms):>6.2f} {p50(r.open_ms):>12.2f} {r.ratio_open:>6.2f} "
            f"{held:>7} {r.upstream_connections:>14} {r.client_connections:>12}"
        )
    if "on_p50" in vs_held:
        figures = [f"p50 {vs_held['on_p50']:.2f}x", f"paired {vs_held['on_paired']:.2f}x"]
        if "on_p25" in vs_held:
            figures.insert(1, f"p25 {vs_held['on_p25']:.2f}x")
        met = "met" if vs_held["on_p50"] <= 1.1 else "NOT met"
        lines.append(
            f"  warm pools on vs a connection held open: {', '.join(figures)} (p50: {met})"
        )
    return "\n".join(lines)


async def run(size: Size) -> list[Result]:
    silence = size.idle_s / SCALE / len(SETUPS)
    with tempfile.TemporaryDirectory(prefix="warm-pool-") as tmp:
        benches = [Bench(s, size, Path(tmp)) for s in SETUPS]
        try:
            for b in benches:
                await b.start()
            for b in benches:
                await b.warm_up()
            for _ in range(size.rounds):
                for b in benches:
                    await asyncio.sleep(silence)  # nothing is sent anywhere
                    await b.turn()
        finally:
            for b in benches:
                await b.stop()
        return [b.result for b in benches]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true", help="tiny run for the test suite")
    parser.add_argument("--out", type=Path, default=OUT, help="directory for the JSON")
    args = parser.parse_args(argv)
    size = SMOKE if args.smoke else FULL
    logging.getLogger("aiohttp.server").setLevel(logging.CRITICAL)
    results = asyncio.run(run(size))
    print(report(results, size))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"warm_pool-{time.strftime('%Y%m%d-%H%M%S')}.json"
    doc = {
        "size": asdict(size),
        "scale": SCALE,
        "vs_held": verdict(results),
        "results": [asdict(r) for r in results],
    }
    path.write_bytes(orjson.dumps(doc, option=orjson.OPT_INDENT_2))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
