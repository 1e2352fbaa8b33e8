"""Prometheus metrics for ``GET /metrics``: per-request counters fed by a sink in
``router.sinks``, and a collector that reads breakers, probes and open streams at scrape
time. Each app has its own registry (tests run many apps in one process).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from probes.loop import ProbeLoop
from proxy.accounting.ledger import ACCOUNTING
from proxy.serve.drain import IN_FLIGHT
from proxy.serve.record import RequestRecord
from proxy.serve.state import CLUSTER, ROUTER, WORKER, Router

from .log_stream import access_handler
from .ops_metrics import OpsCollector
from .request_metrics import RequestMetrics

# A healthy loop wakes within a millisecond; a watchdog kill is ten seconds away.
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
LAG_INTERVAL_S = 0.5
# One number per deployment keeps a scrape short (it runs on the event loop).
BREAKER_CODES = {"closed": 0.0, "half_open": 1.0, "open": 2.0}


class Metrics:
    """The app's registry and the metrics the request path updates."""

    def __init__(self, app: web.Application) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        # Registered first: its families come first in the exposition, as they always have.
        self.per_request = RequestMetrics()
        reg.register(self.per_request)
        self._process_metrics(reg)
        self.per_request.hedges, self.per_request.hedge_cost = self.hedges, self.hedge_cost
        reg.register(StateCollector(app))
        reg.register(OpsCollector(app))

    @property
    def sink(self) -> Callable[[RequestRecord, float], None]:
        """The ``Router.sinks`` entry: called once per request after its answer."""
        return self.per_request.sink

    def _process_metrics(self, reg: CollectorRegistry) -> None:
        """The process's own health: event-loop lag and reloads."""
        self.loop_lag = Histogram(
            "model_router_event_loop_lag_seconds",
            f"How late the event loop woke from a {LAG_INTERVAL_S:g} s sleep.",
            buckets=LAG_BUCKETS,
            registry=reg,
        )
        self.loop_lag_last = Gauge(
            "model_router_event_loop_lag_last_seconds",
            "The most recent event-loop lag measurement.",
            registry=reg,
        )
        self.hedges = Counter(
            "model_router_hedges",
            "Streams raced against a hedge, by the attempt that won (primary or hedge).",
            ["winner"],
            registry=reg,
        )
        self.hedge_cost = Counter(
            "model_router_hedge_cost_usd",
            "What the cancelled attempts of hedged races cost in USD (in model_router_cost_usd "
            "too): estimated prompt tokens plus the content they had produced.",
            registry=reg,
        )
        self.reloads = Counter(
            "model_router_config_reloads",
            "SIGHUP reloads, by result (applied or rejected).",
            ["result"],
            registry=reg,
        )

    async def watch_loop_lag(self) -> None:
        """Sleep overshoot, measured on the loop itself: what every request waits extra."""
        loop = asyncio.get_running_loop()
        while True:
            started = loop.time()
            await asyncio.sleep(LAG_INTERVAL_S)
            lag = max(0.0, loop.time() - started - LAG_INTERVAL_S)
            self.loop_lag.observe(lag)
            self.loop_lag_last.set(lag)


class StateCollector(Collector):
    """Reads the live Router's health and probe state and the open streams at scrape time."""

    def __init__(self, app: web.Application) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        # Empty: the families depend on the live config, so the registry must not cache them.
        return []

    def collect(self) -> Iterator[Metric]:
        in_flight = self._app.get(IN_FLIGHT)
        if in_flight is not None:
            yield _gauge(
                "model_router_open_streams",
                "Streams being relayed to clients now.",
                len(in_flight.streams),
            )
            yield _gauge(
                "model_router_requests_in_flight",
                "Requests being handled now.",
                len(in_flight.requests),
            )
        cluster = self._app.get(CLUSTER)
        if cluster is not None:
            cs = cluster.status()
            yield _gauge(
                "model_router_cluster_redis_up",
                "1 while Redis answers and state is shared; 0 while this instance runs on "
                "local state (limits at its share of the cluster's).",
                1.0 if cs["redis"] == "up" else 0.0,
            )
            yield _gauge(
                "model_router_cluster_instances",
                "Live router instances (workers and boxes) by their Redis heartbeats; the "
                "last count seen while Redis is down.",
                cs["instances"],
            )
        try:
            tasks = len(asyncio.all_tasks())
        except RuntimeError:  # scraped off the loop: nothing to count
            tasks = 0
        yield _gauge(
            "model_router_event_loop_tasks",
            "asyncio tasks alive on the event loop (grows without bound only on a leak).",
            tasks,
        )
        yield from self._bookkeeping()
        holder = self._app.get(ROUTER)
        if holder is None:
            return
        router = holder.current
        yield _gauge(
            "model_router_models_enabled",
            "Models routable with the live config.",
            len(router.catalog.models),
        )
        yield from _deployments(router)
        if router.probe_loop is not None:
            yield from _probes(router.probe_loop)

    def _bookkeeping(self) -> Iterator[Metric]:
        accounting = self._app.get(ACCOUNTING)
        usage = accounting.usage if accounting is not None else None
        if usage is not None:
            yield _gauge(
                "model_router_usage_log_ok",
                "1 while the usage log writes, 0 while its writes fail (disk full, locked, ...).",
                float(usage.error is None),
            )
            yield _counter(
                "model_router_usage_log_quarantined_files",
                "Corrupt usage databases moved aside and replaced by a new one.",
                len(usage.quarantined),
            )
        if (handler := access_handler()) is not None:
            handler.settle()  # the pending batch: report on every line logged so far
            yield _gauge(
                "model_router_access_log_ok",
                "1 while access-log lines are written, 0 while writes fail.",
                float(handler.error is None),
            )
            yield _counter(
                "model_router_access_log_write_errors",
                "Access-log lines that could not be written.",
                handler.errors,
            )


def _deployments(router: Router) -> Iterator[Metric]:
    """Breaker state, openings and the TTFT estimate, per deployment."""
    rows = {row.key: row for row in router.health.board.rows()}
    states = GaugeMetricFamily(
        "model_router_breaker_state",
        "Each deployment's circuit breaker: 0 closed, 1 half-open, 2 open.",
        labels=["deployment"],
    )
    openings = CounterMetricFamily(
        "model_router_breaker_openings",
        "Times each deployment's breaker has opened (rate limits included).",
        labels=["deployment"],
    )
    estimate = GaugeMetricFamily(
        "model_router_ttft_estimate_seconds",
        "The decayed TTFT estimate routing uses for each deployment.",
        labels=["deployment"],
    )
    table = router.health.table
    for d in router.catalog.deployments():
        row = rows.get(d.key)
        states.add_metric([d.key], BREAKER_CODES[row.state] if row is not None else 0.0)
        openings.add_metric([d.key], row.opened_count if row is not None else 0)
        estimate.add_metric([d.key], table.estimate_ms(d.key) / 1000)
    yield states
    yield openings
    yield estimate


def _probes(loop: ProbeLoop) -> Iterator[Metric]:
    st = loop.stats()
    yield _counter("model_router_probes_sent", "Probes sent.", st.sent)
    yield _counter("model_router_probes_failed", "Probes that failed.", st.failed)
    yield _counter(
        "model_router_probes_hurried",
        "Probes launched out of turn because a deployment with traffic turned slow.",
        st.hurried,
    )
    yield _counter(
        "model_router_probes_skipped_for_budget",
        "Probes not sent because the daily probe budget was spent.",
        st.skipped_for_budget,
    )
    yield _gauge(
        "model_router_probe_spend_today_usd",
        "Estimated probe spend so far today (UTC) in USD.",
        st.spend_today_usd,
    )
    yield _gauge("model_router_probe_spend_cap_usd", "Daily probe budget in USD.", st.spend_cap_usd)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


METRICS = web.AppKey("metrics", Metrics)


async def metrics_endpoint(request: web.Request) -> web.Response:
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    body = encode(request.app[METRICS].registry)
    if (worker := request.app.get(WORKER)) is not None:
        body = with_label(body, f'worker="{worker}"'.encode())
    return web.Response(body=body, headers={"Content-Type": content_type})


def with_label(body: bytes, label: bytes) -> bytes:
    """Every sample line of an exposition gains ``label`` (the worker's, under --workers), so
    series from the workers of one box stay apart when Prometheus scrapes each of them."""
    out = []
    for line in body.split(b"\n"):
        if line and not line.startswith(b"#"):
            space, brace = line.find(b" "), line.find(b"{")
            if brace != -1 and brace < space:
                sep = b"" if line[brace + 1 : brace + 2] == b"}" else b","
                line = line[: brace + 1] + label + sep + line[brace + 1 :]
            elif space != -1:
                line = line[:space] + b"{" + label + b"}" + line[space:]
        out.append(line)
    return b"\n".join(out)
