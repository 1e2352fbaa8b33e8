"""What a key limited to some tiers or models sees and gets: /v1/models lists only what it may
use, /v1/models/{id} hides the rest, tiers the client did not name (a bare auto, a task, the
classifier) are narrowed to the key's, named ones are refused. Real sockets, the OpenAI SDK."""

from __future__ import annotations

import asyncio
from typing import Any

import openai
import pytest

from proxy.catalog import PREFERS, TIERS
from proxy.decide.allowance import Allowance, auto_names
from proxy.decide.intent import parse_intent
from tests.conftest import Proxy, StartProxy
from tests.test_auth import ALPHA, MSG, call, key, keyed, sdk, upstream_calls
from tests.test_auto_routing import HARD

EVERY_AUTO = (
    ["auto", *(f"auto:{p}" for p in PREFERS), *(f"auto:{t}" for t in TIERS)]
    + [f"auto:{t}:{p}" for t in TIERS for p in PREFERS]
    + ["auto:auto", *(f"auto:auto:{p}" for p in PREFERS)]
)


def tier_of(proxy: Proxy, model_id: str) -> str:
    model = proxy.router.catalog.get(model_id)
    assert model is not None
    return model.tier


async def listed(client: openai.AsyncOpenAI) -> list[str]:
    return [m.id async for m in client.models.list()]


# --- /v1/models and /v1/models/{id} -----------------------------------------------------------


async def test_without_keys_the_listing_is_every_model_and_every_auto_route(proxy: Proxy) -> None:
    ids = await listed(proxy.client())
    assert ids == [m.id for m in proxy.router.catalog.models] + EVERY_AUTO


async def test_an_economy_key_lists_exactly_what_it_can_use(start_proxy: StartProxy) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    client = sdk(proxy, ALPHA)
    ids = await listed(client)
    catalog = proxy.router.catalog
    economy = [m.id for m in catalog.models if m.tier == "economy"]
    autos = [n for n in EVERY_AUTO if not n.startswith(("auto:standard", "auto:premium"))]
    assert ids == economy + autos
    assert "auto" in ids and "auto:quality" in ids and "auto:auto:fast" in ids

    # Nothing listed is refused (completion-only models answer chat with a 400 naming the
    # feature); everything the full listing has beside it is.
    async def status_of(model: str) -> int:
        status, _, _ = await call(proxy, {"model": model, "messages": MSG}, ALPHA)
        return status

    everything = [m.id for m in catalog.models] + EVERY_AUTO
    statuses = dict(zip(everything, await asyncio.gather(*map(status_of, everything)), strict=True))
    assert {m: s for m, s in statuses.items() if m in ids and s in (403, 404)} == {}
    assert {m: s for m, s in statuses.items() if m not in ids and s != 403} == {}
    assert upstream_calls(proxy) == sum(s == 200 for s in statuses.values()) > len(ids) // 2


async def test_a_key_limited_to_one_model_lists_it_and_the_auto_routes_that_reach_it(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("nano", ALPHA, allowed_models=["gpt-5-nano"]))
    ids = await listed(sdk(proxy, ALPHA))
    assert ids[0] == "gpt-5-nano" and tier_of(proxy, "gpt-5-nano") == "economy"
    assert ids[1:] == [n for n in EVERY_AUTO if not n.startswith(("auto:standard", "auto:premium"))]


async def test_retrieving_a_model_the_key_may_not_use_is_404_like_an_unknown_one(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    client = sdk(proxy, ALPHA)
    assert (await client.models.retrieve("gpt-5-nano")).id == "gpt-5-nano"
    assert (await client.models.retrieve("auto")).id == "auto"
    assert (await client.models.retrieve("auto:economy:fast")).id == "auto:economy:fast"
    premium = next(m for m in proxy.router.catalog.models if m.tier == "premium")
    allowed = {m.id for m in proxy.router.catalog.models if m.tier == "economy"}
    for name in (premium.id, "auto:premium", "auto:standard:coding", "gpt-5-nanoo"):
        with pytest.raises(openai.NotFoundError) as err:
            await client.models.retrieve(name)
        assert err.value.code == "model_not_found", name
        assert "this API key may not use it" in err.value.message
        hint = err.value.message.partition("nearest ids this key may use: ")[2]
        near = [n.strip(". ") for n in hint.split("GET")[0].split(",") if n.strip(". ")]
        assert set(near) <= allowed, (name, near)
    # Over plain HTTP too, naming the field.
    status, _, body = await call(proxy, None, ALPHA, path=f"/v1/models/{premium.id}")
    assert status == 404 and body["error"]["param"] == "model"


# --- tiers the client did not name ----------------------------------------------------------


async def test_a_bare_auto_on_an_economy_key_routes_within_economy_and_says_so(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    client = sdk(proxy, ALPHA)
    for model, narrowed in (("auto", "standard->economy"), ("auto:quality", "any->economy")):
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=MSG)  # type: ignore[arg-type]
        assert tier_of(proxy, raw.headers["x-router-model"]) == "economy", model
        assert f"narrowed={narrowed}" in raw.headers["x-router-reason"], model
        assert "tier=economy" in raw.headers["x-router-reason"]
    stream = await client.chat.completions.create(model="auto", messages=MSG, stream=True)  # type: ignore[arg-type]
    assert [c async for c in stream]
    # A tier the client names is the client's word: refused, naming the limit.
    with pytest.raises(openai.PermissionDeniedError) as err:
        await client.chat.completions.create(model="auto:premium", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "tier_not_allowed" and "premium" in err.value.message
    with pytest.raises(openai.PermissionDeniedError) as err:
        await client.chat.completions.create(
            model="auto",
            messages=MSG,  # type: ignore[arg-type]
            extra_body={"tier": "standard"},
        )
    assert err.value.code == "tier_not_allowed" and err.value.param == "tier"
    assert upstream_calls(proxy) == 3


async def test_the_classifier_and_a_task_are_narrowed_to_the_keys_tier(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    client = sdk(proxy, ALPHA)
    raw = await client.chat.completions.with_raw_response.create(model="auto:auto", messages=HARD)  # type: ignore[arg-type]
    reason = raw.headers["x-router-reason"]
    assert "auto_tier=premium" in reason and "narrowed=premium->economy" in reason
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"
    raw = await client.chat.completions.with_raw_response.create(
        model="auto",
        messages=MSG,  # type: ignore[arg-type]
        extra_body={"task": "code_review"},
    )
    assert "narrowed=premium->economy" in raw.headers["x-router-reason"]
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"


async def test_escalation_stays_within_the_keys_tiers(start_proxy: StartProxy) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    raw = await sdk(proxy, ALPHA).chat.completions.with_raw_response.create(
        model="auto:economy",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body={"escalate": True},
    )
    assert raw.headers["x-router-escalated"] == "none (standard: model_not_allowed)"
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"
    assert upstream_calls(proxy) == 1


def allowance(**kw: Any) -> Allowance:
    return Allowance(frozenset(kw.get("tiers", ())), frozenset(kw.get("models", ())))


@pytest.mark.parametrize(
    ("tiers", "body", "tier", "note"),
    [
        pytest.param(("economy",), {"model": "auto"}, "economy", "standard->economy", id="bare"),
        pytest.param(("premium",), {"model": "auto"}, "premium", "standard->premium", id="up"),
        pytest.param(
            ("economy", "premium"), {"model": "auto"}, "economy", "standard->economy", id="tie-low"
        ),
        pytest.param(
            ("economy", "standard"),
            {"model": "auto:cheap"},
            None,
            "any->economy,standard",
            id="two",
        ),
        pytest.param(("standard",), {"model": "auto:standard"}, "standard", "", id="named-ok"),
        pytest.param(("economy",), {"model": "auto:premium"}, "premium", "", id="named-kept"),
        pytest.param(TIERS, {"model": "auto"}, "standard", "", id="every-tier"),
        pytest.param(("economy",), {"model": "gpt-4o"}, None, "", id="pinned"),
    ],
)
def test_narrow_table(tiers: tuple[str, ...], body: dict[str, Any], tier: Any, note: str) -> None:
    intent = parse_intent({**body, "messages": MSG}, "chat")
    narrowed, said = allowance(tiers=tiers).narrow(intent, tiers)
    assert narrowed.tier == tier
    assert said == (f"narrowed={note}" if note else "")


def test_auto_names_follow_the_reachable_tiers() -> None:
    assert auto_names(TIERS) == EVERY_AUTO
    assert auto_names(()) == []
    assert "auto:standard" not in auto_names(("economy",))


# --- endpoints not served -------------------------------------------------------------------


async def test_the_responses_api_is_a_404_that_points_at_chat_completions(proxy: Proxy) -> None:
    client = proxy.client()
    with pytest.raises(openai.NotFoundError) as err:
        await client.responses.create(model="auto", input="hi")
    assert err.value.code == "unsupported_endpoint"
    assert "/v1/chat/completions" in err.value.message
    assert "openai.chat('auto')" in err.value.message
    with pytest.raises(openai.NotFoundError):
        await client.responses.retrieve("resp_123")
    assert sum(proxy.sim.state.requests.values()) == 0
