"""The processes a benchmark starts and stops by PID (simulator, ``model-router serve``, the
forwarder, the load generator), which cores each is pinned to, and their memory readings.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

ROOT = Path(__file__).resolve().parent.parent
# Provider families that speak the OpenAI wire; all of them are pointed at the simulator.
OPENAI_WIRE = {
    "openai": "OPENAI_API_KEY",
    "google": "GEMINI_API_KEY",
    "openrouter": "OPENROUTER_API_KEY",
    "deepseek": "DEEPSEEK_API_KEY",
}
# Anything that would enable another provider in the child is removed from its environment.
_SCRUB = (
    "ANTHROPIC_API_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
    "CREDENTIALS_DIRECTORY",
    *OPENAI_WIRE.values(),
)


@dataclass(frozen=True, slots=True)
class Pinning:
    """Cores per role; None means not pinned (the OS does not allow it, or it was turned off)."""

    target: frozenset[int] | None
    sim: frozenset[int] | None
    load: frozenset[int] | None
    note: str

    @classmethod
    def plan(cls, enabled: bool = True) -> Pinning:
        if not enabled:
            return cls(None, None, None, "not pinned (--no-pin)")
        if not hasattr(os, "sched_getaffinity"):
            return cls(None, None, None, "not pinned (this OS has no sched_setaffinity)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return cls(None, None, None, "not pinned (one core available)")
        target = frozenset(cpus[:1])
        if len(cpus) == 2:
            rest = frozenset(cpus[1:])
            note = (
                f"target under test pinned to core {cpus[0]}; simulator and load generator "
                f"share core {cpus[1]}"
            )
            return cls(target, rest, rest, note)
        note = (
            f"target under test pinned to core {cpus[0]}, simulator to core {cpus[1]}, "
            f"load generator to cores {','.join(map(str, cpus[2:]))}"
        )
        return cls(target, frozenset(cpus[1:2]), frozenset(cpus[2:]), note)


def pin(pid: int, cpus: frozenset[int] | None) -> None:
    if cpus is not None:
        os.sched_setaffinity(pid, cpus)


def rss_kib(pid: int) -> int:
    """Resident set size from /proc/PID/status (VmRSS, in KiB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (from /proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _SCRUB}
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if "PYTHONPATH" in env else "")
    env.update(extra or {})
    return env


def _drain(stream: IO[str]) -> None:
    for _ in stream:
        pass


@dataclass
class Service:
    """A long-running child that printed ``... ready on URL``; stopped by its PID."""

    name: str
    proc: subprocess.Popen[str]
    url: str
    startup_s: float
    log_path: Path | None = None
    _threads: list[threading.Thread] = field(default_factory=list)
    state_dir: Path | None = None  # made for it by spawn; removed by stop

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        for thread in self._threads:
            thread.join(2)  # the drain ends at the pipe's EOF
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        if self.state_dir is not None:
            shutil.rmtree(self.state_dir, ignore_errors=True)


def spawn(
    name: str,
    argv: list[str],
    *,
    cpus: frozenset[int] | None,
    env: dict[str, str] | None = None,
    log_path: Path | None = None,
    timeout: float = 30.0,
    cwd: Path = ROOT,
) -> Service:
    """Start ``argv`` pinned to ``cpus`` and wait for its ready line; stderr goes to
    ``log_path`` (production logs are kept: writing them is part of the cost)."""
    env = dict(env or {})
    state_dir = None
    if "STATE_DIRECTORY" not in env:
        # A router without it writes ./model-router.db, and children run in the checkout:
        # benchmark traffic would land in the usage log `make serve` and `report` use there.
        state_dir = Path(tempfile.mkdtemp(prefix=f"model-router-{name}-"))
        env["STATE_DIRECTORY"] = str(state_dir)
    err: IO[str] | int = subprocess.DEVNULL
    if log_path is not None:
        err = open(log_path, "a", encoding="utf-8")  # noqa: SIM115 (closed with the child)
    started = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdout=subprocess.PIPE,
        stderr=err,
        stdin=subprocess.DEVNULL,
        text=True,
        env=child_env(env),
        cwd=cwd,
    )
    if not isinstance(err, int):
        err.close()
    pin(proc.pid, cpus)
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = started + timeout
    try:
        while time.perf_counter() < deadline:
            if sel.select(timeout=0.05):
                line = proc.stdout.readline()
                if "ready on " in line:
                    elapsed = time.perf_counter() - started
                    url = line.split("ready on ")[1].split()[0]
                    drain = threading.Thread(target=_drain, args=(proc.stdout,), daemon=True)
                    drain.start()
                    return Service(name, proc, url, elapsed, log_path, [drain], state_dir)
                if not line and proc.poll() is not None:
                    break
            elif proc.poll() is not None:
                break
    finally:
        sel.close()
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
    if state_dir is not None:
        shutil.rmtree(state_dir, ignore_errors=True)
    where = f"; see {log_path}" if log_path else ""
    raise RuntimeError(f"{name} did not become ready (exit code {proc.returncode}){where}")


def sim_argv(ttft_ms: float = 0.0, gap_ms: float = 0.0, tokens: int = 16) -> list[str]:
    return [
        sys.executable,
        "-m",
        "proxy.sim",
        "--ttft-ms",
        f"{ttft_ms:g}",
        "--gap-ms",
        f"{gap_ms:g}",
        "--tokens",
        str(tokens),
    ]


def forwarder_argv(upstream: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.forwarder", "--upstream", upstream]


def router_config(sim_url: str) -> str:
    """A production config (probes on, as a deployment would run) whose OpenAI-wire
    providers all point at the simulator."""
    lines = ["# model-router benchmark config: every OpenAI-wire provider is the simulator"]
    for name in OPENAI_WIRE:
        lines += [f"[providers.{name}]", f'base_url = "{sim_url}/v1"', ""]
    # The load generator is one address standing for many clients (1,000 held streams in
    # the memory benchmark): the per-address share would cap it at 256.
    lines += ["[limits]", "max_connections_per_address = 2048", ""]
    return "\n".join(lines)


@contextlib.contextmanager
def private_state() -> Iterator[str]:
    """A ``STATE_DIRECTORY`` for a router run inside a benchmark: without one its usage log is
    ./model-router.db, the checkout's own (the one `make serve` and `report` use)."""
    with tempfile.TemporaryDirectory(prefix="model-router-bench-") as state:
        yield state


def router_env() -> dict[str, str]:
    return dict.fromkeys(OPENAI_WIRE.values(), "bench-upstream-key")


def router_argv(config_path: Path) -> list[str]:
    return [sys.executable, "-m", "proxy", "serve", "--config", str(config_path), "--port", "0"]
