"""The answer's ``model`` is the catalog id, the one x-router-model names, on every wire
(OpenAI-compatible under another name, Anthropic, Bedrock), streaming and not, and in
answers replayed from the cache; never the provider's own name for the model."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import StartProxy

PROVIDERS = ("openai", "anthropic", "google", "openrouter", "deepseek", "bedrock")
MSG: list[Any] = [{"role": "user", "content": "name yourself"}]
WIRES = [
    # (provider, pinned name, catalog id, the provider's id for it)
    pytest.param("openai", "gpt-4o-mini", "gpt-4o-mini", "gpt-4o-mini", id="openai-same-id"),
    pytest.param(
        "deepseek", "deepseek-chat", "deepseek-v3.2", "deepseek-chat", id="deepseek-alias"
    ),
    pytest.param(
        "openrouter",
        "claude-opus-4-5",
        "claude-opus-4-5",
        "anthropic/claude-opus-4.5",
        id="openrouter",
    ),
    pytest.param(
        "anthropic",
        "claude-haiku-4-5",
        "claude-haiku-4-5",
        "claude-haiku-4-5-20251001",
        id="anthropic",
    ),
    pytest.param(
        "bedrock",
        "claude-haiku-4-5",
        "claude-haiku-4-5",
        "us.anthropic.claude-haiku-4-5-20251001-v1:0",
        id="bedrock",
    ),
]


@pytest.mark.parametrize(("provider", "pinned", "catalog_id", "upstream_id"), WIRES)
async def test_answer_names_the_catalog_model_on_every_wire(
    start_proxy: StartProxy, provider: str, pinned: str, catalog_id: str, upstream_id: str
) -> None:
    only = {p: {"enabled": p == provider} for p in PROVIDERS}
    proxy = await start_proxy({"providers": only})
    client = proxy.client()

    raw = await client.chat.completions.with_raw_response.create(model=pinned, messages=MSG)
    assert raw.headers["x-router-provider"] == provider
    assert raw.headers["x-router-model"] == catalog_id
    assert raw.parse().model == catalog_id
    # The upstream was asked under its own name.
    assert upstream_id in proxy.sim.state.requests

    stream = await client.chat.completions.create(
        model=pinned, messages=MSG, stream=True, stream_options={"include_usage": True}
    )
    models = {chunk.model async for chunk in stream}
    assert models == {catalog_id}


async def test_replayed_and_streamed_cache_hits_name_the_catalog_model(
    start_proxy: StartProxy,
) -> None:
    only = {p: {"enabled": p == "deepseek"} for p in PROVIDERS}
    proxy = await start_proxy({"providers": only})
    client = proxy.client()
    first = await client.chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=MSG, temperature=0
    )
    assert first.parse().model == "deepseek-v3.2"
    again = await client.chat.completions.with_raw_response.create(
        model="deepseek-chat", messages=MSG, temperature=0
    )
    assert again.headers["x-router-cache"] == "hit"
    assert again.parse().model == "deepseek-v3.2"
    stream = await client.chat.completions.create(
        model="deepseek-chat", messages=MSG, temperature=0, stream=True
    )
    assert {chunk.model async for chunk in stream} == {"deepseek-v3.2"}
    assert sum(proxy.sim.state.requests.values()) == 1  # both answers came from the cache


async def test_fim_completions_name_the_catalog_model_streaming_and_not(
    start_proxy: StartProxy,
) -> None:
    only = {p: {"enabled": p == "deepseek"} for p in PROVIDERS}
    proxy = await start_proxy({"providers": only})
    client = proxy.client()
    done = await client.completions.create(model="deepseek-chat", prompt="def f(", suffix=")")
    assert done.model == "deepseek-v3.2"
    stream = await client.completions.create(
        model="deepseek-chat", prompt="def f(", suffix=")", stream=True
    )
    assert {chunk.model async for chunk in stream} == {"deepseek-v3.2"}
