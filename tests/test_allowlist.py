"""Forward by allowlist: only the fields OpenAI's schema defines (proxy/openai_fields.json,
generated from the shipped OpenAPI description) and those config names reach an upstream;
anything else is a 400 naming the field and saying how to allow it. Real SDK, real sockets."""

from __future__ import annotations

from typing import Any

import aiohttp
import openai
import orjson
import pytest

from benchmarks.gen_openai_fields import OUT, generate
from proxy.config import ConfigError, parse_config
from proxy.decide.fields import (
    EXTENSION_FIELDS,
    FieldPolicy,
    openai_field_ranges,
    openai_field_types,
    openai_fields,
)
from proxy.errors import RouterError
from proxy.providers.anthropic_wire import to_anthropic_request
from proxy.providers.base import UnsupportedFeatureError
from proxy.providers.bedrock_wire import to_converse_request
from tests.conftest import Proxy, StartProxy
from tests.openapi_schema import assert_valid

MSG = [{"role": "user", "content": "hello there"}]

# What a LiteLLM-style gateway behind us would honour (issue 20 found each reaching one).
STEERING = [
    "aws_bedrock_runtime_endpoint",
    "aws_region",
    "aws_role_name",
    "aws_web_identity_token",
    "aws_sts_endpoint",
    "aws_session_name",
    "vertex_project",
    "vertex_credentials",
    "azure_ad_token",
    "extra_body",
    "litellm_params",
    "mock_response",
    "api_base",
]


def test_shipped_field_list_is_what_the_generator_makes_from_the_shipped_spec() -> None:
    assert OUT.read_text(encoding="utf-8") == generate()


def test_field_list_holds_openai_fields_and_no_extension() -> None:
    fields = openai_fields()
    assert {"messages", "tools", "stream_options", "reasoning_effort"} <= fields["chat"]
    assert {"prompt", "suffix", "echo", "best_of"} <= fields["completions"]
    assert "messages" not in fields["completions"]
    assert not EXTENSION_FIELDS & (fields["chat"] | fields["completions"])


@pytest.mark.parametrize("name", STEERING)
async def test_upstream_steering_field_is_refused_and_never_forwarded(
    proxy: Proxy, name: str
) -> None:
    value: Any = {"api_base": "http://10.0.0.1"} if name == "extra_body" else "http://10.0.0.1"
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(
            model="gpt-5-nano", messages=MSG, extra_body={name: value}
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == name
    assert name in error["message"]
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_unknown_field_is_a_400_that_says_how_to_allow_it(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().completions.create(
            model="auto:fast", prompt="def f(", extra_body={"repetition_penalty": 1.1}
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert error["param"] == "repetition_penalty"
    assert error["code"] == "unknown_parameter"
    assert "extra_body_fields" in error["message"] and "[providers." in error["message"]
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_a_4mb_field_name_is_quoted_to_256_characters(proxy: Proxy) -> None:
    name = "x" * 4_000_000
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(
            model="gpt-5-nano", messages=MSG, extra_body={name: 1}
        )
    error = info.value.body
    assert isinstance(error, dict)
    assert len(error["message"]) < 1200 and len(error["param"]) == 256


async def test_openai_fields_and_extensions_route_and_extensions_are_stripped(
    proxy: Proxy,
) -> None:
    await proxy.client().chat.completions.create(
        model="auto",
        messages=MSG,
        temperature=0.2,
        seed=7,
        user="u1",
        metadata={"a": "b"},
        extra_body={"prefer": "cheap", "tier": "economy", "cache": False},
    )
    seen = proxy.sim.state.fields_seen
    assert {"temperature", "seed", "user", "metadata"} <= seen
    assert not seen & EXTENSION_FIELDS
    assert seen <= openai_fields()["chat"]


async def test_provider_extra_fields_reach_that_provider_only(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(
        {
            "providers": {"openai": {"extra_body_fields": ["top_k", "repetition_penalty"]}},
            "forwarding": {"extra_body_fields": ["min_p"]},
        }
    )
    extra = {"top_k": 40, "repetition_penalty": 1.1, "min_p": 0.05}
    await proxy.client().chat.completions.create(model="gpt-5-nano", messages=MSG, extra_body=extra)
    assert {"top_k", "repetition_penalty", "min_p"} <= set(proxy.sim.state.last_body["gpt-5-nano"])
    # Gemini's OpenAI-compatible endpoint was not told about top_k: it gets only min_p.
    await proxy.client().chat.completions.create(
        model="gemini-2.5-flash-lite", messages=MSG, extra_body={**extra, "models": []}
    )
    sent = proxy.sim.state.last_body["gemini-2.5-flash-lite"]
    assert "min_p" in sent and "top_k" not in sent and "repetition_penalty" not in sent


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param({"forwarding": {"extra_fields": []}}, "forwarding.extra_fields", id="typo"),
        pytest.param(
            {"forwarding": {"extra_body_fields": ["api_base"]}}, "cannot be allowed", id="steer"
        ),
        pytest.param(
            {"providers": {"openai": {"extra_body_fields": ["aws_region"]}}},
            "providers.openai.extra_body_fields",
            id="provider-steer",
        ),
        pytest.param(
            {"forwarding": {"extra_body_fields": "top_k"}}, "expected an array", id="not-a-list"
        ),
        pytest.param(
            {"forwarding": {"extra_body_fields": ["prefer"]}}, "routing extension", id="ours"
        ),
    ],
)
def test_bad_extra_field_config_is_an_error(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(data)


@pytest.mark.parametrize("name", [*STEERING, "top_k", "frobnicate", "prompt", "suffix"])
def test_translating_adapters_build_from_known_fields_only(name: str) -> None:
    """Anthropic and Bedrock bodies are built field by field: a field they do not know is
    refused, naming it, not carried over."""
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}], name: "canary-zz9"}
    for translate in (
        lambda b: to_anthropic_request(b),
        lambda b: to_converse_request("m", b),
    ):
        try:
            out = translate(body)
        except UnsupportedFeatureError as exc:
            assert exc.param == name
        else:
            # Anthropic's own sampling field: mapped by the Anthropic adapter only.
            assert name == "top_k" and out.get("top_k") == "canary-zz9"
            assert (
                "canary-zz9"
                not in orjson.dumps({k: v for k, v in out.items() if k != "top_k"}).decode()
            )


# A value of the wrong JSON type for each kind of field: a string where the spec wants
# anything else, a number where it wants a string.
def wrong_value(allowed: frozenset[str]) -> Any:
    return 7 if "string" in allowed else "seven"


# model, messages and prompt are checked (with their own messages) when the intent is read.
TYPED = [
    pytest.param(endpoint, name, id=f"{endpoint}-{name}")
    for endpoint, types in openai_field_types().items()
    for name in sorted(types)
    if name not in ("model", "messages", "prompt")
]


async def refused_with_param(proxy: Proxy, endpoint: str, name: str, value: Any) -> Any:
    """Send a minimal request for ``endpoint`` with ``name`` set to ``value``; assert a 400 in
    OpenAI's error shape naming ``name`` and that nothing went upstream; return the body."""
    body: dict[str, Any] = (
        {"model": "gpt-5-nano", "messages": MSG}
        if endpoint == "chat"
        else {"model": "gpt-3.5-turbo-instruct", "prompt": "say"}
    )
    body[name] = value
    path = "chat/completions" if endpoint == "chat" else "completions"
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/{path}", json=body) as resp,
    ):
        payload = await resp.json()
    assert resp.status == 400, payload
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["param"] == name
    assert sum(proxy.sim.state.requests.values()) == 0
    return payload


@pytest.mark.parametrize(("endpoint", "name"), TYPED)
async def test_an_openai_field_of_the_wrong_type_is_a_400_and_never_forwarded(
    proxy: Proxy, endpoint: str, name: str
) -> None:
    """OpenAI answers a string temperature or a number user with a 400; so does the router,
    before anything is sent, instead of forwarding it to an OpenAI-wire upstream verbatim."""
    await refused_with_param(
        proxy, endpoint, name, wrong_value(openai_field_types()[endpoint][name])
    )


async def test_null_and_integral_numbers_pass_the_type_check(proxy: Proxy) -> None:
    """An optional field sent as null is a field not sent; 1 is a number and 2.0 an integer."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            json={
                "model": "gpt-5-nano",
                "messages": MSG,
                "temperature": 1,
                "n": 1.0,
                "user": None,
                "parallel_tool_calls": None,
                "stop": None,
            },
        ) as resp,
    ):
        assert resp.status == 200, await resp.text()


def out_of_range(bounds: tuple[float | None, float | None]) -> list[tuple[float, str]]:
    """A value just outside each bound the field has, and the side it is on."""
    low, high = bounds
    values: list[tuple[float, str]] = []
    if low is not None:
        values.append((low - 1, "below_min_value"))
    if high is not None:
        values.append((high + 0.5 if type(high) is float else high + 1, "above_max_value"))
    return values


RANGED = [
    pytest.param(endpoint, name, value, side, id=f"{endpoint}-{name}-{value:g}")
    for endpoint, ranges in openai_field_ranges().items()
    for name, bounds in sorted(ranges.items())
    for value, side in out_of_range(bounds)
]


@pytest.mark.parametrize(("endpoint", "name", "value", "side"), RANGED)
async def test_an_openai_number_outside_its_range_is_a_400_and_never_forwarded(
    proxy: Proxy, endpoint: str, name: str, value: float, side: str
) -> None:
    """temperature 3, n 0, top_logprobs 21: OpenAI answers each with a 400 naming the field
    and the bound (``decimal_above_max_value``, ``integer_below_min_value``, ...); so does the
    router, before a Bedrock or Anthropic upstream is sent what their APIs would refuse."""
    payload = await refused_with_param(proxy, endpoint, name, value)
    assert payload["error"]["code"].endswith(side)
    assert str(value) in payload["error"]["message"]


async def test_numbers_on_their_bounds_pass_the_range_check(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s:
        for extremes in (
            {"temperature": 0, "top_p": 0, "presence_penalty": -2, "frequency_penalty": -2.0},
            {"temperature": 2.0, "top_p": 1, "presence_penalty": 2, "frequency_penalty": 2},
        ):
            body = {"model": "gpt-5-nano", "messages": MSG, "n": 1, **extremes}
            async with s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp:
                assert resp.status == 200, await resp.text()


def _verdict(policy: FieldPolicy, body: dict[str, Any], endpoint: str) -> bytes | None:
    try:
        policy.check(body, endpoint)
    except RouterError as err:
        return err.body()
    return None


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "m", "messages": MSG, "stream": False}, id="plain"),
        pytest.param({"model": "m", "temperature": 0.5, "user": "u"}, id="ranged-in-range"),
        pytest.param({"model": "m", "temperature": 3}, id="ranged-above"),
        pytest.param({"model": "m", "n": 1.0}, id="integer-as-float"),
        pytest.param({"model": "m", "n": 1.5}, id="integer-as-fraction"),
        pytest.param({"model": "m", "user": 7, "bogus": 1}, id="unknown-after-bad-type"),
        pytest.param({"model": "m", "stream": None, "tier": ["x"]}, id="null-and-extension"),
        pytest.param({"model": "m", "seed": True}, id="boolean-for-integer"),
    ],
)
def test_the_quick_pass_and_the_full_check_agree(body: dict[str, Any]) -> None:
    quick = FieldPolicy.build(["vendor_knob"], {})
    full = FieldPolicy(quick.accepted, quick.forwarded, quick.global_extra)  # no quick table
    for endpoint in ("chat", "completions"):
        assert _verdict(quick, body, endpoint) == _verdict(full, body, endpoint)
