"""Real processes for the scale-out tests: ``redis-server`` on a free loopback port, the
simulator as its own process (``python -m proxy.sim``), and ``model-router serve``
instances pointed at both. Everything is stopped by PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import spawn_server, stop_server

OTHER_PROVIDERS = ("anthropic", "google", "openrouter", "deepseek", "bedrock")


def redis_binary() -> str:
    """redis-server's path; in CI (``CI`` set) a missing one fails instead of skipping."""
    found = shutil.which("redis-server")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("redis-server is not installed (.ci/run installs Debian's package)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    return found


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: Any


def http(method: str, url: str, body: Any = None, headers: dict[str, str] | None = None) -> Reply:
    """One request with the standard library; any status comes back as a Reply."""
    data = orjson.dumps(body) if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers=headers or {})
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            raw, status, hdrs = resp.read(), resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        raw, status, hdrs = exc.read(), exc.code, dict(exc.headers)
    try:
        parsed = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        parsed = raw.decode(errors="replace")
    return Reply(status, {k.lower(): v for k, v in hdrs.items()}, parsed)


class RedisServer:
    def __init__(self, binary: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [
                self.binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(5)
        self.proc = None


class SimProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "proxy.sim", "--ttft-ms", "5", "--gap-ms", "1", "--tokens", "4"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if "sim ready on " not in line:
            self.stop()
            raise RuntimeError(f"simulator did not start: {line!r}")
        self.url = line.split("sim ready on ")[1].strip()

    def control(self, what: str, **body: Any) -> None:
        assert http("POST", f"{self.url}/_sim/{what}", body).status == 200

    def requests_for(self, model: str) -> int:
        stats = http("GET", f"{self.url}/_sim/stats").body
        return int(stats["requests"].get(model, 0))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return '"' + value + '"'
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def write_config(path: Path, sim_url: str, tables: dict[str, Any]) -> Path:
    """A config whose only provider is OpenAI's wire pointed at the simulator."""
    lines = ["[providers.openai]", f'base_url = "{sim_url}/v1"', "enabled = true"]
    for name in OTHER_PROVIDERS:
        lines += [f"[providers.{name}]", "enabled = false"]
    for name, table in tables.items():
        if isinstance(table, list):  # an array of tables, e.g. [[keys]]
            for row in table:
                lines.append(f"[[{name}]]")
                lines += [f"{k} = {toml_value(v)}" for k, v in row.items()]
            continue
        lines.append(f"[{name}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in table.items() if not isinstance(v, dict)]
        for sub, values in table.items():
            if isinstance(values, dict):
                lines.append(f'[{name}."{sub}"]')
                lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass
class Instance:
    proc: subprocess.Popen[str]
    url: str
    # The client key status reads send when the config has [[keys]].
    key: str | None = field(default=None)

    def status(self) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {self.key}"} if self.key else {}
        got: dict[str, Any] = http("GET", f"{self.url}/v1/router/status", None, headers).body
        return got

    def cluster(self) -> dict[str, Any]:
        got: dict[str, Any] = self.status()["cluster"]
        return got

    def breaker(self, deployment: str) -> str:
        for row in self.status()["deployments"]:
            if row["deployment"] == deployment:
                return str(row["breaker"])
        raise KeyError(deployment)

    def stop(self) -> None:
        stop_server(self.proc)


def start_instance(
    config: Path, state_dir: Path, extra_env: dict[str, str] | None = None
) -> Instance:
    state_dir.mkdir(parents=True, exist_ok=True)
    env = {"OPENAI_API_KEY": "sim-key", "STATE_DIRECTORY": str(state_dir), **(extra_env or {})}
    proc, url = spawn_server(["serve", "--config", str(config), "--port", "0"], env)
    return Instance(proc, url)


def chat(url: str, body: dict[str, Any], key: str | None = None) -> Reply:
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    return http("POST", f"{url}/v1/chat/completions", body, headers)


def wait_for(check: Any, timeout: float, what: str, step: float = 0.05) -> float:
    """Poll ``check()`` until truthy; returns the seconds it took."""
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(step)
