"""The step between parsing and planning: tier=auto through the classifier, then the
experiment arm. Pure; what it decided is kept for the reason header and the request record.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from .classifier import assess
from .experiments import assign
from .intent import Intent
from .policy import Policy
from .routing import Plan


# Not frozen: built once per request and never changed after (dataclasses.replace makes a
# new one), and frozen's object.__setattr__ per field costs (~34 bytecodes, ~14 without).
@dataclass(slots=True)
class Resolution:
    intent: Intent  # what routing plans for
    complexity: float | None = None  # the classifier's score when tier was auto
    arm: str | None = None  # "<experiment>:control" or "<experiment>:treatment"
    notes: str = ""  # leads x-router-reason: "task=... complexity=... signals=... arm=..."

    def annotate(self, plan: Plan) -> Plan:
        return replace(plan, reason=f"{self.notes} {plan.reason}") if self.notes else plan


def resolve(
    intent: Intent,
    body: Mapping[str, Any],
    policy: Policy,
    request_id: str,
    key: str | None = None,
) -> Resolution:
    if intent.task is None and not intent.tier_auto and not policy.experiments:
        return Resolution(intent)  # nothing to resolve: no notes, no classifier, no arm
    notes: list[str] = []
    complexity: float | None = None
    if intent.task is not None:
        notes.append(f"task={intent.task}")
    if intent.tier_auto and not intent.pinned:
        assessment = assess(body, policy.classifier.weights)
        complexity = round(assessment.score, 4)
        tier = policy.classifier.tier_for(assessment.score)
        intent = replace(intent, tier=tier)
        notes.append(f"{assessment.explain()} auto_tier={tier}")
    arm: str | None = None
    if policy.experiments and (chosen := assign(policy.experiments, intent, key, request_id)):
        intent, arm = chosen
        notes.append(f"arm={arm}")
    return Resolution(intent, complexity, arm, " ".join(notes))
