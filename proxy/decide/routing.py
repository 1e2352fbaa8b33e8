"""plan(intent, catalog, snapshot) -> Plan: ranked candidates and a reason. Pure: no I/O, no clock.

Static rankings (cheap, quality, coding, balanced) are precomputed per pool when the
catalog loads, and the fast ranking when a health snapshot is built, so a decision walks
only as far down a ranked list as it needs to find ``limit`` eligible deployments.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

from proxy.catalog import DEFAULT_PREFER, PREFERENCES, TIERS, Catalog, Deployment, Model
from proxy.errors import RouterError, bad_request

from .intent import Intent, not_found, pinned_param

Allow = Callable[[Model], bool] | None  # an API key's filter on models; None: every model
# The request field to name when no model supports what the request uses.
CAPABILITY_PARAM = {
    "chat": "model",
    "tools": "tools",
    "json": "response_format",
    "vision": "messages",
    "logprobs": "logprobs",
    "fim": "model",
    "reasoning": "reasoning_effort",
}
# How a refusal words a capability, where its catalog name would puzzle: "fim" is also what
# any /v1/completions request needs, with or without a suffix.
CAPABILITY_WORDS = {
    "fim": "/v1/completions (text completion and fill-in-the-middle; chat models answer on "
    "/v1/chat/completions)",
}


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Deployment health as routing sees it at one moment."""

    ttft_ms: Mapping[str, float]  # deployment key -> expected TTFT
    open: frozenset[str] = frozenset()  # keys whose breaker refuses live traffic
    badness: Mapping[str, float] = field(default_factory=dict)  # lower is better
    # pool -> its deployments by TTFT
    fast_order: Mapping[str, tuple[Deployment, ...]] = field(default_factory=dict)
    # (tier or "any", prefer) -> that pool's Ranked on this snapshot, made on first use.
    ranked: dict[tuple[str, str], Ranked] = field(
        default_factory=dict, init=False, compare=False, repr=False
    )

    @classmethod
    def build(
        cls,
        catalog: Catalog,
        ttft_ms: Mapping[str, float],
        open: Iterable[str] = (),
        badness: Mapping[str, float] | None = None,
    ) -> Snapshot:
        deps = sorted(
            catalog.deployments(), key=lambda d: (ttft_ms.get(d.key, d.nominal_ttft_ms), d.key)
        )
        # One pass into the tiers' lists, not one generator over every deployment per tier.
        tiers: dict[str, list[Deployment]] = {tier: [] for tier in TIERS}
        by_name = catalog.by_name
        for d in deps:
            if (bucket := tiers.get(by_name[d.model_id].tier)) is not None:
                bucket.append(d)
        order = {"any": tuple(deps), **{tier: tuple(found) for tier, found in tiers.items()}}
        return cls(dict(ttft_ms), frozenset(open), dict(badness or {}), order)

    @classmethod
    def nominal(cls, catalog: Catalog) -> Snapshot:
        return cls.build(catalog, {d.key: d.nominal_ttft_ms for d in catalog.deployments()})

    def ttft(self, d: Deployment) -> float:
        return self.ttft_ms.get(d.key, d.nominal_ttft_ms)


def fast_ranks(snap: Snapshot, pool: str = "any") -> dict[str, int]:
    """Each deployment's place (1 = first) in the ``prefer=fast`` order of ``pool`` for a plain
    request; deployments whose breaker refuses traffic have none."""
    ranks: dict[str, int] = {}
    for d in snap.fast_order.get(pool, ()):
        if d.key not in snap.open:
            ranks[d.key] = len(ranks) + 1
    return ranks


# Frozen: a plan's candidates are made once per snapshot and shared by every request that
# takes that plan (``Ranked.plan_for``), so no request may change one.
@dataclass(frozen=True, slots=True)
class Candidate:
    model: Model
    deployment: Deployment


# The reason's TTFT figure is the deployment's estimate: a blend of its decayed mean and p90,
# pulled toward the catalog's nominal, the number /v1/router/status calls ttft_estimate_ms.
# It was first spelled ttft_ewma_ms, which it is not. Through 0.1.x the header gives it under
# both names (the old one first, where clients parse it); 0.2.0 drops the old one, and then
# Plan.reason takes the new name and ``spoken`` goes.
ESTIMATE = "ttft_estimate_ms"
DEPRECATED_ESTIMATE = "ttft_ewma_ms"


# Frozen: the usual plan is made once per snapshot, pool and prefer/tier and shared by every
# request that asks for it (``Ranked.plan_for``); a request's own notes go into a copy
# (``Resolution.annotate``), never into the shared one.
@dataclass(frozen=True, slots=True)
class Plan:
    candidates: tuple[Candidate, ...]
    reason: str  # quotes the TTFT estimate as DEPRECATED_ESTIMATE (0.1.x); see ``spoken``
    forced: bool = False  # every eligible deployment was open; these are the least bad
    estimate_ms: float | None = None  # the first candidate's TTFT estimate, when quoted


def spoken(plan: Plan) -> str:
    """The reason as ``x-router-reason`` and the request record carry it: the TTFT estimate
    under its name, right after its deprecated one."""
    if plan.estimate_ms is None:
        return plan.reason
    old = f"{DEPRECATED_ESTIMATE}={plan.estimate_ms:.0f}"
    return plan.reason.replace(old, f"{old} {ESTIMATE}={plan.estimate_ms:.0f}", 1)


def _by_score(catalog: Catalog, intent: Intent, snap: Snapshot) -> Iterator[Deployment]:
    """min_coding_score: the cheapest models that score enough, in the asked tier if any."""
    score = intent.min_coding_score
    assert score is not None
    models = (
        m for m in catalog.by_price if m.coding.value >= score and intent.tier in (None, m.tier)
    )
    return _each_deployment(models, snap)


class Ranked:
    """One pool's ranked deployments on one snapshot (a model's own by the snapshot's TTFT),
    and the head of the plan every request on that snapshot gets when nothing rules out a
    model among the first ``limit`` usable deployments: the candidates, and the capabilities,
    window and output limit they all have. A request within those takes the head as it is
    (~60 bytecodes where the checks on three deployments ran ~150 and a generator ~85), and
    the Plan made of it once, per (prefer, tier) as the request names them (~90 more)."""

    __slots__ = ("catalog", "head", "limit", "order", "outputs", "plans", "powers", "window")

    def __init__(
        self, catalog: Catalog, order: tuple[Deployment, ...], snap: Snapshot, limit: int
    ) -> None:
        self.catalog, self.order, self.limit = catalog, order, limit
        head: list[Candidate] = []
        powers: frozenset[str] | None = None
        self.window = self.outputs = math.inf
        for d in order:
            m = catalog.by_name[d.model_id]
            powers = m.capabilities if powers is None else powers & m.capabilities
            self.window = min(self.window, m.context_length)
            self.outputs = min(self.outputs, m.max_output_tokens)
            if d.key not in snap.open:
                head.append(Candidate(m, d))
                if len(head) >= limit:
                    break
        self.head, self.powers = tuple(head), powers or frozenset()
        self.plans: dict[tuple[str | None, str | None], Plan] = {}

    def plan_for(self, intent: Intent, window: int, snap: Snapshot) -> Plan | None:
        """The head's plan when ``intent`` (needing ``window`` tokens) fits it, else None."""
        if not (
            self.head
            and intent.needs <= self.powers
            and window <= self.window
            and intent.max_output_tokens <= self.outputs
        ):
            return None
        asked = (intent.prefer, intent.tier)  # all the head's reason reads of the intent
        made = self.plans.get(asked)
        if made is None:
            made = self.plans[asked] = _finish(intent, self.head, False, snap, self.catalog)
        return made


def _ranked(catalog: Catalog, intent: Intent, snap: Snapshot, limit: int) -> Ranked:
    pool = (intent.tier or "any", intent.prefer or DEFAULT_PREFER)
    known = snap.ranked.get(pool)
    if known is None or known.catalog is not catalog or known.limit != limit:
        if pool[1] == "fast":
            order = snap.fast_order.get(pool[0], ())
        else:
            order = tuple(_each_deployment(catalog.ranked[pool], snap))
        known = snap.ranked[pool] = Ranked(catalog, order, snap, limit)
    return known


def _each_deployment(models: Iterable[Model], snap: Snapshot) -> Iterator[Deployment]:
    """Each model's deployments, in ``models``' order; a model's own by expected TTFT."""
    for m in models:
        if len(m.deployments) == 1:
            yield m.deployments[0]
        else:
            yield from sorted(m.deployments, key=snap.ttft)


def _pinned(catalog: Catalog, intent: Intent, snap: Snapshot, allow: Allow) -> Iterator[Deployment]:
    seen: set[str] = set()
    for i, name in enumerate(intent.pinned):
        model = catalog.get(name)
        if model is None:
            raise not_found(name, catalog, allow, pinned_param(intent, i))
        if model.id in seen:
            continue
        seen.add(model.id)
        if not intent.needs <= model.capabilities:
            missing = sorted(intent.needs - model.capabilities)[0]
            raise bad_request(
                f"model {model.id!r} does not support {CAPABILITY_WORDS.get(missing, missing)}",
                CAPABILITY_PARAM[missing],
                "unsupported_feature",
            )
        yield from sorted(model.deployments, key=snap.ttft)


def _reason(
    intent: Intent, first: Candidate, estimate: float | None, forced: bool, catalog: Catalog
) -> str:
    m = first.model
    if intent.pinned:
        head = "pinned"
    else:
        head = f"prefer={intent.prefer} tier={intent.tier or 'any'}"
        if intent.min_coding_score is not None:
            head += f" min_coding_score={intent.min_coding_score:g} coding={m.coding.value:g}"
    if estimate is not None:
        detail = f"{DEPRECATED_ESTIMATE}={estimate:.0f}"
    elif intent.min_coding_score is not None:
        detail = catalog.figures.get(("cheap", m.id)) or PREFERENCES["cheap"].figure(m)
    else:
        prefer = intent.prefer or DEFAULT_PREFER
        detail = catalog.figures.get((prefer, m.id)) or PREFERENCES[prefer].figure(m)
    tail = " forced=all_open_least_bad" if forced else ""
    return f"{head} {detail}{tail}"


def plan(
    intent: Intent,
    catalog: Catalog,
    snap: Snapshot,
    limit: int,
    allow: Allow = None,
) -> Plan:
    """The ranked deployments to try, at most ``limit``; raises RouterError when none can serve.

    ``allow`` narrows the pool (an API key's allowed tiers and models) before ranking, so a
    restricted caller gets the best model it may use rather than a refusal."""
    writes = intent.max_output_tokens
    window = intent.prompt_tokens + writes
    source: Iterable[Deployment]
    if intent.pinned:
        source = _pinned(catalog, intent, snap, allow)
    elif intent.min_coding_score is not None:
        source = _by_score(catalog, intent, snap)
    else:
        ranked = _ranked(catalog, intent, snap, limit)
        if allow is None and (shared := ranked.plan_for(intent, window, snap)) is not None:
            return shared
        source = ranked.order
    chosen: list[Candidate] = []
    open_ones: list[Candidate] = []
    too_small: list[Model] = []
    too_short: list[Model] = []  # the window fits, but the output limit is below max_tokens
    incapable: list[Model] = []
    denied: list[Model] = []
    # The checks are inline, with what they read in locals: three calls a deployment cost
    # ~90 bytecodes for a three-candidate plan.
    needs, by_name, refusing = intent.needs, catalog.by_name, snap.open
    for d in source:
        model = by_name[d.model_id]
        if allow is not None and not allow(model):
            denied.append(model)
        elif not needs <= model.capabilities:
            incapable.append(model)
        elif window > model.context_length:
            too_small.append(model)
        elif writes > model.max_output_tokens:
            # The model cannot write as many tokens as the client reserved (an upstream
            # would answer a larger max_tokens with a 400).
            too_short.append(model)
        elif d.key in refusing:
            open_ones.append(Candidate(model, d))
        else:
            chosen.append(Candidate(model, d))
            if len(chosen) >= limit:
                break
    forced = False
    if not chosen and open_ones:
        # Every eligible deployment is open: try the least bad rather than fail blind.
        open_ones.sort(
            key=lambda c: (snap.badness.get(c.deployment.key, math.inf), c.deployment.key)
        )
        chosen, forced = open_ones[:limit], True
    if not chosen:
        raise _nothing_eligible(intent, too_small, too_short, incapable, denied, catalog)
    return _finish(intent, tuple(chosen), forced, snap, catalog)


def _finish(
    intent: Intent, chosen: tuple[Candidate, ...], forced: bool, snap: Snapshot, catalog: Catalog
) -> Plan:
    first = chosen[0]
    quotes = intent.prefer == "fast" or bool(intent.pinned)
    estimate = snap.ttft(first.deployment) if quotes else None
    return Plan(chosen, _reason(intent, first, estimate, forced, catalog), forced, estimate)


def _nothing_eligible(
    intent: Intent,
    too_small: list[Model],
    too_short: list[Model],
    incapable: list[Model],
    denied: list[Model],
    catalog: Catalog,
) -> RouterError:
    """Why nothing fits, for the first reason that ruled models out, in this order."""
    if too_short:
        return _writes_too_little(intent, too_short)
    if too_small:
        largest = max(m.context_length for m in too_small)
        return RouterError(
            400,
            f"The request needs about {intent.prompt_tokens + intent.max_output_tokens} tokens "
            f"(prompt estimate plus max_tokens) but the largest context window among eligible "
            f"models is {largest} tokens.",
            param="messages" if intent.endpoint == "chat" else "prompt",
            code="context_length_exceeded",
        )
    if incapable:
        common = frozenset.intersection(*(m.capabilities for m in incapable))
        need = sorted(intent.needs - common or intent.needs)[0]
        pool = f"tier {intent.tier}" if intent.tier else "any tier"
        return bad_request(
            f"no enabled model in {pool} supports {CAPABILITY_WORDS.get(need, need)}",
            CAPABILITY_PARAM[need],
            "unsupported_feature",
        )
    if denied:
        pool = f"tier {intent.tier}" if intent.tier else "any tier"
        return RouterError(
            403,
            f"this API key may not use any model in {pool} (the best match was "
            f"{denied[0].id!r}, tier {denied[0].tier}); ask for a tier or model the key allows",
            type="permission_error",
            param="tier" if intent.tier else "model",
            code="model_not_allowed",
        )
    return _none_offered(intent, catalog)


def _writes_too_little(intent: Intent, too_short: list[Model]) -> RouterError:
    """The context fits but ``max_tokens`` is above what the model(s) can write."""
    field = intent.max_output_param
    if intent.pinned:
        m = too_short[0]
        return bad_request(
            f"'{field}' is {intent.max_output_tokens} but {m.id} writes at most "
            f"{m.max_output_tokens} output tokens; lower '{field}' to {m.max_output_tokens} "
            "or less",
            field,
            "max_tokens_exceeds_model_limit",
        )
    longest = max(too_short, key=lambda m: (m.max_output_tokens, m.id))
    pool = f"tier {intent.tier}" if intent.tier else "any tier"
    return bad_request(
        f"'{field}' is {intent.max_output_tokens} but no eligible model in {pool} writes "
        f"that many output tokens (the largest limit is {longest.max_output_tokens}, "
        f"{longest.id})",
        field,
        "max_tokens_exceeds_model_limit",
    )


def _none_offered(intent: Intent, catalog: Catalog) -> RouterError:
    """No model reached the checks: none enabled in the pool, or none meets min_coding_score."""
    where = f"tier {intent.tier!r}" if intent.tier else "the catalog"
    score = intent.min_coding_score
    offered = [m for m in catalog.models if intent.tier in (None, m.tier)]
    if score is not None and offered:
        # The client asked for more than any model offers: its request, not our outage.
        best = max(m.coding.value for m in offered)
        return bad_request(
            f"no enabled model in {where} has a coding score of at least {score:g} "
            f"(the highest is {best:g}); lower min_coding_score",
            "min_coding_score",
            "no_model_meets_min_coding_score",
        )
    return RouterError(
        503,
        f"no model in {where} is enabled; configure a provider for it (see /v1/models)",
        type="server_error",
        param="tier" if intent.tier else None,
        code="no_eligible_model",
    )
