"""The Prometheus alert rules and the Grafana dashboard in systemd/: promtool accepts them,
their alerts fire on the series they should, and every series they name is one that a
running router's /metrics exports."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from proxy.http.auth import hash_key
from tests.conftest import StartProxy

ROOT = Path(__file__).resolve().parent.parent
RULES = ROOT / "systemd" / "prometheus-alerts.yml"
DASHBOARD = ROOT / "systemd" / "grafana-dashboard.json"
SERIES = re.compile(r"\bmodel_router_[a-z0-9_]+\b")
KEY = "sk-alerting-admin-1"
# The kinds of series each metric type puts in the text format.
SUFFIXES = {
    "counter": ("_total",),
    "histogram": ("_bucket", "_count", "_sum"),
    "gauge": ("",),
    "summary": ("_count", "_sum", ""),
}


def promtool() -> str:
    """CI installs Debian's prometheus package (.ci/run); there a missing promtool fails."""
    found = shutil.which("promtool")
    if found is None:
        why = "needs promtool (`apt-get install prometheus`)"
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)
    return found


def dashboard_queries() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p["targets"]]


def rule_queries() -> list[str]:
    rules = yaml.safe_load(RULES.read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_promtool_accepts_the_alert_rules() -> None:
    done = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 11 rules found" in done.stdout


def test_promtool_parses_every_dashboard_query(tmp_path: Path) -> None:
    # As recording rules, Grafana's $__rate_interval spelled out: promtool parses each one.
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{i}", "expr": q.replace("$__rate_interval", "5m")}
                    for i, q in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump(rules))
    done = subprocess.run(
        [promtool(), "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


ALERT_TESTS = """
rule_files: [{rules}]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'model_router_breaker_state{{instance="r", deployment="gpt-4o@openai"}}'
        values: '2x15'
      - series: 'model_router_breaker_state{{instance="r", deployment="o3@openai"}}'
        values: '0x15'
      - series: 'model_router_tier_deployments{{instance="r", tier="premium"}}'
        values: '2x15'
      - series: 'model_router_tier_deployments_open{{instance="r", tier="premium"}}'
        values: '1x5 2x10'
      - series: 'model_router_budget_daily_usd{{instance="r"}}'
        values: '10x15'
      - series: 'model_router_budget_spend_today_usd{{instance="r"}}'
        values: '7 8.5x14'
      - series: 'model_router_usage_log_dropped_rows_total{{instance="r"}}'
        values: '0x10 5x5'
    alert_rule_test:
      - eval_time: 5m
        alertname: ModelRouterBreakerOpen
        exp_alerts: []
      - eval_time: 12m
        alertname: ModelRouterBreakerOpen
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r, deployment: gpt-4o@openai}}
            exp_annotations:
              summary: "Breaker of gpt-4o@openai open for more than 10 minutes"
              description: "Routing skips it; see GET /status or `model-router status` for its errors and transitions."
      - eval_time: 5m
        alertname: ModelRouterTierAllOpen
        exp_alerts: []
      - eval_time: 9m
        alertname: ModelRouterTierAllOpen
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r, tier: premium}}
            exp_annotations:
              summary: "Every deployment of tier premium has an open breaker"
              description: "Requests for this tier get the least-bad open deployment or fail."
      - eval_time: 0m
        alertname: ModelRouterBudgetAbove80Percent
        exp_alerts: []
      - eval_time: 2m
        alertname: ModelRouterBudgetAbove80Percent
        exp_alerts:
          - exp_labels: {{severity: warning, instance: r}}
            exp_annotations:
              summary: "85% of today's global budget is spent"
              description: "At 100 % every request gets 429 until 00:00 UTC."
      - eval_time: 9m
        alertname: ModelRouterUsageLogDropping
        exp_alerts: []
      - eval_time: 13m
        alertname: ModelRouterUsageLogDropping
        exp_alerts:
          - exp_labels: {{severity: critical, instance: r}}
            exp_annotations:
              summary: "The usage log dropped 5 rows in 10 minutes: spend and reports are incomplete"
"""


def test_the_alerts_fire_when_they_should_and_not_before(tmp_path: Path) -> None:
    tests = tmp_path / "alerts-test.yml"
    tests.write_text(ALERT_TESTS.format(rules=json.dumps(str(RULES))))
    done = subprocess.run(
        [promtool(), "test", "rules", str(tests)], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr


def exported(text: str) -> set[str]:
    names = set()
    for family in text_string_to_metric_families(text):
        names.update(s.name for s in family.samples)
        # A labelled family with no child yet is declared (HELP, TYPE) but has no sample.
        names.update(family.name + suffix for suffix in SUFFIXES.get(family.type, ("",)))
    return names


async def test_every_series_the_dashboard_and_rules_name_is_exported(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(
        {
            "keys": [{"id": "ops", "sha256": hash_key(KEY), "admin": True, "daily_usd": 2.0}],
            "budget": {"daily_usd": 10.0},
            "probes": {"enabled": True, "interval_s": 3600.0},
        }
    )
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=KEY, max_retries=0)
    proxy.clients.append(client)
    chunks = await client.chat.completions.create(
        model="gpt-5-nano",
        messages=[{"role": "user", "content": "hi"}],
        stream=True,
    )
    async for _ in chunks:
        pass
    headers = {"Authorization": f"Bearer {KEY}"}
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/metrics", headers=headers) as r:
        assert r.status == 200
        text = await r.text()
    names = exported(text)
    queries = dashboard_queries() + rule_queries()
    assert len(dashboard_queries()) >= 20
    used: dict[str, list[str]] = {}
    for q in queries:
        found = SERIES.findall(q)
        assert found or q.startswith("up{"), f"names no model-router series: {q}"
        for name in found:
            used.setdefault(name, []).append(q)
    missing = {name: qs for name, qs in used.items() if name not in names}
    assert not missing, missing
    # The series added for the rules carry the live figures.
    values = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    tiers = {
        labels[0][1]: v for (n, labels), v in values.items() if n == "model_router_tier_deployments"
    }
    assert sum(tiers.values()) == len(list(proxy.router.catalog.deployments()))
    assert set(tiers) == {"economy", "standard", "premium"}
    assert values[("model_router_budget_daily_usd", ())] == 10.0
    assert values[("model_router_budget_spend_today_usd", ())] > 0
    assert values[("model_router_key_budget_daily_usd", (("key", "ops"),))] == 2.0
    assert values[("model_router_key_spend_today_usd", (("key", "ops"),))] > 0
    assert values[("model_router_usage_log_queue_max_rows", ())] == 10_000


def test_the_dashboard_is_importable_json() -> None:
    dash: dict[str, Any] = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "model-router" and dash["title"] == "Model Router"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        assert p["datasource"]["uid"] == "${datasource}"
        assert p["targets"] and all(t["refId"] for t in p["targets"])
