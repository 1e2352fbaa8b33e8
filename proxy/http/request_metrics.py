"""The per-request series of ``GET /metrics`` (requests, TTFT, duration, fallbacks, cost,
tokens) kept as plain numbers and exported by a collector at scrape time.

prometheus_client's children cost ~400 bytecodes per request (a ``labels()`` lookup, two
observability checks and a lock per ``inc``); here the sink does one dict lookup and adds
to ints and floats (~96 bytecodes, ``benchmarks.opcodes``). Only the event loop's thread
writes them (``Router.sinks`` run in the request handler), so no lock is needed. The
exposition is the one the ``Counter``s and ``Histogram``s gave: the same families in the
same order, a child for each label set from its first request (zeros included), the same
float sums in the same order, ``_created`` while prometheus_client exports it.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections.abc import Iterator, Sequence

from prometheus_client import Counter
from prometheus_client import metrics as prometheus_metrics
from prometheus_client.core import Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import INF, floatToGoString

from proxy.serve.record import RequestRecord

# TTFT spans ~100 ms (small models) to tens of seconds (reasoning models).
TTFT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
_TTFT_BOUNDS = (*TTFT_BUCKETS, INF)
_DURATION_BOUNDS = (*DURATION_BUCKETS, INF)
# What prometheus_client's Counter.inc raises for a negative amount, and so does the sink.
NEGATIVE = "Counters can only be incremented by non-negative amounts."

Labels = tuple[str, ...]


class Sum:
    """One counter child whose value is a float sum (cost): added in request order, as
    prometheus_client did, so the exported value is the same to the last bit."""

    __slots__ = ("created", "value")

    def __init__(self) -> None:
        self.value = 0.0
        self.created = time.time()


class Buckets:
    """One histogram child: a count per bucket (not cumulative; the bucket is the first
    bound >= the value, ``bisect_left``), and the sum of what was observed."""

    __slots__ = ("counts", "created", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.counts = [0] * len(bounds)
        self.sum = 0.0
        self.created = time.time()


class Series:
    """What one (model, provider, status, endpoint) feeds. The integer counts are its own,
    summed per label set at scrape (integer sums are exact in any order): its duration
    buckets (their total is its request count), fallbacks and tokens. The float sums are
    shared with the other series of the same label set: ``took`` (the endpoint's duration
    sum), ``cost``, ``ttft``."""

    __slots__ = (
        "completion",
        "cost",
        "counts",
        "endpoint",
        "fallbacks",
        "mp",
        "prompt",
        "status",
        "took",
        "ttft",
    )

    def __init__(self, labels: tuple[Labels, Labels, str], took: Sum, cost: Sum, ttft: Buckets):
        self.mp, self.status, self.endpoint = labels  # (model, provider), (.., status)
        self.counts = [0] * len(_DURATION_BOUNDS)
        self.fallbacks = self.prompt = self.completion = 0
        self.took = took
        self.cost = cost
        self.ttft = ttft


class RequestMetrics(Collector):
    """The request path's families; ``sink`` is a ``Router.sinks`` entry (via ``Metrics``)."""

    def __init__(self) -> None:
        self._series: dict[tuple[str | None, str | None, int, str], Series] = {}
        # Each family's children in the order of their first request, with their created
        # time (what prometheus_client's labels() would have made, and when).
        self._requests: dict[Labels, float] = {}
        self._pairs: dict[Labels, float] = {}  # fallbacks and tokens, by (model, provider)
        self._cost: dict[Labels, Sum] = {}
        self._duration: dict[str, Sum] = {}
        self._ttft: dict[str, Buckets] = {}
        # Hedged races are rare: their two counters stay prometheus_client's (``Metrics``).
        self.hedges: Counter | None = None
        self.hedge_cost: Counter | None = None

    def sink(self, outcome: RequestRecord, seconds: float) -> None:
        """Once per request, after its answer."""
        try:  # a subscript, not get() and a None test: 4 bytecodes fewer once it is known
            s = self._series[(outcome.model, outcome.provider, outcome.status, outcome.endpoint)]
        except KeyError:
            s = self._add(outcome)
        s.counts[bisect_left(_DURATION_BOUNDS, seconds)] += 1
        s.took.value += seconds
        if (ttft := outcome.ttft_ms) is not None and outcome.model is not None:
            ttft /= 1000
            h = s.ttft
            if ttft == ttft:  # a NaN lands in no bucket (only in the sum), as before
                h.counts[bisect_left(_TTFT_BOUNDS, ttft)] += 1
            h.sum += ttft
        if outcome.attempts > 1:
            s.fallbacks += 1
        if (cost := outcome.cost) > 0:
            s.cost.value += cost
        prompt, completion = outcome.prompt_tokens, outcome.completion_tokens
        if prompt < 0 or completion < 0:
            _refuse(s, prompt)
        s.prompt += prompt  # a zero changes nothing: its children exist already
        s.completion += completion
        if outcome.hedged:
            self._hedged(outcome.hedged, outcome.hedge_cost)

    def _hedged(self, winner: str, cost: float) -> None:
        if self.hedges is not None:
            self.hedges.labels(winner).inc()
        if cost > 0 and self.hedge_cost is not None:
            self.hedge_cost.inc(cost)

    def _add(self, outcome: RequestRecord) -> Series:
        """A new label set: its series, and the children it is the first to touch."""
        model, provider = outcome.model or "none", outcome.provider or "none"
        mp = (model, provider)
        status = (model, provider, str(outcome.status))
        now = time.time()
        self._requests.setdefault(status, now)
        self._pairs.setdefault(mp, now)
        took = self._duration.get(outcome.endpoint)
        if took is None:
            took = self._duration[outcome.endpoint] = Sum()
        ttft = self._ttft.get(f"{model}@{provider}")
        if ttft is None:
            ttft = self._ttft[f"{model}@{provider}"] = Buckets(_TTFT_BOUNDS)
        cost = self._cost.get(mp)
        if cost is None:
            cost = self._cost[mp] = Sum()
        key = (outcome.model, outcome.provider, outcome.status, outcome.endpoint)
        s = self._series[key] = Series((mp, status, outcome.endpoint), took, cost, ttft)
        return s

    def describe(self) -> list[Metric]:
        # The names, so that the registry refuses a second family of the same name.
        return [
            Metric("model_router_requests", "", "counter"),
            Metric("model_router_ttft_seconds", "", "histogram"),
            Metric("model_router_request_duration_seconds", "", "histogram"),
            Metric("model_router_fallbacks", "", "counter"),
            Metric("model_router_cost_usd", "", "counter"),
            Metric("model_router_tokens", "", "counter"),
        ]

    def collect(self) -> Iterator[Metric]:
        created = prometheus_metrics._use_created
        requests = dict.fromkeys(self._requests, 0)
        pairs = {mp: [0, 0, 0] for mp in self._pairs}  # fallbacks, prompt, completion
        durations = {endpoint: [0] * len(_DURATION_BOUNDS) for endpoint in self._duration}
        for s in self._series.values():
            requests[s.status] += sum(s.counts)
            counts = durations[s.endpoint]
            for i, n in enumerate(s.counts):
                counts[i] += n
            p = pairs[s.mp]
            p[0] += s.fallbacks
            p[1] += s.prompt
            p[2] += s.completion
        yield _counter(
            "model_router_requests",
            "Requests handled, by the model and provider that answered ('none' when none did) "
            "and the outcome status (for streams, a mid-stream failure's status).",
            ("model", "provider", "status"),
            [(labels, n, self._requests[labels]) for labels, n in requests.items()],
            created,
        )
        yield _histogram(
            "model_router_ttft_seconds",
            "Time to the first content-bearing chunk of streamed answers, per deployment.",
            "deployment",
            [(label, h.counts, h.sum, h.created) for label, h in self._ttft.items()],
            _TTFT_BOUNDS,
            created,
        )
        yield _histogram(
            "model_router_request_duration_seconds",
            "Time from the request's arrival to the end of its answer.",
            "endpoint",
            [(e, durations[e], took.value, took.created) for e, took in self._duration.items()],
            _DURATION_BOUNDS,
            created,
        )
        yield from self._pair_families(pairs, created)

    def _pair_families(self, pairs: dict[Labels, list[int]], created: bool) -> Iterator[Metric]:
        mp = ("model", "provider")
        yield _counter(
            "model_router_fallbacks",
            "Requests that took more than one attempt, by the model that finally answered.",
            mp,
            [(labels, p[0], self._pairs[labels]) for labels, p in pairs.items()],
            created,
        )
        yield _counter(
            "model_router_cost_usd",
            "Upstream cost of answered requests in USD, from reported usage and catalog prices.",
            mp,
            [(labels, c.value, c.created) for labels, c in self._cost.items()],
            created,
        )
        # Children in labels() order: a pair's prompt child, then its completion child.
        tokens = []
        for labels, p in pairs.items():
            tokens.append(((*labels, "prompt"), p[1], self._pairs[labels]))
            tokens.append(((*labels, "completion"), p[2], self._pairs[labels]))
        yield _counter(
            "model_router_tokens",
            "Tokens reported by upstreams.",
            (*mp, "kind"),
            tokens,
            created,
        )


def _counter(
    name: str,
    doc: str,
    labelnames: Labels,
    children: Sequence[tuple[Labels, float, float]],
    created: bool,
) -> Metric:
    """A counter family as prometheus_client's ``Counter.collect`` builds it."""
    family = Metric(name, doc, "counter")
    for labels, value, at in children:
        named = dict(zip(labelnames, labels, strict=True))
        family.add_sample(name + "_total", named, float(value))
        if created:
            family.add_sample(name + "_created", dict(named), at)
    return family


def _histogram(
    name: str,
    doc: str,
    labelname: str,
    children: Sequence[tuple[str, list[int], float, float]],
    bounds: Sequence[float],
    created: bool,
) -> Metric:
    """A histogram family as prometheus_client's ``Histogram.collect`` builds it."""
    family = Metric(name, doc, "histogram")
    les = [floatToGoString(b) for b in bounds]  # type: ignore[no-untyped-call]
    for label, counts, total, at in children:
        acc = 0.0
        for le, n in zip(les, counts, strict=True):
            acc += n
            family.add_sample(name + "_bucket", {labelname: label, "le": le}, acc)
        family.add_sample(name + "_count", {labelname: label}, acc)
        family.add_sample(name + "_sum", {labelname: label}, total)
        if created:
            family.add_sample(name + "_created", {labelname: label}, at)
    return family


def _refuse(s: Series, prompt: int) -> None:
    """A negative token count: what prometheus_client's Counter.inc did, a ValueError, after
    counting a valid prompt count first (the completion's inc came second)."""
    if prompt >= 0:
        s.prompt += prompt
    raise ValueError(NEGATIVE)
