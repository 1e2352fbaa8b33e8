"""Bedrock's static key pair from systemd credentials (LoadCredential= in the unit), read from
$CREDENTIALS_DIRECTORY and used to sign real requests to the simulated Bedrock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import openai
import pytest
from aiohttp import web

from proxy.app import make_app, start_server
from proxy.config import parse_config
from proxy.service.discovery import aws_credentials_from, enabled_providers
from proxy.sim.bedrock_api import add_bedrock_routes
from proxy.sim.launch import bound_port, make_sim_app
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from tests.conftest import Sim

KEY_ID = "AKIACREDFILE00000001"
SECRET = "cred-file-secret-do-not-log-0002"
NON_AWS = ("openai", "anthropic", "google", "openrouter", "deepseek")


@pytest.fixture
def creds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "credentials"
    directory.mkdir()
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(directory))
    return directory


def test_key_pair_from_credential_files(creds: Path) -> None:
    (creds / "aws_access_key_id").write_text(KEY_ID + "\n")
    (creds / "aws_secret_access_key").write_text(SECRET + "\n")
    assert aws_credentials_from({}, demo=False) == {
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
    }
    assert "bedrock" in enabled_providers(parse_config({}), {})


def test_credential_files_win_over_the_environment(creds: Path) -> None:
    (creds / "aws_access_key_id").write_text(KEY_ID)
    (creds / "aws_secret_access_key").write_text(SECRET)
    (creds / "aws_session_token").write_text("token-3")
    env = {"AWS_ACCESS_KEY_ID": "AKIAENV", "AWS_SECRET_ACCESS_KEY": "env-secret"}
    assert aws_credentials_from(env, demo=False) == {
        "aws_access_key_id": KEY_ID,
        "aws_secret_access_key": SECRET,
        "aws_session_token": "token-3",
    }


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"aws_access_key_id": KEY_ID}, id="id-only"),
        pytest.param({"aws_access_key_id": KEY_ID, "aws_secret_access_key": "\n"}, id="empty"),
    ],
)
def test_half_a_key_pair_enables_nothing(creds: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (creds / name).write_text(text)
    assert aws_credentials_from({}, demo=False) is None
    assert "bedrock" not in enabled_providers(parse_config({}), {})


@pytest.fixture
async def bedrock_sim() -> AsyncIterator[Sim]:
    """The simulator with its Bedrock Converse routes."""
    state = SimState(default=Profile(ttft_ms=5.0, gap_ms=1.0, tokens=8))
    app = make_sim_app(state)
    add_bedrock_routes(app)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Sim(state, f"http://127.0.0.1:{bound_port(site)}")
    await runner.cleanup()


@pytest.fixture
async def bedrock_only(bedrock_sim: Sim, creds: Path) -> AsyncIterator[str]:
    (creds / "aws_access_key_id").write_text(KEY_ID + "\n")
    (creds / "aws_secret_access_key").write_text(SECRET + "\n")
    providers: dict[str, dict[str, object]] = {name: {"enabled": False} for name in NON_AWS}
    providers["bedrock"] = {"endpoint_url": bedrock_sim.url}
    config = parse_config({"probes": {"enabled": False}, "providers": providers})
    # No AWS_* variables: only the credential files. A state directory of its own: without
    # one the usage log is ./model-router.db, the checkout's (the one `make serve` uses).
    state = creds.parent / "state"
    state.mkdir()
    app = make_app(config, environ={"STATE_DIRECTORY": str(state)})
    runner, port = await start_server(app, "127.0.0.1", 0)
    yield f"http://127.0.0.1:{port}"
    status = f"http://127.0.0.1:{port}/v1/router/status"
    async with aiohttp.ClientSession() as session, session.get(status) as resp:
        usage_path = (await resp.json())["usage_log"]["path"]
    await runner.cleanup()
    assert Path(usage_path).parent == state, usage_path


async def test_bedrock_requests_are_signed_with_the_credential_files(
    bedrock_only: str, bedrock_sim: Sim, caplog: pytest.LogCaptureFixture
) -> None:
    async with openai.AsyncOpenAI(
        base_url=f"{bedrock_only}/v1", api_key="client", max_retries=0
    ) as client:
        answer = await client.chat.completions.create(
            model="qwen3-32b",
            messages=[{"role": "user", "content": "hello"}],
        )
    assert answer.choices[0].message.content
    auth = bedrock_sim.state.last_headers["qwen.qwen3-32b-v1:0"]["Authorization"]
    assert auth.startswith(f"AWS4-HMAC-SHA256 Credential={KEY_ID}/")
    assert SECRET not in caplog.text
