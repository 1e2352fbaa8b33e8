"""GET /v1/models/{id} with the OpenAI SDK, and names that must not serve another model:
retired names are gone from the bundled catalog, an unknown pin lists the nearest ids, an
operator may still alias an old name in config."""

from __future__ import annotations

import aiohttp
import openai
import pytest

from proxy.config import load_config
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

MSG = [{"role": "user", "content": "hi"}]

# Names the bundled catalog once mapped to a different (newer, differently priced) model.
RETIRED = [
    "gpt-3.5-turbo",
    "gpt-3.5-turbo-0125",
    "gpt-4o-2024-05-13",
    "gpt-4o-2024-11-20",
    "claude-3-5-haiku",
    "claude-3-5-haiku-20241022",
    "claude-3-5-sonnet",
    "claude-3-7-sonnet",
    "claude-sonnet-4",
    "claude-opus-4",
    "deepseek-v3",
    "deepseek/deepseek-r1",
    "moonshotai/kimi-k2",
    "mistralai/mistral-large",
]


@pytest.mark.parametrize(
    "name, expected_id",
    [
        pytest.param("gpt-4o-mini", "gpt-4o-mini", id="catalog-id"),
        pytest.param("openai/gpt-4o", "gpt-4o", id="alias-with-slash"),
        pytest.param("gpt-oss-120b-1:0", "gpt-oss-120b", id="alias-with-colon"),
        pytest.param("auto:premium:coding", "auto:premium:coding", id="virtual"),
    ],
)
async def test_sdk_retrieves_one_model_in_openai_shape(
    proxy: Proxy, name: str, expected_id: str
) -> None:
    model = await proxy.client().models.retrieve(name)
    assert model.id == expected_id and model.object == "model"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/v1/models/{name}") as resp,
    ):
        assert resp.status == 200
        body = await resp.json()
    assert_valid("Model", body)
    listing = {m["id"]: m for m in proxy.router.models_listing}
    if expected_id in listing:
        assert body == listing[expected_id]  # the same entry as in GET /v1/models


async def test_unknown_model_is_404_in_openai_shape_quoting_at_most_256_chars(
    proxy: Proxy,
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await proxy.client().models.retrieve("gpt-4o-minii")
    assert err.value.code == "model_not_found"
    assert "gpt-4o-mini" in err.value.message.split("nearest catalog ids:")[1]
    long_id = "x" * 300 + "/tail:end"
    async with (
        aiohttp.ClientSession() as s,
        s.get(f"{proxy.url}/v1/models/{long_id}") as resp,
    ):
        assert resp.status == 404
        body = await resp.json()
    assert_valid("ErrorResponse", body)
    message = body["error"]["message"]
    assert "x" * 256 in message and "x" * 257 not in message and "tail" not in message


def test_the_bundled_catalog_has_no_retired_names() -> None:
    catalog = load_config(None).catalog
    for name in RETIRED:
        assert catalog.get(name) is None, name


@pytest.mark.parametrize(
    "name, nearest",
    [
        pytest.param("claude-3-5-haiku", "claude-haiku-4-5", id="claude-3-5-haiku"),
        pytest.param("claude-3-5-sonnet", "claude-sonnet-4-5", id="claude-3-5-sonnet"),
        pytest.param("deepseek-v3", "deepseek-v3.2", id="deepseek-v3"),
    ],
)
async def test_pinning_a_retired_name_is_404_listing_the_nearest_ids(
    proxy: Proxy, name: str, nearest: str
) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await proxy.client().chat.completions.create(model=name, messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found"
    assert nearest in err.value.message.split("nearest catalog ids:")[1]
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_an_operator_can_still_alias_an_old_name_in_config(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {"overrides": {"gpt-4o-mini": {"aliases": ["gpt-4o-mini-2024-07-18", "gpt-3.5-turbo"]}}}
    )
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="gpt-3.5-turbo",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert raw.headers["x-router-model"] == "gpt-4o-mini"


async def test_output_limits_steer_auto_routing_and_refuse_a_pinned_model(proxy: Proxy) -> None:
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto:fast",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=100_000,
    )
    chosen = proxy.router.catalog.get(raw.headers["x-router-model"])
    assert chosen is not None and chosen.max_output_tokens >= 100_000
    with pytest.raises(openai.BadRequestError) as err:
        await proxy.client().chat.completions.create(
            model="gpt-4o-mini",
            messages=MSG,  # type: ignore[arg-type]
            max_completion_tokens=100_000,
        )
    assert err.value.param == "max_completion_tokens"
    assert "16384" in err.value.message and "gpt-4o-mini" in err.value.message
