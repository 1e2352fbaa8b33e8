"""The README's worked examples, run as written: the local-server config (the simulator
stands in for Ollama) and the demo's fault walk-through. Both take their config and
commands out of README.md, so the README cannot drift from what is tested."""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.conftest import Sim, StartProxy, spawn_server, stop_server

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text(encoding="utf-8")
EXE = str(Path(sys.executable).parent / "model-router")


def code_block(lang: str, containing: str) -> str:
    """The README's one ```lang block that contains ``containing``."""
    blocks = re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)
    found = [b for b in blocks if containing in b]
    assert len(found) == 1, f"expected one {lang} block with {containing!r}, got {len(found)}"
    return found[0]


def no_credentials() -> dict[str, str]:
    return {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("AWS_")
    }


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


@pytest.fixture
def sim_process() -> Iterator[str]:
    """The simulator as its own process, standing in for a local server."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "proxy.sim", "--port", "0", "--tokens", "6", "--keyless"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "sim ready on " in line, line
        yield line.split("sim ready on ")[1].strip()
    finally:
        proc.terminate()
        proc.wait(10)
        if proc.stdout is not None:
            proc.stdout.close()


# --- a local OpenAI-compatible server ---------------------------------------------------


def test_readme_local_server_config_serves_chat_and_fim_without_a_key(
    sim_process: str, tmp_path: Path
) -> None:
    snippet = code_block("toml", "[providers.ollama]")
    data = tomllib.loads(snippet)
    assert data["providers"]["ollama"]["enabled"] is True  # keyless: the README says why
    (model,) = data["models"]
    upstream_id = model["deployments"][0]["upstream_id"]
    assert "fim" in model["capabilities"]
    # The simulator plays Ollama: only the address changes.
    config = snippet.replace("http://127.0.0.1:11434/v1", f"{sim_process}/v1")
    assert config != snippet
    path = tmp_path / "local.toml"
    path.write_text(config + f'\n[usage]\npath = "{tmp_path}/usage.db"\n')
    env = {**no_credentials(), "PYTHONUNBUFFERED": "1"}

    checked = subprocess.run(
        [EXE, "check-config", str(path)], capture_output=True, text=True, env=env, timeout=60
    )
    assert checked.returncode == 0, checked.stderr
    assert "providers with credentials: ollama" in checked.stdout
    assert model["id"] in checked.stdout

    proc, url = spawn_server(["serve", "--config", str(path), "--port", "0"], env)
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    try:
        chat = client.chat.completions.with_raw_response.create(
            model=model["id"], messages=[{"role": "user", "content": "hi"}]
        )
        assert chat.headers["x-router-provider"] == "ollama"
        assert chat.parse().model == model["id"]
        assert chat.parse().choices[0].message.content
        # FIM, as the README's curl line sends it.
        curl = code_block("sh", "model-router check-config local.toml").split("\n")
        fim_body = next(
            json.loads(shlex.split(line)[1])
            for line in curl
            if line.strip().startswith("-d") and model["id"] in line and "suffix" in line
        )
        done = client.completions.with_raw_response.create(**fim_body)
        assert done.headers["x-router-provider"] == "ollama"
        assert done.parse().choices[0].text and done.parse().model == model["id"]
        stream = client.completions.create(**fim_body, stream=True)
        assert "".join(c.choices[0].text for c in stream if c.choices)
        # An auto route reaches it too (price 0 wins cheap in its tier).
        auto = client.chat.completions.with_raw_response.create(
            model="auto:economy:cheap", messages=[{"role": "user", "content": "hi"}]
        )
        assert auto.headers["x-router-model"] == model["id"]
    finally:
        client.close()
        stop_server(proc)
    asked = get_json(f"{sim_process}/_sim/stats")["requests"]
    assert asked.get(upstream_id, 0) >= 4  # under the server's own name for the model


# --- the demo's fault walk-through ------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_readme_demo_fault_walkthrough_shows_fallback_and_an_open_breaker(
    tmp_path: Path,
) -> None:
    walk = code_block("sh", "model-router sim-fault gpt-4o-mini --sim-port 9100\n")
    commands = [
        shlex.split(line) for line in walk.splitlines() if line.startswith("model-router sim-fault")
    ]
    assert len(commands) == 2  # break it, heal it
    body = next(
        json.loads(shlex.split(line)[1])
        for line in walk.splitlines()
        if line.strip().startswith("-d")
    )
    sim_port = free_port()

    def sim_fault(argv: list[str]) -> str:
        assert argv[0] == "model-router"
        args = [str(sim_port) if a == "9100" else a for a in argv[1:]]
        out = subprocess.run([EXE, *args], capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        return out.stdout

    proc, url = spawn_server(
        ["serve", "--demo", "--port", "0", "--sim-port", str(sim_port)],
        # The README's own pace (scale 1): OpenAI's deployment (450 ms nominal) stays clearly
        # ahead of OpenRouter's (540 ms) on a loaded test box; at a small scale the pinned
        # model's first choice can flip and the fault is never met.
        {"STATE_DIRECTORY": str(tmp_path)},
    )
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)

    def ask() -> Any:
        return client.chat.completions.with_raw_response.create(**body).headers

    def breakers() -> dict[str, str]:
        rows = get_json(f"{url}/v1/router/status")["deployments"]
        return {r["deployment"]: r["breaker"] for r in rows if r["model"] == body["model"]}

    try:
        assert ask()["x-router-provider"] == "openai"  # healthy: the faster deployment
        assert "now fails every request with HTTP 500" in sim_fault(commands[0])
        first = ask()
        assert (first["x-router-provider"], first["x-router-attempts"]) == ("openrouter", "2")
        assert first["x-router-model"] == "gpt-4o-mini"
        for _ in range(4):
            assert ask()["x-router-provider"] == "openrouter"
        assert breakers() == {
            "gpt-4o-mini@openai": "open",
            "gpt-4o-mini@openrouter": "closed",
        }
        while_open = ask()
        assert (while_open["x-router-provider"], while_open["x-router-attempts"]) == (
            "openrouter",
            "1",
        )
        assert "answers normally again" in sim_fault(commands[1])
        # The breaker's first opening lasts about 5 s; then a trial, and two good answers.
        deadline = time.monotonic() + 30
        while breakers()["gpt-4o-mini@openai"] != "closed" and time.monotonic() < deadline:
            ask()
            time.sleep(0.5)
        assert breakers()["gpt-4o-mini@openai"] == "closed"
        assert ask()["x-router-provider"] == "openai"
        assert "every fault cleared" in sim_fault(
            ["model-router", "sim-fault", "--sim-port", "9100", "--reset"]
        )
    finally:
        client.close()
        stop_server(proc)


def test_sim_fault_without_a_simulator_says_how_to_start_one() -> None:
    port = free_port()
    out = subprocess.run(
        [EXE, "sim-fault", "gpt-4o-mini", "--sim-port", str(port)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2
    assert f"model-router serve --demo --sim-port {port}" in out.stderr
    assert "Traceback" not in out.stderr
    unnamed = subprocess.run(
        [EXE, "sim-fault", "--sim-port", str(port)], capture_output=True, text=True, timeout=30
    )
    assert unnamed.returncode == 2 and "name a model" in unnamed.stderr


async def test_a_keyless_provider_sends_no_authorization_header(
    start_proxy: StartProxy, sim: Sim
) -> None:
    data = tomllib.loads(code_block("toml", "[providers.ollama]"))
    (model,) = data["models"]
    sim.state.keyless = True
    proxy = await start_proxy(data)
    done = await proxy.client().chat.completions.create(
        model=model["id"], messages=[{"role": "user", "content": "hi"}]
    )
    assert done.model == model["id"]
    headers = {k.lower() for k in sim.state.last_headers[model["deployments"][0]["upstream_id"]]}
    assert "authorization" not in headers  # not even an empty "Bearer "


# --- the repository stands alone ----------------------------------------------------------

SKIP_DIRS = {"node_modules", "__pycache__", "out"}
TEXT_SUFFIXES = {".py", ".md", ".toml", ".txt", ".yaml", ".yml", ".service", ".cfg", ""}


def repository_text_files() -> Iterator[Path]:
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        # Dot-folders are tool caches (.hypothesis, .pytest_cache, ...), not the project.
        folders = rel.parts[:-1]
        if any(p in SKIP_DIRS or p.startswith(".") or p.endswith(".egg-info") for p in folders):
            continue
        if rel.parts[:2] == ("benchmarks", "data") or rel.parts[:2] == ("tests", "reference"):
            continue  # third-party data, with its own notices
        if path.name.startswith(".") and path.name != ".gitignore":
            continue  # .git (a file in a worktree), editor and tool state
        if path.is_file() and path.suffix in TEXT_SUFFIXES and rel.parts[0] != ".ci":
            yield path


def test_nothing_in_the_repository_points_outside_it() -> None:
    # .ci/run is left out: it is the guard that checks no shared/ folder sits beside a copy.
    outside = re.compile(r"\.\./shared|shared/reference|/work/|DESIGN\.md|STYLE\.md")
    hits = []
    for path in repository_text_files():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        if path.name == "test_readme_examples.py":
            continue  # this test spells the patterns
        hits += [f"{path.relative_to(ROOT)}: {m.group(0)}" for m in outside.finditer(text)]
    assert not hits


def test_license_file_is_the_mit_licence_pyproject_declares() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert pyproject["project"]["license"] == "MIT"
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "WITHOUT WARRANTY OF ANY KIND" in text


def test_sim_fault_warns_when_no_deployment_calls_its_model_that_name() -> None:
    """A catalog id whose upstream id differs, or a typo, would be "failed" with no effect."""
    port = free_port()

    def run(model: str) -> str:
        argv = [EXE, "sim-fault", model, "--sim-port", str(port)]
        return subprocess.run(argv, capture_output=True, text=True, timeout=30).stderr

    assert "did you mean deepseek-chat" in run("deepseek-v3.2")
    assert "did you mean gpt-4o-mini" in run("gpt4o-mini")
    assert "warning" not in run("gpt-4o-mini") and "warning" not in run("*")


def test_make_serve_takes_the_walkthroughs_sim_port() -> None:
    """The walk-through says `make serve` can stand in for its serve command: it must pass the
    simulator's port on, or `sim-fault --sim-port 9100` finds no simulator."""
    walk = code_block("sh", "model-router serve --demo --sim-port 9100")
    make = re.search(r"make serve( SIM_PORT=\d+)?", walk)
    assert make is not None and make.group(1) == " SIM_PORT=9100", walk
    dry = subprocess.run(
        ["make", "-n", "serve", "SIM_PORT=9100"],
        cwd=Path(__file__).parent.parent,
        capture_output=True,
        text=True,
        timeout=30,
    )
    serve = [line for line in dry.stdout.splitlines() if "model-router serve" in line]
    assert serve and "--sim-port 9100" in serve[-1], dry.stdout
    plain = subprocess.run(
        ["make", "-n", "serve"], cwd=Path(__file__).parent.parent, capture_output=True, text=True
    )
    assert "--sim-port" not in plain.stdout
