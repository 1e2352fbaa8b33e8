"""Experiment assignment (stable per request id, percentages that hold), matching, the
treatment's change, config errors, and the arm report over usage rows."""

from __future__ import annotations

import hashlib
import math
import re
from typing import Any

import pytest

from proxy.accounting.experiment_report import arm_stats, compare, format_table
from proxy.config import ConfigError, parse_config
from proxy.decide.experiments import assign, bucket, in_treatment, key_id, matches, treated
from proxy.decide.intent import Intent, parse_intent
from proxy.decide.policy import Experiment, ExperimentMatch

MSG = [{"role": "user", "content": "hello"}]
IDS = [f"req-{i}" for i in range(10_000)]


def intent(**body: Any) -> Intent:
    return parse_intent({"model": "auto", "messages": MSG, **body}, "chat")


def test_assignment_is_stable_per_request_id() -> None:
    e = Experiment("cheaper", 37.5, tier="economy")
    first = [in_treatment(e, rid) for rid in IDS[:500]]
    assert first == [in_treatment(e, rid) for rid in IDS[:500]]
    assert bucket("cheaper", "abc") == bucket("cheaper", "abc")


@pytest.mark.parametrize("percent", [1.0, 10.0, 25.0, 50.0, 90.0])
def test_percentages_hold_within_sampling_error_over_ten_thousand_ids(percent: float) -> None:
    e = Experiment("split", percent, tier="premium")
    share = sum(in_treatment(e, rid) for rid in IDS) / len(IDS)
    p = percent / 100
    sd = math.sqrt(p * (1 - p) / len(IDS))
    assert abs(share - p) < 4 * sd  # four standard errors: fails ~1 in 16,000 by chance


@pytest.mark.parametrize("percent", [0.0, 100.0])
def test_zero_and_hundred_percent_are_exact(percent: float) -> None:
    e = Experiment("edge", percent, tier="premium")
    assert {in_treatment(e, rid) for rid in IDS[:2000]} == {percent == 100.0}


def test_experiments_split_independently_of_each_other() -> None:
    a, b = Experiment("a", 50.0, tier="premium"), Experiment("b", 50.0, tier="premium")
    both = sum(in_treatment(a, rid) and in_treatment(b, rid) for rid in IDS) / len(IDS)
    assert abs(both - 0.25) < 4 * math.sqrt(0.25 * 0.75 / len(IDS))


KEY = key_id("Bearer sk-client-1")


@pytest.mark.parametrize(
    ("match", "fields", "key", "expected"),
    [
        pytest.param(ExperimentMatch(), {}, None, True, id="empty-match-takes-auto-traffic"),
        pytest.param(
            ExperimentMatch(), {"model": "gpt-4o"}, None, False, id="pinned-never-matches"
        ),
        pytest.param(ExperimentMatch(prefer="fast"), {"prefer": "fast"}, None, True, id="prefer"),
        pytest.param(
            ExperimentMatch(prefer="fast"), {"prefer": "cheap"}, None, False, id="other-prefer"
        ),
        pytest.param(ExperimentMatch(tier="economy"), {"tier": "economy"}, None, True, id="tier"),
        pytest.param(ExperimentMatch(tier="auto"), {"tier": "auto"}, None, True, id="tier-auto"),
        pytest.param(
            ExperimentMatch(tier="auto"),
            {"tier": "economy"},
            None,
            False,
            id="explicit-tier-is-not-auto",
        ),
        pytest.param(ExperimentMatch(task="chat"), {"task": "chat"}, None, True, id="task"),
        pytest.param(ExperimentMatch(task="chat"), {}, None, False, id="no-task"),
        pytest.param(ExperimentMatch(key=KEY), {}, KEY, True, id="key-digest"),
        pytest.param(ExperimentMatch(key=(KEY or "")[:8]), {}, KEY, True, id="key-prefix"),
        pytest.param(
            ExperimentMatch(key=(KEY or "")[:4]), {}, KEY, False, id="key-prefix-too-short"
        ),
        pytest.param(ExperimentMatch(key=KEY), {}, None, False, id="no-key"),
        pytest.param(
            ExperimentMatch(prefer="cheap", task="chat"),
            {"task": "chat"},
            None,
            False,
            id="all-fields-must-match",
        ),
    ],
)
def test_match_table(
    match: ExperimentMatch, fields: dict[str, Any], key: str | None, expected: bool
) -> None:
    e = Experiment("x", 50.0, match=match, tier="premium")
    assert matches(e, intent(**fields), key) is expected


def test_disabled_experiment_matches_nothing() -> None:
    assert not matches(Experiment("off", 50.0, tier="premium", enabled=False), intent(), None)


@pytest.mark.parametrize(
    ("experiment", "tier", "prefer", "pinned"),
    [
        pytest.param(Experiment("t", 100, tier="premium"), "premium", "balanced", (), id="tier"),
        pytest.param(Experiment("p", 100, prefer="cheap"), "economy", "cheap", (), id="prefer"),
        pytest.param(Experiment("m", 100, model="gpt-5"), None, None, ("gpt-5",), id="model-pins"),
    ],
)
def test_treatment_changes_only_what_it_names(
    experiment: Experiment, tier: str | None, prefer: str | None, pinned: tuple[str, ...]
) -> None:
    out = treated(experiment, intent(tier="economy"))
    assert (out.tier, out.prefer, out.pinned) == (tier, prefer, pinned)


def test_first_matching_experiment_wins_and_names_the_arm() -> None:
    exps = [
        Experiment("fast-only", 100, match=ExperimentMatch(prefer="fast"), tier="premium"),
        Experiment("all", 0, tier="premium"),
    ]
    chosen = assign(exps, intent(), None, "r1")
    assert chosen is not None and chosen[1] == "all:control" and chosen[0].tier == "standard"
    chosen = assign(exps, intent(prefer="fast"), None, "r1")
    assert chosen is not None and chosen[1] == "fast-only:treatment" and chosen[0].tier == "premium"
    assert assign(exps, intent(model="gpt-4o"), None, "r1") is None


def test_key_id_is_the_sha256_of_the_bearer_token_never_the_token() -> None:
    assert key_id("Bearer sk-client-1") == hashlib.sha256(b"sk-client-1").hexdigest()
    assert key_id(None) is None and key_id("Basic abc") is None and key_id("Bearer ") is None


def test_experiments_parse_from_config() -> None:
    cfg = parse_config(
        {
            "experiments": [
                {
                    "name": "e1",
                    "percent": 10,
                    "match": {"tier": "auto", "task": "chat"},
                    "tier": "economy",
                },
                {"name": "e2", "percent": 5.5, "model": "gpt-5"},
            ]
        }
    )
    e1, e2 = cfg.policy.experiments
    assert (e1.name, e1.percent, e1.match.tier, e1.match.task, e1.tier) == (
        "e1",
        10.0,
        "auto",
        "chat",
        "economy",
    )
    assert e2.model == "gpt-5"


@pytest.mark.parametrize(
    ("entry", "path"),
    [
        pytest.param({"percent": 10, "tier": "economy"}, "experiments[0].name", id="name-missing"),
        pytest.param(
            {"name": "x", "tier": "economy"}, "experiments[0].percent", id="percent-missing"
        ),
        pytest.param(
            {"name": "x", "percent": 120, "tier": "economy"},
            "experiments[0].percent",
            id="percent-range",
        ),
        pytest.param({"name": "x", "percent": 10}, "experiments[0]: give", id="no-treatment"),
        pytest.param(
            {"name": "x", "percent": 10, "tier": "gold"}, "experiments[0].tier", id="bad-tier"
        ),
        pytest.param(
            {"name": "x", "percent": 10, "model": "gpt-99"},
            "experiments[0].model",
            id="unknown-model",
        ),
        pytest.param(
            {"name": "x", "percent": 10, "tier": "economy", "match": {"task": "astrology"}},
            "experiments[0].match.task",
            id="unknown-task",
        ),
        pytest.param(
            {"name": "x", "percent": 10, "tier": "economy", "match": {"user": "a"}},
            "experiments[0].match.user",
            id="unknown-match-key",
        ),
    ],
)
def test_bad_experiment_config_names_the_key(entry: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match="^" + re.escape(path)):
        parse_config({"experiments": [entry]})


def test_duplicate_experiment_names_are_an_error() -> None:
    entry = {"name": "x", "percent": 10, "tier": "economy"}
    with pytest.raises(ConfigError, match=re.escape("experiments[1].name")):
        parse_config({"experiments": [entry, entry]})


def row(
    arm: str | None, cost: float, ttft: float | None, status: int = 200, esc: str | None = None
) -> dict[str, Any]:
    return {"arm": arm, "cost": cost, "ttft_ms": ttft, "status": status, "escalated_from": esc}


def test_arm_report_compares_calls_cost_ttft_errors_and_escalations() -> None:
    rows = [row("e:control", 0.01, 100.0 + i) for i in range(100)]
    rows += [
        row("e:treatment", 0.02, 200.0 + i, 502 if i < 10 else 200, "economy" if i < 30 else None)
        for i in range(100)
    ]
    rows += [row(None, 5.0, 1.0)]
    stats = arm_stats(rows)
    control, treatment = stats
    assert (control.arm, control.calls, treatment.calls) == ("e:control", 100, 100)
    assert control.cost == pytest.approx(1.0) and treatment.cost_per_call == pytest.approx(0.02)
    assert (control.ttft_p50_ms, control.ttft_p95_ms) == (149.0, 194.0)
    assert (treatment.error_rate, treatment.escalation_rate) == (0.10, 0.30)
    (cmp,) = compare(stats)
    assert cmp.experiment == "e" and cmp.cost_per_call_change == pytest.approx(1.0)
    assert cmp.error_rate_z is not None and cmp.error_rate_z > 3
    assert cmp.escalation_rate_z is not None and cmp.escalation_rate_z > 5
    table = format_table(stats, [cmp])
    assert "e:treatment" in table and "+100.0%" in table


def test_arm_report_without_a_control_has_no_comparison() -> None:
    assert compare(arm_stats([row("solo:treatment", 0.0, None, 200)])) == []
