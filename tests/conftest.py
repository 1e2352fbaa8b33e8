"""Fixtures: the simulated providers and the real proxy app, both on 127.0.0.1 ephemeral ports,
served with the production server settings (``proxy.app.start_server``)."""

from __future__ import annotations

import os
import selectors
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import openai
import pytest
from aiohttp import web

from benchmarks import procs
from proxy.app import make_app, start_server
from proxy.assembly.demo import demo_config
from proxy.config import Config, parse_config
from proxy.serve.state import ROUTER, Router
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState

# Keys the proxy holds for its upstreams in tests; a test searches logs for them.
UPSTREAM_ENV = {
    "OPENAI_API_KEY": "sk-test-upstream-openai-0001",
    "ANTHROPIC_API_KEY": "sk-ant-test-upstream-0002",
    "GEMINI_API_KEY": "gm-test-upstream-0003",
    "OPENROUTER_API_KEY": "sk-or-test-upstream-0004",
    "DEEPSEEK_API_KEY": "sk-ds-test-upstream-0005",
    "MISTRAL_API_KEY": "mistral-test-upstream-0008",
    "AWS_ACCESS_KEY_ID": "AKIATESTUPSTREAM0006",
    "AWS_SECRET_ACCESS_KEY": "test-secret-upstream-0007",
}


@dataclass
class Sim:
    state: SimState
    url: str


@dataclass
class Proxy:
    url: str
    app: web.Application
    sim: Sim
    clients: list[openai.AsyncOpenAI] = field(default_factory=list)

    @property
    def router(self) -> Router:
        return self.app[ROUTER].current

    def client(self, **kw: Any) -> openai.AsyncOpenAI:
        """An SDK client for this proxy; closed when the test's proxy stops."""
        kw.setdefault("max_retries", 0)
        client = openai.AsyncOpenAI(base_url=f"{self.url}/v1", api_key="client-key", **kw)
        self.clients.append(client)
        return client


@pytest.fixture
async def sim() -> AsyncIterator[Sim]:
    state = SimState(scale=1.0, default=Profile(ttft_ms=5.0, gap_ms=1.0, tokens=8))
    runner, url = await start_sim(state)
    yield Sim(state, url)
    await runner.cleanup()


def config_for(sim_url: str, data: dict[str, Any] | None = None) -> Config:
    data = dict(data or {})
    data.setdefault("probes", {"enabled": False})
    return demo_config(parse_config(data), sim_url)


StartProxy = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def start_proxy(sim: Sim, tmp_path: Path) -> AsyncIterator[StartProxy]:
    runners: list[web.AppRunner] = []
    proxies: list[Proxy] = []

    async def start(
        data: dict[str, Any] | None = None,
        *,
        config: Config | None = None,
        config_path: str | None = None,
    ) -> Proxy:
        cfg = config or config_for(sim.url, data)
        # As under systemd: the usage log goes to $STATE_DIRECTORY, here the test's tmp dir.
        app = make_app(
            cfg, environ={**UPSTREAM_ENV, "STATE_DIRECTORY": str(tmp_path)}, config_path=config_path
        )
        runner, port = await start_server(app, "127.0.0.1", 0)
        runners.append(runner)
        proxies.append(Proxy(f"http://127.0.0.1:{port}", app, sim))
        return proxies[-1]

    yield start
    for p in proxies:
        for client in p.clients:
            await client.close()
    for runner in reversed(runners):
        await runner.cleanup()


@pytest.fixture
async def proxy(start_proxy: StartProxy) -> Proxy:
    return await start_proxy()


def spawn_server(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 20.0,
    log_path: str | None = None,
    preexec_fn: Callable[[], object] | None = None,
) -> tuple[subprocess.Popen[str], str]:
    """Start ``model-router`` as a subprocess and wait for its ready line; returns (proc, url).

    Its log (stderr) goes to ``log_path`` (a temp file by default), never to a pipe nobody
    drains: a chatty server would block on a full pipe.
    """
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    made_state = None
    if "STATE_DIRECTORY" not in full_env:
        # Else its usage log is ./model-router.db: the checkout's, the one `make serve` uses.
        made_state = full_env["STATE_DIRECTORY"] = tempfile.mkdtemp(prefix="model-router-state-")
    if log_path is None:
        fd, log_path = tempfile.mkstemp(prefix="model-router-", suffix=".log")
        os.close(fd)
    # Append, as systemd's ``StandardError=append:`` does: every write lands at the end of the
    # file, so a test that fills the disk can also fill the log's last page (see box faults).
    with open(log_path, "a") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "proxy", *args],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=full_env,
            preexec_fn=preexec_fn,
        )
    proc.log_path = log_path  # type: ignore[attr-defined]
    proc.made_state = made_state  # type: ignore[attr-defined]
    assert proc.stdout is not None
    sel = selectors.DefaultSelector()
    sel.register(proc.stdout, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                with open(log_path) as fh:
                    raise RuntimeError(f"server exited {proc.returncode}: {fh.read()[-3000:]}")
            if sel.select(timeout=0.2):
                line = proc.stdout.readline()
                if "ready on " in line:
                    return proc, line.split("ready on ")[1].split()[0]
        raise RuntimeError("server did not become ready")
    except BaseException:
        stop_server(proc)
        raise
    finally:
        sel.close()


def server_log(proc: subprocess.Popen[str]) -> str:
    """Everything a server started by ``spawn_server`` has logged so far."""
    with open(proc.log_path) as fh:  # type: ignore[attr-defined]
        return fh.read()


def stop_server(proc: subprocess.Popen[str]) -> int:
    """SIGTERM, then SIGKILL if it lingers; closes the pipe; returns the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    if proc.stdout is not None:
        proc.stdout.close()
    made_state = getattr(proc, "made_state", None)
    if made_state is not None:
        shutil.rmtree(made_state, ignore_errors=True)
    return proc.returncode


@pytest.fixture(scope="module")
def demo_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``model-router serve --demo`` as a subprocess, latencies scaled down for speed."""
    state_dir = str(tmp_path_factory.mktemp("state"))
    proc, url = spawn_server(
        ["serve", "--demo", "--port", "0"],
        {"MODEL_ROUTER_DEMO_SCALE": "0.02", "STATE_DIRECTORY": state_dir},
    )
    try:
        yield url
    finally:
        stop_server(proc)


def with_server(config: Config, **changes: Any) -> Config:
    return replace(config, server=replace(config.server, **changes))


@pytest.fixture
def sim_process() -> Iterator[procs.Service]:
    """The simulator as its own process (``model-router sim``), for routers run as subprocesses
    that a test stops, pauses or starves."""
    sim = procs.spawn("sim", procs.sim_argv(ttft_ms=0, gap_ms=0, tokens=8), cpus=None)
    try:
        yield sim
    finally:
        sim.stop()
