"""What every benchmark shares: sizes, targets, the running stack (simulator, forwarder,
``model-router serve``), the load-generator driver with its progress display, and statistics.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from . import procs
from .procs import Pinning, Service

# Zero-delay mode: 64 content chunks with no pauses; what remains is the stack's cost.
ZERO = {"ttft_ms": 0.0, "gap_ms": 0.0, "tokens": 64}
ROUTER_MODEL = "auto"  # the intent path: parse, plan, dispatch


@dataclass(frozen=True, slots=True)
class Size:
    """How much each benchmark does; ``full`` is the published run, ``smoke`` the test's."""

    seq_n: int
    seq_warmup: int
    lanes_n: int
    levels: tuple[int, ...]
    level_s: float
    rps_concurrency: int
    rps_s: float
    rps_warmup_s: float
    held: int
    startup_runs: int
    routing_iters: int
    relay_iters: int
    # Paced mode: content chunks this far apart, the first at once (TTFT is the stack's own).
    paced_tokens: int = 64
    paced_gap_ms: float = 20.0
    settle_s: float = 1.0  # before reading RSS

    @property
    def paced(self) -> dict[str, float]:
        return {"ttft_ms": 0.0, "gap_ms": self.paced_gap_ms, "tokens": self.paced_tokens}

    @property
    def stall_ms(self) -> float:
        """A stall is a gap over twice the pacing."""
        return 2 * self.paced_gap_ms


FULL = Size(
    seq_n=2000,
    seq_warmup=50,
    lanes_n=40,
    levels=(1, 16, 64, 256, 512),
    level_s=5.0,
    rps_concurrency=32,
    rps_s=5.0,
    rps_warmup_s=1.0,
    held=1000,
    startup_runs=5,
    routing_iters=2000,
    relay_iters=2000,
)
SMOKE = Size(
    seq_n=5,
    seq_warmup=2,
    lanes_n=1,
    levels=(1, 4),
    level_s=0.3,
    rps_concurrency=4,
    rps_s=0.5,
    rps_warmup_s=0.1,
    held=20,
    startup_runs=1,
    routing_iters=20,
    relay_iters=20,
    paced_tokens=8,
    paced_gap_ms=5.0,
    settle_s=0.2,
)


@dataclass(frozen=True, slots=True)
class Target:
    """An OpenAI-compatible base URL (``.../v1``) to measure; ``service`` when we started it."""

    name: str
    url: str
    model: str
    key: str = "bench-client-key"
    service: Service | None = None

    def job(self) -> dict[str, str]:
        return {"name": self.name, "url": self.url, "model": self.model, "key": self.key}


def parse_target(spec: str) -> Target:
    """``NAME=URL[,model=M][,key=K]``: another gateway, pointed by its operator at our
    simulator (``--sim-port``), measured side by side."""
    name, sep, rest = spec.partition("=")
    if not sep or not name or not rest:
        raise ValueError(f"--target {spec!r}: expected NAME=URL[,model=M][,key=K]")
    url, *opts = rest.split(",")
    extra = {}
    for opt in opts:
        k, eq, v = opt.partition("=")
        if not eq or k not in ("model", "key"):
            raise ValueError(f"--target {spec!r}: unknown option {opt!r} (model=, key=)")
        extra[k] = v
    if name in ("direct", "forwarder", "model-router"):
        raise ValueError(f"--target {spec!r}: {name!r} is a built-in target")
    return Target(name, url.rstrip("/"), extra.get("model", "gpt-4o-mini"), extra.get("key", "x"))


class Display:
    """Progress on stderr: a redrawn bar on a terminal, nothing but phase lines otherwise."""

    def __init__(self, stream: Any = sys.stderr) -> None:
        self.stream = stream
        self.tty = bool(getattr(stream, "isatty", lambda: False)())

    def phase(self, text: str) -> None:
        print(f"  {text}", file=self.stream, flush=True)

    def bar(self, label: str, done: int, total: int) -> None:
        if not self.tty:
            return
        width = 30
        filled = width * done // max(total, 1)
        line = f"\r    {label:<34} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}"
        self.stream.write(line)
        if done >= total:
            self.stream.write("\r" + " " * len(line) + "\r")
        self.stream.flush()


@dataclass
class Context:
    size: Size
    pinning: Pinning
    out: Path
    display: Display
    extra_targets: list[Target] = field(default_factory=list)
    sim_port: int = 0
    services: list[Service] = field(default_factory=list)
    _stack: list[Target] | None = None
    _tmp: tempfile.TemporaryDirectory[str] | None = None

    @property
    def tmp(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="mr-bench-")
        return Path(self._tmp.name)

    def spawn(self, name: str, argv: list[str], cpus: frozenset[int] | None, **kw: Any) -> Service:
        svc = procs.spawn(name, argv, cpus=cpus, log_path=self.out / f"{name}.log", **kw)
        self.services.append(svc)
        return svc

    def stop(self, svc: Service) -> None:
        svc.stop()
        if svc in self.services:
            self.services.remove(svc)

    def start_sim(self, profile: dict[str, float], name: str = "sim", port: int = 0) -> Service:
        argv = procs.sim_argv(profile["ttft_ms"], profile["gap_ms"], int(profile["tokens"]))
        if port:
            argv += ["--port", str(port)]
        return self.spawn(name, argv, self.pinning.sim)

    def start_router(self, sim_url: str, name: str = "model-router") -> Service:
        config = self.tmp / f"{name}.toml"
        config.write_text(procs.router_config(sim_url))
        return self.spawn(
            name, procs.router_argv(config), self.pinning.target, env=procs.router_env()
        )

    def start_forwarder(self, sim_url: str, name: str = "forwarder") -> Service:
        return self.spawn(name, procs.forwarder_argv(sim_url), self.pinning.target)

    def stack(self) -> list[Target]:
        """direct (the simulator itself), the forwarder, model-router, then any --target."""
        if self._stack is None:
            self.display.phase("starting the simulator, the forwarder and model-router serve")
            sim = self.start_sim(ZERO, port=self.sim_port)
            fwd = self.start_forwarder(sim.url)
            router = self.start_router(sim.url)
            self._stack = [
                Target("direct", f"{sim.url}/v1", "gpt-4o-mini", service=sim),
                Target("forwarder", f"{fwd.url}/v1", "gpt-4o-mini", service=fwd),
                Target("model-router", f"{router.url}/v1", ROUTER_MODEL, service=router),
                *self.extra_targets,
            ]
        return self._stack

    def sim_url(self) -> str:
        return self.stack()[0].url.removesuffix("/v1")

    def close(self) -> None:
        for svc in reversed(self.services):
            svc.stop()
        self.services.clear()
        if self._tmp is not None:
            self._tmp.cleanup()


def set_profile(sim_url: str, profile: dict[str, float]) -> None:
    """Switch the running simulator's default latency profile (its control API)."""
    body = orjson.dumps({"model": "*", **profile})
    req = urllib.request.Request(
        f"{sim_url}/_sim/profile", data=body, headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()


def _result(line: str) -> Any:
    """A load generator's ``result {json}`` or ``result @path`` line."""
    rest = line[7:].strip()
    if rest.startswith("@"):
        path = Path(rest[1:])
        data = orjson.loads(path.read_bytes())
        path.unlink()
        return data
    return orjson.loads(rest)


def _result_path(ctx: Context) -> str:
    fd, path = tempfile.mkstemp(prefix="load-", suffix=".json", dir=ctx.tmp)
    os.close(fd)
    return path


def run_load(ctx: Context, job: dict[str, Any], label: str) -> Any:
    """Run one job in a fresh load-generator process pinned away from the target."""
    job = {**job, "result_path": _result_path(ctx)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.load"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=procs.child_env(),
        cwd=procs.ROOT,
    )
    procs.pin(proc.pid, ctx.pinning.load)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        proc.stdin.write(orjson.dumps(job).decode() + "\n")
        proc.stdin.flush()
        for line in proc.stdout:
            if line.startswith("progress "):
                done, total = map(int, line.split()[1:3])
                ctx.display.bar(label, done, total)
            elif line.startswith("result "):
                result = _result(line)
                proc.wait(30)
                return result
        proc.wait(10)
        stderr = proc.stderr.read() if proc.stderr else ""
        raise RuntimeError(f"load generator failed ({proc.returncode}): {stderr[-2000:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


class Held:
    """A ``hold`` job in progress: streams open until ``release``."""

    def __init__(self, ctx: Context, job: dict[str, Any], label: str) -> None:
        self.ctx = ctx
        job = {**job, "result_path": _result_path(ctx)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "benchmarks.load"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=procs.child_env(),
            cwd=procs.ROOT,
        )
        procs.pin(self.proc.pid, ctx.pinning.load)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(orjson.dumps(job).decode() + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith("progress "):
                done, total = map(int, line.split()[1:3])
                ctx.display.bar(label, done, total)
            elif line.startswith("held "):
                return
            elif line.startswith("result "):
                self.release()
                raise RuntimeError(f"could not hold the streams open: {_result(line)}")
        self.release()
        raise RuntimeError("load generator ended before the streams were held")

    def release(self) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        try:
            if self.proc.poll() is None:
                self.proc.stdin.write("release\n")
                self.proc.stdin.flush()
            for line in self.proc.stdout:
                if line.startswith("result "):
                    self.proc.wait(30)
                    result: dict[str, Any] = _result(line)
                    return result
            return {}
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(5)


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return math.nan
    s = sorted(values)
    pos = (len(s) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p99": percentile(values, 99),
        "mean": sum(values) / len(values) if values else math.nan,
        "max": max(values) if values else math.nan,
    }


def ratio(value: float, floor: float) -> float:
    if floor <= 0 or math.isnan(floor) or math.isnan(value):
        return math.nan
    return value / floor


@dataclass(frozen=True, slots=True)
class Check:
    """One target from the issue, judged on this run's numbers."""

    name: str
    goal: str
    value: str
    met: bool

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "goal": self.goal, "value": self.value, "met": self.met}


NOT_JUDGED = "not judged at smoke size"


def checks_table(checks: Iterable[dict[str, Any]], judged: bool = True) -> str:
    """The goal table. A smoke run's samples are too few to judge a goal by, so its last
    column says so instead of a yes or no that reads as a verdict."""
    lines = ["| target | goal | this run | met |", "|---|---|---|---|"]
    for c in checks:
        met = ("yes" if c["met"] else "**no**") if judged else NOT_JUDGED
        lines.append(f"| {c['name']} | {c['goal']} | {c['value']} | {met} |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kib = int(line.split()[1])
    except OSError:
        pass

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", *args], capture_output=True, text=True, cwd=procs.ROOT, timeout=5
            ).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    return {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "commit": git("rev-parse", "--short", "HEAD")
        + ("-dirty" if git("status", "--porcelain", "--untracked-files=no") else ""),
        "cpu": cpu,
        "cores": len(os.sched_getaffinity(0))
        if hasattr(os, "sched_getaffinity")
        else os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "kernel": os.uname().release,
        "python": sys.version.split()[0],
    }


async def stream_once(session: aiohttp.ClientSession, url: str) -> tuple[str, float]:
    """One `auto:fast` stream through the router: the model it chose and the time to the first
    non-empty content delta, in ms (the role chunk's empty content is not a token)."""
    body = {"model": "auto:fast", "stream": True, "messages": [{"role": "user", "content": "go"}]}
    started = time.perf_counter()
    async with session.post(f"{url}/v1/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"proxy answered {resp.status}: {(await resp.read())[:200]!r}")
        model = resp.headers["x-router-model"]
        ttft = None
        async for line in resp.content:
            if ttft is None and line.startswith(b"data: {"):
                choices = orjson.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    ttft = (time.perf_counter() - started) * 1000
    if ttft is None:
        raise RuntimeError("a stream ended without content")
    return model, ttft
