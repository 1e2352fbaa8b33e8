"""The per-request families of /metrics give, for the same traffic, the exposition that
prometheus_client's own Counter and Histogram children gave (kept here as the reference)."""

from __future__ import annotations

import math
import re
from collections.abc import Iterator

import pytest
from aiohttp import web
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    enable_created_metrics,
    generate_latest,
)
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.openmetrics.exposition import generate_latest as openmetrics_latest

from proxy.http.metrics import Metrics
from proxy.http.request_metrics import NEGATIVE
from proxy.serve.record import Asked, RequestRecord

TTFT = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
DURATION = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
FAMILIES = (
    "model_router_requests",
    "model_router_ttft_seconds",
    "model_router_request_duration_seconds",
    "model_router_fallbacks",
    "model_router_cost_usd",
    "model_router_tokens",
    "model_router_hedges",
    "model_router_hedge_cost_usd",
)


class Reference:
    """The sink as it was, on prometheus_client's children."""

    def __init__(self) -> None:
        self.registry = reg = CollectorRegistry()
        self.requests = Counter(
            "model_router_requests", "x", ["model", "provider", "status"], registry=reg
        )
        self.ttft = Histogram(
            "model_router_ttft_seconds", "x", ["deployment"], buckets=TTFT, registry=reg
        )
        self.duration = Histogram(
            "model_router_request_duration_seconds",
            "x",
            ["endpoint"],
            buckets=DURATION,
            registry=reg,
        )
        self.fallbacks = Counter("model_router_fallbacks", "x", ["model", "provider"], registry=reg)
        self.cost = Counter("model_router_cost_usd", "x", ["model", "provider"], registry=reg)
        self.tokens = Counter(
            "model_router_tokens", "x", ["model", "provider", "kind"], registry=reg
        )
        self.hedges = Counter("model_router_hedges", "x", ["winner"], registry=reg)
        self.hedge_cost = Counter("model_router_hedge_cost_usd", "x", registry=reg)

    def sink(self, o: RequestRecord, seconds: float) -> None:
        model, provider = o.model or "none", o.provider or "none"
        # Every child of the label set exists from its first request, as _Series made them.
        requests = self.requests.labels(model, provider, str(o.status))
        duration = self.duration.labels(o.endpoint)
        ttft = self.ttft.labels(f"{model}@{provider}")
        fallbacks = self.fallbacks.labels(model, provider)
        cost = self.cost.labels(model, provider)
        prompt = self.tokens.labels(model, provider, "prompt")
        completion = self.tokens.labels(model, provider, "completion")
        requests.inc()
        duration.observe(seconds)
        if o.ttft_ms is not None and o.model is not None:
            ttft.observe(o.ttft_ms / 1000)
        if o.attempts > 1:
            fallbacks.inc()
        if o.cost > 0:
            cost.inc(o.cost)
        if o.prompt_tokens:
            prompt.inc(o.prompt_tokens)
        if o.completion_tokens:
            completion.inc(o.completion_tokens)
        if o.hedged:
            self.hedges.labels(o.hedged).inc()
            if o.hedge_cost > 0:
                self.hedge_cost.inc(o.hedge_cost)


def traffic(n: int) -> Iterator[tuple[RequestRecord, float]]:
    """A spread of label sets, edge values included: unanswered requests, bucket bounds,
    costs whose float sums depend on their order, hedges."""
    for i in range(n):
        answered = i % 7 != 3
        record = RequestRecord(
            Asked(
                request_id=f"r{i}", endpoint=("chat", "completions")[i % 5 == 0], stream=i % 2 == 0
            ),
            model=f"model-{i % 4}" if answered else None,
            provider=("openai", "openrouter")[i % 3 == 0] if answered else None,
            attempts=1 + (i % 6 == 0),
            status=(200, 200, 502, 429)[i % 4] if answered else 400,
            ttft_ms=(None, 50.0, 123.456, 30_000.0, 45_000.0, 0.0)[i % 6] if i % 2 == 0 else None,
            prompt_tokens=(0, 900, 17)[i % 3],
            completion_tokens=(40, 0)[i % 2],
            cost=(0.0, 0.1, 0.0004, 1e-7, 0.3)[i % 5],
            hedged=(None, None, "primary", "hedge")[i % 4] if i % 3 else None,
            hedge_cost=(0.0, 0.02)[i % 2],
        )
        yield record, (0.1, 0.0999, 0.7, 301.0, 2.5, 0.000_123)[i % 6] + i * 1e-6


def families(text: bytes) -> dict[str, str]:
    """Each family's block of an exposition, its HELP text and _created values blanked."""
    blocks: dict[str, str] = {}
    for line in text.decode().splitlines():
        if line == "# EOF":
            continue
        if line.startswith("# HELP "):
            name = line.split()[2]
            line = f"# HELP {name}"
        elif line.startswith("# "):
            name = line.split()[2]
        elif "_created" in line:
            line = re.sub(r" [0-9.e+]+$", " T", line)
        blocks[name] = blocks.get(name, "") + line + "\n"
    return blocks


@pytest.fixture(params=[True, False], ids=["created", "no_created"])
def created(request: pytest.FixtureRequest) -> Iterator[bool]:
    before = prometheus_metrics._use_created
    (enable_created_metrics if request.param else disable_created_metrics)()  # type: ignore[no-untyped-call]
    try:
        yield request.param
    finally:
        (enable_created_metrics if before else disable_created_metrics)()  # type: ignore[no-untyped-call]


@pytest.mark.parametrize(
    "encode", [generate_latest, openmetrics_latest], ids=["text", "openmetrics"]
)
def test_exposition_is_the_one_prometheus_client_children_gave(
    created: bool, encode: object
) -> None:
    assert callable(encode)
    ours, reference = Metrics(web.Application()), Reference()
    for record, seconds in traffic(500):
        ours.sink(record, seconds)
        reference.sink(record, seconds)
    got, want = families(encode(ours.registry)), families(encode(reference.registry))
    ours_only = [name for name in got if name.startswith(FAMILIES)]
    assert ours_only == list(want)  # the same families, in the same order
    assert ours_only[0].startswith("model_router_requests")
    for name in want:
        assert got[name] == want[name], name
    assert any("_created" in block for block in got.values()) is created


def test_an_empty_router_exports_the_families_without_children() -> None:
    text = generate_latest(Metrics(web.Application()).registry).decode()
    assert "# TYPE model_router_requests_total counter" in text
    assert "# TYPE model_router_ttft_seconds histogram" in text
    assert "model_router_requests_total{" not in text


def test_a_nan_ttft_reaches_the_sum_but_no_bucket() -> None:
    ours, reference = Metrics(web.Application()), Reference()
    record = RequestRecord(Asked("r", "chat", stream=True), model="m", provider="p", status=200)
    record.ttft_ms = math.nan
    ours.sink(record, 0.2)
    reference.sink(record, 0.2)
    got, want = (
        families(generate_latest(ours.registry)),
        families(generate_latest(reference.registry)),
    )
    assert got["model_router_ttft_seconds"] == want["model_router_ttft_seconds"]
    assert 'model_router_ttft_seconds_sum{deployment="m@p"} NaN' in got["model_router_ttft_seconds"]


@pytest.mark.parametrize(("prompt", "completion"), [(-1, 5), (7, -2), (0, -2)])
def test_negative_token_counts_are_refused_as_prometheus_client_refused_them(
    prompt: int, completion: int
) -> None:
    ours, reference = Metrics(web.Application()), Reference()
    for sink in (ours.sink, reference.sink):
        record = RequestRecord(Asked("r", "chat"), model="m", provider="p", status=200)
        record.prompt_tokens, record.completion_tokens = prompt, completion
        with pytest.raises(ValueError, match=NEGATIVE):
            sink(record, 0.2)
    got, want = (
        families(generate_latest(ours.registry)),
        families(generate_latest(reference.registry)),
    )
    for name in ("model_router_tokens_total", "model_router_requests_total"):
        assert got[name] == want[name]
