"""What a key limited to some tiers or models sees and gets: /v1/models lists only what it may
use, /v1/models/{id} hides the rest, tiers the client did not name (a bare auto, a task, the
classifier) are narrowed to the key's, named ones are refused. Real sockets, the OpenAI SDK."""

from __future__ import annotations

from typing import Any

import openai
import pytest

from proxy.catalog import PREFERS, TIERS
from proxy.decide.allowance import Allowance
from proxy.decide.intent import parse_intent
from tests.conftest import Proxy, StartProxy
from tests.test_auth import ALPHA, MSG, key, keyed, sdk, upstream_calls
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
