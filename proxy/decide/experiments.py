"""Traffic experiments: which requests an experiment takes, which arm each one lands in,
and what the treatment changes. Pure; assignment is a hash, so it is stable per request id.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import replace

from .intent import Intent
from .policy import Experiment
from .tokens import bearer, hash_key

# Buckets per experiment: percentages resolve to 0.01 %.
BUCKETS = 10_000


def bucket(name: str, request_id: str) -> int:
    """Where a request id falls for one experiment, in [0, BUCKETS). Salting with the name
    keeps the arms of different experiments independent of each other."""
    digest = hashlib.blake2b(f"{name}\0{request_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % BUCKETS


def in_treatment(e: Experiment, request_id: str) -> bool:
    return bucket(e.name, request_id) < round(e.percent * BUCKETS / 100)


def key_id(authorization: str | None) -> str | None:
    """The client key's id for matching: the SHA-256 hex digest of the bearer token (the
    form access control stores keys in); never the key itself."""
    token = bearer(authorization)
    return hash_key(token) if token is not None else None


def matches(e: Experiment, intent: Intent, key: str | None) -> bool:
    if not e.enabled or intent.pinned:
        return False
    m = e.match
    if m.key is not None and (
        key is None or not (key == m.key or (len(m.key) >= 8 and key.startswith(m.key)))
    ):
        return False
    if m.prefer is not None and intent.prefer != m.prefer:
        return False
    if m.task is not None and intent.task != m.task:
        return False
    if m.tier is not None:
        return intent.tier_auto if m.tier == "auto" else intent.tier == m.tier
    return True


def treated(e: Experiment, intent: Intent) -> Intent:
    """The intent as the experiment's treatment arm routes it."""
    if e.model is not None:
        return replace(intent, pinned=(e.model,), prefer=None, tier=None, min_coding_score=None)
    return replace(
        intent,
        tier=e.tier if e.tier is not None else intent.tier,
        prefer=e.prefer if e.prefer is not None else intent.prefer,
    )


def assign(
    experiments: Iterable[Experiment], intent: Intent, key: str | None, request_id: str
) -> tuple[Intent, str] | None:
    """(intent to route, arm) for the first experiment that matches; None when none does.
    A request is in at most one experiment, so arms never mix two changes."""
    for e in experiments:
        if matches(e, intent, key):
            if in_treatment(e, request_id):
                return treated(e, intent), f"{e.name}:treatment"
            return intent, f"{e.name}:control"
    return None
