"""The simulator's TLS mode: a certificate made at start, trusted by the clients that are told
to (the proxy's ``ca_file``, the SDK), refused by those that are not."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import openai
import pytest

from proxy.assembly.demo import demo_config
from proxy.config import ConfigError, parse_config
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from proxy.sim.tls import SimTLS, make_sim_tls
from tests.conftest import Sim, StartProxy


@pytest.fixture
async def tls_sim(tmp_path: Path) -> AsyncIterator[tuple[Sim, SimTLS]]:
    tls = make_sim_tls(tmp_path / "tls")
    state = SimState(default=Profile(ttft_ms=5.0, gap_ms=1.0, tokens=4))
    runner, url = await start_sim(state, tls=tls.server)
    yield Sim(state, url), tls
    await runner.cleanup()


async def test_the_sdk_trusting_the_sim_ca_streams_from_it_over_https(
    tls_sim: tuple[Sim, SimTLS],
) -> None:
    sim, tls = tls_sim
    assert sim.url.startswith("https://127.0.0.1:")
    async with openai.DefaultAsyncHttpxClient(verify=tls.client_context()) as http:
        client = openai.AsyncOpenAI(
            base_url=f"{sim.url}/v1", api_key="k", http_client=http, max_retries=0
        )
        stream = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text


async def test_a_client_without_the_ca_is_refused(tls_sim: tuple[Sim, SimTLS]) -> None:
    sim, _ = tls_sim
    async with openai.DefaultAsyncHttpxClient() as http:
        client = openai.AsyncOpenAI(
            base_url=f"{sim.url}/v1", api_key="k", http_client=http, max_retries=0
        )
        with pytest.raises(openai.APIConnectionError):
            await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "hi"}]
            )


async def test_the_proxy_reaches_a_tls_upstream_through_its_ca_file(
    tls_sim: tuple[Sim, SimTLS], start_proxy: StartProxy
) -> None:
    sim, tls = tls_sim
    data = {"probes": {"enabled": False}}
    proxy = await start_proxy(config=demo_config(parse_config(data), sim.url, str(tls.ca_file)))
    client = proxy.client()
    for stream in (False, True):
        resp = await client.chat.completions.with_raw_response.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=stream
        )
        assert resp.headers["x-router-provider"] == "openai"
    assert sim.state.requests["gpt-4o-mini"] == 2


async def test_without_the_ca_file_the_proxy_refuses_the_upstream_certificate(
    tls_sim: tuple[Sim, SimTLS], start_proxy: StartProxy
) -> None:
    sim, _ = tls_sim
    data = {"probes": {"enabled": False}}
    proxy = await start_proxy(config=demo_config(parse_config(data), sim.url))
    with pytest.raises(openai.APIStatusError) as info:
        await proxy.client().chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}]
        )
    assert info.value.status_code == 502
    assert sim.state.requests["gpt-4o-mini"] == 0


def test_a_missing_ca_file_is_a_config_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(ConfigError, match=r"providers\.openai\.ca_file"):
        parse_config({"providers": {"openai": {"ca_file": str(missing)}}})
