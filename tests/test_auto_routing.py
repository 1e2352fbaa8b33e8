"""tier=auto, task hints, escalate and experiments end to end: the real proxy over sockets,
the simulated providers upstream, the OpenAI SDK as the client."""

from __future__ import annotations

import hashlib
from typing import Any

import aiohttp
import openai
import pytest

from proxy.decide.classifier import assess
from proxy.serve.record import RequestRecord
from proxy.sim.script import Fault
from tests.conftest import Proxy, StartProxy

EASY = [{"role": "user", "content": "hi, thanks"}]
HARD = [
    {
        "role": "user",
        "content": (
            "Prove that the algorithm below runs in O(n log n): derive the recurrence, justify "
            "each step, compare it with the naive approach and explain the trade-offs.\n"
            "```python\ndef merge_sort(xs):\n    if len(xs) <= 1:\n        return xs\n"
            "    mid = len(xs) // 2\n    return merge(merge_sort(xs[:mid]), merge_sort(xs[mid:]))\n```"
        ),
    }
]


def outcomes_of(proxy: Proxy) -> list[RequestRecord]:
    seen: list[RequestRecord] = []
    proxy.router.sinks.append(lambda outcome, seconds: seen.append(outcome))
    return seen


def tier_of(proxy: Proxy, model_id: str) -> str:
    model = proxy.router.catalog.get(model_id)
    assert model is not None
    return model.tier


async def create(
    proxy: Proxy, messages: Any, *, headers: dict[str, str] | None = None, **kw: Any
) -> Any:
    model = kw.pop("model", "auto")
    return await proxy.client().chat.completions.with_raw_response.create(
        model=model, messages=messages, extra_body=kw, extra_headers=headers or {}
    )


async def test_auto_tier_follows_the_classifier_and_explains_itself(
    start_proxy: StartProxy,
) -> None:
    easy = assess({"messages": EASY}).score
    hard = assess({"messages": HARD}).score
    assert easy < hard
    middle = (easy + hard) / 2
    proxy = await start_proxy({"classifier": {"economy_below": middle, "premium_from": middle}})
    seen = outcomes_of(proxy)
    low = await create(proxy, EASY, tier="auto")
    high = await create(proxy, HARD, model="auto:auto")
    assert tier_of(proxy, low.headers["x-router-model"]) == "economy"
    assert tier_of(proxy, high.headers["x-router-model"]) == "premium"
    reason = low.headers["x-router-reason"]
    assert reason.startswith(f"complexity={easy:.2f} signals=") and "auto_tier=economy" in reason
    assert "auto_tier=premium" in high.headers["x-router-reason"]
    assert [o.complexity for o in seen] == [round(easy, 4), round(hard, 4)]
    assert seen[0].intent == "auto prefer=balanced tier=auto"
    assert seen[1].reason == high.headers["x-router-reason"]


async def test_default_thresholds_send_prose_coding_up_and_chit_chat_down(proxy: Proxy) -> None:
    coding = [{"role": "user", "content": "Write a Python function that merges two sorted lists."}]
    chat = [{"role": "user", "content": "Good morning! How are you today?"}]
    up = await create(proxy, coding, model="auto:auto")
    down = await create(proxy, chat, model="auto:auto")
    assert tier_of(proxy, up.headers["x-router-model"]) in ("standard", "premium")
    assert tier_of(proxy, down.headers["x-router-model"]) == "economy"
    # The reason names the words that drove the score, not only the prompt's shape.
    assert "code_task+" in up.headers["x-router-reason"]
    assert "simple-" in down.headers["x-router-reason"]


async def test_auto_tier_shorthand_keeps_the_prefer(proxy: Proxy) -> None:
    raw = await create(proxy, EASY, model="auto:auto:cheap")
    reason = raw.headers["x-router-reason"]
    assert "complexity=" in reason and "prefer=cheap" in reason


@pytest.mark.parametrize(
    ("task", "extra", "tier", "prefer"),
    [
        pytest.param("code_review", {}, "premium", "coding", id="code-review-premium-coding"),
        pytest.param("classification", {}, "economy", "cheap", id="classification-economy-cheap"),
        pytest.param(
            "classification", {"prefer": "quality"}, "economy", "quality", id="explicit-prefer-wins"
        ),
        pytest.param(
            "deep_reasoning", {"tier": "standard"}, "standard", "quality", id="explicit-tier-wins"
        ),
    ],
)
async def test_task_hint_picks_tier_and_prefer(
    proxy: Proxy, task: str, extra: dict[str, Any], tier: str, prefer: str
) -> None:
    raw = await create(proxy, EASY, task=task, **extra)
    assert tier_of(proxy, raw.headers["x-router-model"]) == tier
    assert raw.headers["x-router-reason"].startswith(f"task={task} prefer={prefer} tier={tier}")


async def test_task_table_comes_from_config(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"tasks": {"sql": {"tier": "premium", "prefer": "coding"}}})
    raw = await create(proxy, EASY, task="sql")
    assert tier_of(proxy, raw.headers["x-router-model"]) == "premium"


async def test_unknown_task_is_a_400_naming_it_and_nothing_goes_upstream(proxy: Proxy) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await create(proxy, EASY, task="astrology")
    assert err.value.param == "task" and "astrology" in err.value.message  # type: ignore[attr-defined]
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_task_and_escalate_never_reach_the_upstream(proxy: Proxy) -> None:
    await create(proxy, EASY, task="chat", escalate=True, tier="auto")
    (body,) = proxy.sim.state.last_body.values()
    assert not {"task", "escalate", "tier", "prefer"} & body.keys()


def answered_tiers(proxy: Proxy) -> list[str]:
    """Tiers of the models the simulator answered, one entry per answer."""
    by_upstream = {
        d.upstream_id: m.tier for m in proxy.router.catalog.models for d in m.deployments
    }
    return sorted(by_upstream[u] for u, n in proxy.sim.state.requests.items() for _ in range(n))


async def test_cut_off_economy_answer_is_retried_once_on_standard(proxy: Proxy) -> None:
    seen = outcomes_of(proxy)
    raw = await create(proxy, EASY, model="auto:economy", max_tokens=2, escalate=True)
    assert raw.headers["x-router-escalated"] == "economy->standard"
    assert tier_of(proxy, raw.headers["x-router-model"]) == "standard"
    assert "escalated=economy->standard trigger=length" in raw.headers["x-router-reason"]
    assert answered_tiers(proxy) == ["economy", "standard"]
    (outcome,) = seen
    assert outcome.escalated_from == "economy" and outcome.status == 200
    assert outcome.cost > raw.parse().usage.model_dump()["cost"] > 0  # both answers paid for


async def test_whole_answer_is_not_escalated(proxy: Proxy) -> None:
    seen = outcomes_of(proxy)
    raw = await create(proxy, EASY, model="auto:economy", max_tokens=500, escalate=True)
    assert "x-router-escalated" not in raw.headers
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"
    assert seen[0].escalated_from is None and answered_tiers(proxy) == ["economy"]


async def test_failed_escalation_returns_the_first_answer(proxy: Proxy) -> None:
    for m in proxy.router.catalog.models:
        if m.tier == "standard":
            for d in m.deployments:
                proxy.sim.state.set_fault(d.upstream_id, Fault("status", 500))
    seen = outcomes_of(proxy)
    raw = await create(proxy, EASY, model="auto:economy", max_tokens=2, escalate=True)
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"
    assert raw.headers["x-router-escalated"].startswith("none (economy->standard failed")
    assert seen[0].status == 200 and seen[0].escalated_from is None and seen[0].error is None


async def test_premium_answer_has_nowhere_to_escalate(proxy: Proxy) -> None:
    raw = await create(proxy, EASY, model="auto:premium", max_tokens=2, escalate=True)
    assert raw.headers["x-router-escalated"] == "none (premium is the top tier)"


@pytest.mark.parametrize(
    ("body", "words"),
    [
        pytest.param({"model": "auto", "stream": True, "escalate": True}, "stream", id="streaming"),
        pytest.param({"model": "gpt-4o", "escalate": True}, "named models", id="pinned"),
        pytest.param({"model": "auto", "escalate": "yes"}, "boolean", id="not-boolean"),
    ],
)
async def test_escalate_that_cannot_apply_is_a_400_that_says_why(
    proxy: Proxy, body: dict[str, Any], words: str
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json={**body, "messages": EASY}) as resp,
    ):
        payload = await resp.json()
    assert resp.status == 400
    assert payload["error"]["param"] == "escalate" and words in payload["error"]["message"]
    assert sum(proxy.sim.state.requests.values()) == 0


def experiment(percent: float, **extra: Any) -> dict[str, Any]:
    return {"experiments": [{"name": "up", "percent": percent, "tier": "premium", **extra}]}


@pytest.mark.parametrize(
    ("percent", "arm", "tier"),
    [
        pytest.param(100, "up:treatment", "premium", id="all-treatment"),
        pytest.param(0, "up:control", "economy", id="all-control"),
    ],
)
async def test_experiment_arm_is_in_headers_and_outcome(
    start_proxy: StartProxy, percent: float, arm: str, tier: str
) -> None:
    proxy = await start_proxy(experiment(percent, match={"tier": "economy"}))
    seen = outcomes_of(proxy)
    raw = await create(proxy, EASY, model="auto:economy")
    assert raw.headers["x-router-arm"] == arm and seen[0].arm == arm
    assert tier_of(proxy, raw.headers["x-router-model"]) == tier
    assert f"arm={arm}" in raw.headers["x-router-reason"]


async def test_same_request_id_lands_in_the_same_arm(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(experiment(50))
    arms = {}
    for i in range(12):
        for _ in range(2):
            raw = await create(proxy, EASY, tier="economy", headers={"x-request-id": f"req-{i}"})
            arms.setdefault(i, set()).add(raw.headers["x-router-arm"])
    assert all(len(a) == 1 for a in arms.values())
    assert {a for s in arms.values() for a in s} == {"up:control", "up:treatment"}


async def test_experiment_matches_by_client_key(start_proxy: StartProxy) -> None:
    digest = hashlib.sha256(b"client-key").hexdigest()
    proxy = await start_proxy(experiment(100, match={"key": digest[:12]}))
    mine = await create(proxy, EASY, tier="economy")
    async with openai.AsyncOpenAI(
        base_url=f"{proxy.url}/v1", api_key="someone-else", max_retries=0
    ) as client:
        other = await client.chat.completions.with_raw_response.create(
            model="auto:economy", messages=EASY
        )
    assert mine.headers["x-router-arm"] == "up:treatment"
    assert "x-router-arm" not in other.headers


async def test_models_list_the_auto_tier_routes(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/models") as resp:
        ids = {m["id"] for m in (await resp.json())["data"]}
    assert {"auto:auto", "auto:auto:cheap", "auto:auto:coding"} <= ids
