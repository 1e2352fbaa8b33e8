"""Routing policy from config: classifier thresholds and weights ([classifier]), the task
table ([tasks]), escalation triggers ([escalation]) and traffic experiments ([[experiments]]).

Parsed into frozen dataclasses; every error names its key path. Defaults are built in.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from proxy.catalog import PREFERS, TIERS, Prefer, Tier

from .classifier import DEFAULT_WEIGHTS, SIGNALS, Weights


class PolicyError(ValueError):
    """A policy table is invalid; the message starts with the offending key's path."""


@dataclass(frozen=True, slots=True)
class ClassifierSettings:
    # score < economy_below -> economy; score >= premium_from -> premium; else standard.
    # With the default weights a greeting or lookup scores ~0.06, a short coding or design
    # question ~0.3, a long code review ~0.6 (examples in tests/test_classifier.py).
    economy_below: float = 0.2
    premium_from: float = 0.4
    weights: Weights = DEFAULT_WEIGHTS

    def tier_for(self, score: float) -> Tier:
        if score < self.economy_below:
            return "economy"
        return "premium" if score >= self.premium_from else "standard"


@dataclass(frozen=True, slots=True)
class TaskRoute:
    tier: Tier
    prefer: Prefer


# What each task usually needs: a starting point an operator overrides under [tasks].
DEFAULT_TASKS: Mapping[str, TaskRoute] = {
    "classification": TaskRoute("economy", "cheap"),
    "simple_qa": TaskRoute("economy", "fast"),
    "translation": TaskRoute("economy", "balanced"),
    "summarization": TaskRoute("standard", "cheap"),
    "chat": TaskRoute("standard", "fast"),
    "code_generation": TaskRoute("standard", "coding"),
    "code_review": TaskRoute("premium", "coding"),
    "analysis": TaskRoute("standard", "quality"),
    "creative_writing": TaskRoute("standard", "quality"),
    "deep_reasoning": TaskRoute("premium", "quality"),
}

# Openings of an answer that declines; matched case-insensitively against its first
# characters only, so an answer that merely mentions one of them is not a refusal.
DEFAULT_REFUSALS = (
    "i'm sorry, but i can't",
    "i am sorry, but i cannot",
    "i'm sorry, i can't",
    "sorry, i can't help",
    "i can't help with",
    "i cannot help with",
    "i can't assist with",
    "i cannot assist with",
    "i'm unable to help",
    "i am unable to help",
    "i'm not able to help",
    "i won't be able to help",
    "as an ai language model, i cannot",
)


@dataclass(frozen=True, slots=True)
class EscalationSettings:
    refusal_phrases: tuple[str, ...] = DEFAULT_REFUSALS
    # How much of the answer's start is searched for a refusal phrase.
    refusal_window_chars: int = 200


@dataclass(frozen=True, slots=True)
class ExperimentMatch:
    """Every given field must match; an empty match takes all auto-routed traffic."""

    key: str | None = None  # client key id (or a prefix of at least 8 of its hex digest)
    prefer: Prefer | None = None
    tier: str | None = None  # a tier, or "auto" for requests the classifier routed
    task: str | None = None


@dataclass(frozen=True, slots=True)
class Experiment:
    name: str
    percent: float  # of matching traffic sent to the treatment, 0-100
    match: ExperimentMatch = ExperimentMatch()
    tier: Tier | None = None  # treatment: any of these three, at least one
    prefer: Prefer | None = None
    model: str | None = None
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Policy:
    classifier: ClassifierSettings = ClassifierSettings()
    tasks: Mapping[str, TaskRoute] = field(default_factory=lambda: dict(DEFAULT_TASKS))
    escalation: EscalationSettings = EscalationSettings()
    experiments: tuple[Experiment, ...] = ()


TOP_LEVEL_KEYS = frozenset({"classifier", "tasks", "escalation", "experiments"})


def _table(raw: Any, path: str, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise PolicyError(f"{path}: expected a table")
    for key in raw:
        if key not in allowed:
            raise PolicyError(f"{path}.{key}: unknown key")
    return raw


def _number(raw: Any, path: str, lo: float = -math.inf, hi: float = math.inf) -> float:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not lo <= raw <= hi:
        raise PolicyError(f"{path}: expected a number from {lo:g} to {hi:g}")
    return float(raw)


def _choice(raw: Any, path: str, options: tuple[str, ...]) -> Any:
    if raw not in options:
        raise PolicyError(f"{path}: expected one of {', '.join(options)}; got {raw!r}")
    return raw


def _classifier(raw: Any) -> ClassifierSettings:
    table = _table(raw, "classifier", {"economy_below", "premium_from", "bias", "weights"})
    base = ClassifierSettings()
    low = _number(table.get("economy_below", base.economy_below), "classifier.economy_below", 0, 1)
    high = _number(table.get("premium_from", base.premium_from), "classifier.premium_from", 0, 1)
    if low > high:
        raise PolicyError("classifier.economy_below: must not exceed classifier.premium_from")
    by_signal = dict(DEFAULT_WEIGHTS.by_signal)
    weights = _table(table.get("weights", {}), "classifier.weights", set(SIGNALS))
    for name, value in weights.items():
        by_signal[name] = _number(value, f"classifier.weights.{name}", -20, 20)
    bias = _number(table.get("bias", DEFAULT_WEIGHTS.bias), "classifier.bias", -20, 20)
    return ClassifierSettings(low, high, Weights(bias, by_signal))


def _tasks(raw: Any) -> dict[str, TaskRoute]:
    if not isinstance(raw, dict):
        raise PolicyError("tasks: expected a table of task tables")
    tasks = dict(DEFAULT_TASKS)
    for name, entry in raw.items():
        path = f"tasks.{name}"
        table = _table(entry, path, {"tier", "prefer"})
        base = tasks.get(name)
        if base is None and not {"tier", "prefer"} <= table.keys():
            raise PolicyError(f"{path}: a new task needs both tier and prefer")
        tier = _choice(table.get("tier", base.tier if base else None), f"{path}.tier", TIERS)
        prefer = _choice(
            table.get("prefer", base.prefer if base else None), f"{path}.prefer", PREFERS
        )
        tasks[name] = TaskRoute(tier, prefer)
    return tasks


def _escalation(raw: Any) -> EscalationSettings:
    table = _table(raw, "escalation", {"refusal_phrases", "refusal_window_chars"})
    base = EscalationSettings()
    phrases = table.get("refusal_phrases", list(base.refusal_phrases))
    if not isinstance(phrases, list) or not all(isinstance(p, str) and p for p in phrases):
        raise PolicyError("escalation.refusal_phrases: expected an array of non-empty strings")
    window = table.get("refusal_window_chars", base.refusal_window_chars)
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise PolicyError("escalation.refusal_window_chars: expected a positive integer")
    return EscalationSettings(tuple(p.lower() for p in phrases), window)


def _optional_str(table: Mapping[str, Any], key: str, path: str) -> str | None:
    value = table.get(key)
    if value is not None and (not isinstance(value, str) or not value):
        raise PolicyError(f"{path}.{key}: expected a non-empty string")
    return value


def _experiment(raw: Any, i: int, tasks: Mapping[str, TaskRoute], seen: set[str]) -> Experiment:
    path = f"experiments[{i}]"
    table = _table(raw, path, {"name", "percent", "match", "tier", "prefer", "model", "enabled"})
    name = _optional_str(table, "name", path)
    if name is None:
        raise PolicyError(f"{path}.name: required")
    if name in seen:
        raise PolicyError(f"{path}.name: {name!r} is used by another experiment")
    seen.add(name)
    if "percent" not in table:
        raise PolicyError(f"{path}.percent: required")
    percent = _number(table["percent"], f"{path}.percent", 0, 100)
    m = _table(table.get("match", {}), f"{path}.match", {"key", "prefer", "tier", "task"})
    mpath = f"{path}.match"
    match = ExperimentMatch(
        key=_optional_str(m, "key", mpath),
        prefer=_choice(m["prefer"], f"{mpath}.prefer", PREFERS) if "prefer" in m else None,
        tier=_choice(m["tier"], f"{mpath}.tier", (*TIERS, "auto")) if "tier" in m else None,
        task=_choice(m["task"], f"{mpath}.task", tuple(tasks)) if "task" in m else None,
    )
    tier = _choice(table["tier"], f"{path}.tier", TIERS) if "tier" in table else None
    prefer = _choice(table["prefer"], f"{path}.prefer", PREFERS) if "prefer" in table else None
    model = _optional_str(table, "model", path)
    if tier is None and prefer is None and model is None:
        raise PolicyError(f"{path}: give the treatment a tier, a prefer or a model")
    enabled = table.get("enabled", True)
    if not isinstance(enabled, bool):
        raise PolicyError(f"{path}.enabled: expected a boolean")
    return Experiment(name, percent, match, tier, prefer, model, enabled)


def parse_policy(data: Mapping[str, Any], model_names: Mapping[str, object]) -> Policy:
    """The policy tables of a config document; ``model_names`` checks experiment models."""
    classifier = _classifier(data.get("classifier", {}))
    tasks = _tasks(data.get("tasks", {}))
    escalation = _escalation(data.get("escalation", {}))
    raw = data.get("experiments", [])
    if not isinstance(raw, list):
        raise PolicyError("experiments: expected an array of tables ([[experiments]])")
    seen: set[str] = set()
    experiments = tuple(_experiment(e, i, tasks, seen) for i, e in enumerate(raw))
    for i, e in enumerate(experiments):
        if e.model is not None and e.model not in model_names:
            raise PolicyError(f"experiments[{i}].model: no catalog model {e.model!r}")
    return Policy(classifier, tasks, escalation, experiments)
