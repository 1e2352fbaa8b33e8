"""Fill-in-the-middle on every wire the autocomplete models speak, through the OpenAI SDK's
``completions.create(prompt=..., suffix=...)``: Mistral's FIM endpoint (Codestral), DeepSeek's
beta completions, and local OpenAI-compatible servers (Ollama takes ``suffix``; vLLM and
llama.cpp get the prompt in the model's FIM template)."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from proxy.providers.fim import TEMPLATES
from proxy.serve.health import SNAPSHOT_MAX_AGE_S
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

PROMPT = "def add(a, b):\n    return "
SUFFIX = "\n\nprint(add(1, 2))"
LOCAL = ("ollama", "vllm", "llamacpp")


def only_local(provider: str) -> dict[str, Any]:
    """Config data with one local server enabled (the demo enables all that are not off)."""
    return {
        "probes": {"enabled": False},
        "providers": {p: {"enabled": False} for p in LOCAL if p != provider},
    }


async def fim_both_ways(proxy: Proxy, model: str) -> tuple[Any, str, dict[str, str]]:
    """One non-streamed and one streamed FIM request; the first answer, the streamed text
    and the streamed response's headers."""
    client = proxy.client()
    comp = await client.completions.create(model=model, prompt=PROMPT, suffix=SUFFIX)
    assert comp.choices[0].text
    assert comp.usage is not None and comp.usage.completion_tokens > 0
    assert_valid("CreateCompletionResponse", comp.model_dump(exclude_unset=True))
    raw = await client.completions.with_raw_response.create(
        model=model,
        prompt=PROMPT,
        suffix=SUFFIX,
        stream=True,
        stream_options={"include_usage": True},
    )
    stream = raw.parse()
    texts, usage = [], None
    async for chunk in stream:
        assert chunk.object == "text_completion"
        texts.extend(c.text for c in chunk.choices)
        usage = chunk.usage or usage
    assert usage is not None and usage.completion_tokens > 0
    return comp, "".join(texts), dict(raw.headers)


async def test_codestral_goes_to_mistrals_fim_endpoint(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"probes": {"enabled": False}})
    _, text, headers = await fim_both_ways(proxy, "codestral")
    assert text
    assert headers["x-router-provider"] == "mistral"
    body = proxy.sim.state.last_body["codestral-latest"]
    # Mistral refuses fields it does not know: only its own went out.
    assert body["prompt"] == PROMPT and body["suffix"] == SUFFIX
    assert "stream_options" not in body
    assert proxy.sim.state.requests["codestral-latest"] == 2


async def test_a_field_mistral_fim_cannot_express_is_a_400_naming_it(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"probes": {"enabled": False}})
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(
            model="codestral", prompt=PROMPT, suffix=SUFFIX, logprobs=2
        )
    assert info.value.body["param"] == "logprobs"  # type: ignore[index]
    assert proxy.sim.state.requests["codestral-latest"] == 0


async def test_deepseek_fim_goes_to_its_beta_completions_with_the_suffix(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"probes": {"enabled": False}})
    _, text, headers = await fim_both_ways(proxy, "deepseek-v3.2")
    assert text and headers["x-router-provider"] == "deepseek"
    assert proxy.sim.state.last_body["deepseek-chat"]["suffix"] == SUFFIX


@pytest.mark.parametrize("model", ["qwen2.5-coder-7b", "starcoder2-7b"])
@pytest.mark.parametrize("provider", LOCAL)
async def test_local_fim_models_on_each_local_server(
    start_proxy: StartProxy, provider: str, model: str
) -> None:
    proxy = await start_proxy(only_local(provider))
    dep = next(d for d in proxy.router.catalog.deployments() if d.key == f"{model}@{provider}")
    if dep.fim_template:
        # As vLLM and llama.cpp do: a suffix is refused, so it must not be sent.
        proxy.sim.state.no_suffix.add(dep.upstream_id)
    _, text, headers = await fim_both_ways(proxy, model)
    assert text
    assert (headers["x-router-model"], headers["x-router-provider"]) == (model, provider)
    body = proxy.sim.state.last_body[dep.upstream_id]
    if dep.fim_template:
        assert "suffix" not in body
        assert body["prompt"] == TEMPLATES[dep.fim_template].format(prefix=PROMPT, suffix=SUFFIX)
    else:
        assert (body["prompt"], body["suffix"]) == (PROMPT, SUFFIX)


async def test_local_servers_are_off_unless_a_config_enables_them(
    start_proxy: StartProxy,
) -> None:
    from proxy.config import parse_config
    from proxy.service.discovery import enabled_providers

    live = enabled_providers(parse_config({}), {})
    assert not set(LOCAL) & set(live)
    configured = parse_config({"providers": {"ollama": {"enabled": True}}})
    assert "ollama" in enabled_providers(configured, {})


async def test_auto_fast_fim_picks_the_fim_deployment_with_the_lowest_measured_ttft(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(only_local("ollama"))
    table = proxy.router.health.table
    fim_keys = [
        d.key for m in proxy.router.catalog.models if "fim" in m.capabilities for d in m.deployments
    ]
    for fastest in ("codestral@mistral", "starcoder2-7b@ollama"):
        for key in fim_keys:
            for _ in range(20):
                table.observe(key, 60.0 if key == fastest else 900.0, "live")
        await asyncio.sleep(SNAPSHOT_MAX_AGE_S * 2)  # TTFT changes reach routing this late
        raw = await proxy.client().completions.with_raw_response.create(
            model="auto:fast", prompt=PROMPT, suffix=SUFFIX, max_tokens=16
        )
        model, provider = fastest.split("@")
        assert (raw.headers["x-router-model"], raw.headers["x-router-provider"]) == (
            model,
            provider,
        )


def test_an_unknown_fim_template_is_a_config_error() -> None:
    from proxy.config import ConfigError, parse_config
    from proxy.sim.catalogs import sim_model

    model = sim_model("m")
    model["deployments"][0]["fim_template"] = "no-such-model"
    with pytest.raises(ConfigError, match=r"fim_template: expected one of"):
        parse_config({"models": [model]})


async def test_a_chat_model_on_v1_completions_is_told_where_it_answers(
    start_proxy: StartProxy,
) -> None:
    """Without a suffix too: a plain text completion to a chat-only model is a 400 naming the
    model and the endpoint it answers on, not a word ("fim") the request never used."""
    proxy = await start_proxy({"probes": {"enabled": False}})
    for extra in ({}, {"suffix": SUFFIX}):
        with pytest.raises(openai.BadRequestError) as info:
            await proxy.client().completions.create(model="gpt-4o", prompt=PROMPT, **extra)
        body = info.value.body
        assert isinstance(body, dict) and body["param"] == "model"
        assert body["message"].startswith("model 'gpt-4o' does not support /v1/completions")
        assert "/v1/chat/completions" in body["message"]
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(model="auto:premium", prompt=PROMPT)
    assert "supports /v1/completions" in str(info.value)
    assert proxy.sim.state.requests.total() == 0
