"""plan() is pure: table tests over a small synthetic catalog and hand-built snapshots."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.catalog import Catalog, Deployment, Model, Score
from proxy.decide.intent import parse_intent
from proxy.decide.routing import Snapshot, plan, spoken
from proxy.errors import RouterError

ALL = frozenset({"chat", "tools", "json", "vision", "logprobs"})


def model(
    mid: str,
    tier: str,
    price: float,
    quality: float,
    coding: float,
    ttft: float,
    *,
    ctx: int = 100_000,
    out: int = 64_000,
    caps: frozenset[str] = ALL,
    providers: tuple[str, ...] = ("p1",),
) -> Model:
    deps = tuple(Deployment(mid, p, f"{p}/{mid}", ttft + 10 * i) for i, p in enumerate(providers))
    return Model(
        id=mid,
        name=mid,
        tier=tier,
        context_length=ctx,
        max_output_tokens=out,  # type: ignore[arg-type]
        input_price=price,
        output_price=price * 4,
        pricing_source="test",
        capabilities=caps,
        quality=Score(quality, "test", "2026-01"),
        coding=Score(coding, "test", "2026-01"),
        nominal_ttft_ms=ttft,
        tokens_per_second=100,
        deployments=deps,
        aliases=(f"{mid}-alias",),
    )


CATALOG = Catalog.build(
    [
        model("eco-cheap", "economy", 0.05, 40, 20, 300),
        model("eco-fast", "economy", 0.20, 45, 30, 120, caps=frozenset({"chat"})),
        model("eco-smart", "economy", 0.40, 55, 50, 400, out=8_192),
        model("std-coder", "standard", 1.00, 60, 72, 500, providers=("p1", "p2")),
        model("std-general", "standard", 0.80, 65, 55, 350, ctx=32_000),
        model("pre-best", "premium", 5.00, 80, 78, 900),
        model("pre-fast", "premium", 3.00, 74, 70, 250, caps=frozenset({"chat", "tools"})),
        model("fim-only", "economy", 0.10, 20, 30, 200, caps=frozenset({"fim"})),
    ]
)
NOMINAL = Snapshot.nominal(CATALOG)


def route(
    body: dict[str, Any], snap: Snapshot = NOMINAL, limit: int = 3, endpoint: str = "chat"
) -> list[str]:
    body = {"messages": [{"role": "user", "content": "hi"}], **body} if endpoint == "chat" else body
    p = plan(parse_intent(body, endpoint), CATALOG, snap, limit)  # type: ignore[arg-type]
    return [c.deployment.key for c in p.candidates]


@pytest.mark.parametrize(
    ("body", "first"),
    [
        pytest.param(
            {"model": "auto", "prefer": "cheap"}, "eco-cheap@p1", id="cheap-is-lowest-blended-price"
        ),
        pytest.param(
            {"model": "auto", "prefer": "quality"}, "pre-best@p1", id="quality-is-highest-score"
        ),
        pytest.param(
            {"model": "auto", "prefer": "coding"}, "pre-best@p1", id="coding-is-highest-coding"
        ),
        pytest.param({"model": "auto", "prefer": "fast"}, "eco-fast@p1", id="fast-is-lowest-ttft"),
        pytest.param({"model": "auto:economy:quality"}, "eco-smart@p1", id="tier-constrains-pool"),
        pytest.param(
            {"model": "auto", "tier": "standard", "prefer": "cheap"},
            "std-general@p1",
            id="cheap-within-standard",
        ),
        pytest.param({"model": "auto"}, "std-general@p1", id="bare-auto-standard-balanced"),
        pytest.param(
            {"model": "auto", "min_coding_score": 70},
            "std-coder@p1",
            id="min-coding-score-cheapest-above",
        ),
        pytest.param(
            {"model": "auto", "min_coding_score": 70, "tier": "premium"},
            "pre-fast@p1",
            id="min-coding-within-tier",
        ),
        pytest.param(
            {"model": "pre-best-alias", "prefer": "cheap"}, "pre-best@p1", id="alias-pins"
        ),
        pytest.param(
            {"model": "auto", "prefer": "fast", "tools": [{"type": "function"}]},
            "pre-fast@p1",
            id="tools-exclude-incapable",
        ),
    ],
)
def test_first_choice_follows_the_intent(body: dict[str, Any], first: str) -> None:
    assert route(body)[0] == first


def test_ranking_is_deterministic_and_limited() -> None:
    assert route({"model": "auto", "prefer": "cheap"}, limit=4) == [
        "eco-cheap@p1",
        "eco-fast@p1",
        "eco-smart@p1",
        "std-general@p1",
    ]


def test_a_model_with_two_deployments_lists_the_faster_first() -> None:
    snap = Snapshot.build(CATALOG, {"std-coder@p1": 900.0, "std-coder@p2": 100.0})
    assert route({"model": "std-coder"}, snap) == ["std-coder@p2", "std-coder@p1"]


def test_measured_latency_reorders_fast() -> None:
    ttft = {d.key: d.nominal_ttft_ms for d in CATALOG.deployments()}
    ttft["eco-fast@p1"] = 2000.0
    snap = Snapshot.build(CATALOG, ttft)
    assert route({"model": "auto:fast"}, snap)[0] == "pre-fast@p1"


def test_open_breakers_are_skipped() -> None:
    snap = Snapshot.build(CATALOG, {}, open={"eco-cheap@p1"})
    assert route({"model": "auto:cheap"}, snap)[0] == "eco-fast@p1"


def test_when_every_candidate_is_open_the_least_bad_is_tried() -> None:
    keys = {d.key for d in CATALOG.deployments()}
    badness = dict.fromkeys(keys, 10.0) | {"eco-smart@p1": 1.0}
    snap = Snapshot.build(CATALOG, {}, open=keys, badness=badness)
    p = plan(
        parse_intent(
            {"model": "auto:economy:cheap", "messages": [{"role": "user", "content": "x"}]}, "chat"
        ),
        CATALOG,
        snap,
        2,
    )
    assert p.forced and p.candidates[0].deployment.key == "eco-smart@p1"
    assert "least_bad" in p.reason


def test_context_window_excludes_small_models() -> None:
    body = {"model": "auto", "tier": "standard", "prefer": "cheap", "max_tokens": 50_000}
    assert route(body)[0] == "std-coder@p1"


def test_prompt_larger_than_every_window_names_the_largest() -> None:
    with pytest.raises(RouterError) as err:
        route({"model": "auto", "messages": [{"role": "user", "content": "x" * 500_000}]})
    assert err.value.code == "context_length_exceeded"
    assert "100000" in err.value.message and err.value.param == "messages"


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_auto_routing_skips_models_whose_output_limit_is_below_max_tokens(field: str) -> None:
    body = {"model": "auto:economy:quality", field: 8_193}
    assert route(body)[0] == "eco-fast@p1"  # eco-smart ranks first but writes at most 8192
    assert route({**body, field: 8_192})[0] == "eco-smart@p1"
    assert route({"model": "auto:economy:quality"})[0] == "eco-smart@p1"  # no max: no limit


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens"])
def test_a_pinned_model_asked_for_more_than_its_output_limit_is_400_naming_both(
    field: str,
) -> None:
    with pytest.raises(RouterError) as err:
        route({"model": "eco-smart", field: 10_000})
    assert (err.value.status, err.value.param) == (400, field)
    assert err.value.code == "max_tokens_exceeds_model_limit"
    assert "8192" in err.value.message and "eco-smart" in err.value.message
    # In an explicit fallback list the model that cannot write that much is passed over.
    assert route({"model": "eco-smart", "models": ["eco-cheap"], field: 10_000}) == ["eco-cheap@p1"]


def test_no_model_writing_enough_is_400_naming_the_largest_limit() -> None:
    with pytest.raises(RouterError) as err:
        route({"model": "auto", "max_tokens": 70_000})
    assert (err.value.status, err.value.param) == (400, "max_tokens")
    assert "64000" in err.value.message


def test_unknown_model_is_404_pointing_at_the_listing() -> None:
    with pytest.raises(RouterError) as err:
        route({"model": "gpt-99"})
    assert (err.value.status, err.value.code) == (404, "model_not_found")
    assert "/v1/models" in err.value.message


def test_pinned_model_without_a_capability_names_the_field() -> None:
    with pytest.raises(RouterError) as err:
        route({"model": "eco-fast", "response_format": {"type": "json_object"}})
    assert (err.value.status, err.value.param) == (400, "response_format")


def test_completions_route_only_to_fim_models_and_chat_never_does() -> None:
    assert route(
        {"model": "auto:fast", "prompt": "def f(", "suffix": ")"}, endpoint="completions"
    ) == ["fim-only@p1"]
    assert "fim-only@p1" not in route({"model": "auto:fast"}, limit=10)


def test_reason_says_what_drove_the_choice() -> None:
    p = plan(
        parse_intent(
            {"model": "auto:fast", "messages": [{"role": "user", "content": "x"}]}, "chat"
        ),
        CATALOG,
        NOMINAL,
        1,
    )
    assert p.reason == "prefer=fast tier=any ttft_ewma_ms=120"


def test_min_coding_score_above_every_model_is_a_400_naming_it() -> None:
    intent = parse_intent(
        {"model": "auto", "messages": [{"role": "user", "content": "x"}], "min_coding_score": 99},
        "chat",
    )
    with pytest.raises(RouterError) as caught:
        plan(intent, CATALOG, NOMINAL, 3)
    assert caught.value.status == 400 and caught.value.param == "min_coding_score"


@pytest.mark.parametrize(
    ("body", "head"),
    [
        pytest.param({"model": "auto:fast"}, "prefer=fast tier=any", id="fast"),
        pytest.param({"model": "pre-best"}, "pinned", id="pinned"),
    ],
)
def test_the_reason_names_the_ttft_estimate_beside_its_deprecated_name(
    body: dict[str, Any], head: str
) -> None:
    """x-router-reason says ttft_estimate_ms (what /v1/router/status calls the figure) and,
    through 0.1.x, still ttft_ewma_ms first, with the same value."""
    intent = parse_intent({**body, "messages": [{"role": "user", "content": "x"}]}, "chat")
    p = plan(intent, CATALOG, NOMINAL, 1)
    figure = f"{NOMINAL.ttft(p.candidates[0].deployment):.0f}"
    assert p.estimate_ms == NOMINAL.ttft(p.candidates[0].deployment)
    assert spoken(p) == f"{head} ttft_ewma_ms={figure} ttft_estimate_ms={figure}"


def test_a_reason_without_the_estimate_is_spoken_as_planned() -> None:
    intent = parse_intent(
        {"model": "auto:cheap", "messages": [{"role": "user", "content": "x"}]}, "chat"
    )
    p = plan(intent, CATALOG, NOMINAL, 1)
    assert p.estimate_ms is None
    assert spoken(p) == p.reason and "ttft_" not in p.reason


def _outcome(body: dict[str, Any], snap: Snapshot, limit: int) -> Any:
    try:
        p = plan(parse_intent(body, "chat"), CATALOG, snap, limit)
    except RouterError as err:
        return err.status, err.body()
    return [c.deployment.key for c in p.candidates], spoken(p), p.forced


def test_requests_sharing_a_snapshot_are_planned_as_on_a_fresh_one() -> None:
    """A snapshot keeps each pool's order and plan head for the requests after the first;
    a request the head does not fit (long prompt, tools, vision, max_tokens) still gets
    what a fresh snapshot gives it, in any order and with either limit."""
    plain = [{"role": "user", "content": "hi"}]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]
    bodies = [
        {"model": m, "messages": msgs, **extra}
        for m in ("auto", "auto:standard", "auto:fast", "auto:economy:quality")
        for msgs in (plain, image, [{"role": "user", "content": "x" * 200_000}])
        for extra in ({}, {"tools": [{"type": "function"}]}, {"max_tokens": 10_000})
    ]
    opened = Snapshot.build(CATALOG, {}, open=["std-coder@p1", "eco-cheap@p1"])
    for snap_of in (lambda: NOMINAL, lambda: opened):
        shared = snap_of()
        for limit in (3, 1):
            for body in bodies + bodies[::-1]:
                fresh = Snapshot.build(CATALOG, dict(shared.ttft_ms), shared.open)
                assert _outcome(body, shared, limit) == _outcome(body, fresh, limit), body
