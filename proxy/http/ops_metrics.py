"""Scrape-time series the alert rules and the Grafana dashboard need beyond proxy/http/metrics.py:
open deployments per tier, spend against the budgets, the usage log's queue
(systemd/prometheus-alerts.yml, systemd/grafana-dashboard.json).
"""

from __future__ import annotations

from collections.abc import Iterator

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from proxy.accounting.ledger import ACCOUNTING
from proxy.accounting.usage_log import UsageLog
from proxy.catalog import TIERS, Catalog
from proxy.serve.state import ROUTER


class OpsCollector(Collector):
    def __init__(self, app: web.Application) -> None:
        self._app = app

    def describe(self) -> list[Metric]:
        return []  # the families depend on the live config and the accounting's state

    def collect(self) -> Iterator[Metric]:
        holder = self._app.get(ROUTER)
        if holder is not None:
            yield from self._tiers(holder.current.catalog, holder.current.health.snapshot().open)
        accounting = self._app.get(ACCOUNTING)
        if accounting is None:
            return
        budget = accounting.budget
        status = budget.status()  # also rolls the day over at UTC midnight
        yield GaugeMetricFamily(
            "model_router_budget_spend_today_usd",
            "Spend so far today (UTC) across every key, in USD.",
            value=status["today_usd"],
        )
        yield GaugeMetricFamily(
            "model_router_budget_daily_usd",
            "The global daily budget in USD ([budget] daily_usd; 0: none).",
            value=budget.daily_usd,
        )
        yield CounterMetricFamily(
            "model_router_budget_refused",
            "Requests refused with 429 because a daily budget was spent.",
            value=budget.refused,
        )
        spent = GaugeMetricFamily(
            "model_router_key_spend_today_usd",
            "Spend so far today (UTC) per API key id, for keys with a daily_usd budget.",
            labels=["key"],
        )
        caps = GaugeMetricFamily(
            "model_router_key_budget_daily_usd",
            "Each API key's daily_usd budget.",
            labels=["key"],
        )
        for key_id, cap in sorted(budget.key_limits.items()):
            spent.add_metric([key_id], budget.by_key.get(key_id, 0.0))
            caps.add_metric([key_id], cap)
        yield spent
        yield caps
        if accounting.usage is not None:
            yield from self._usage_log(accounting.usage)

    @staticmethod
    def _usage_log(usage: UsageLog) -> Iterator[Metric]:
        stats = usage.stats()
        yield GaugeMetricFamily(
            "model_router_usage_log_queued_rows",
            "Usage-log rows waiting in memory for the next write.",
            value=stats["queued_rows"],
        )
        yield GaugeMetricFamily(
            "model_router_usage_log_queue_max_rows",
            "Rows the usage log holds in memory before it drops them ([usage] queue_max).",
            value=usage.settings.queue_max,
        )
        yield CounterMetricFamily(
            "model_router_usage_log_written_rows",
            "Usage-log rows written to SQLite.",
            value=stats["written_rows"],
        )
        yield CounterMetricFamily(
            "model_router_usage_log_dropped_rows",
            "Usage-log rows dropped because the queue was full.",
            value=stats["dropped_rows"],
        )
        yield CounterMetricFamily(
            "model_router_usage_log_write_errors",
            "Failed usage-log writes (disk full, read-only, ...).",
            value=stats["write_errors"],
        )

    @staticmethod
    def _tiers(catalog: Catalog, open_keys: frozenset[str]) -> Iterator[Metric]:
        total = GaugeMetricFamily(
            "model_router_tier_deployments",
            "Enabled deployments per tier.",
            labels=["tier"],
        )
        opened = GaugeMetricFamily(
            "model_router_tier_deployments_open",
            "Deployments per tier whose breaker refuses traffic now.",
            labels=["tier"],
        )
        counts = {tier: [0, 0] for tier in TIERS}
        for m in catalog.models:
            for d in m.deployments:
                counts[m.tier][0] += 1
                counts[m.tier][1] += d.key in open_keys
        for tier, (n, n_open) in counts.items():
            total.add_metric([tier], n)
            opened.add_metric([tier], n_open)
        yield total
        yield opened
