"""The model catalog: models, their deployments, prices, windows, capabilities and scores.

Loaded from the bundled ``catalog.toml`` (and user additions/overrides from config) into
frozen dataclasses; the routing indexes built here are computed once per catalog load.
"""

from __future__ import annotations

import difflib
import math
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from importlib import resources
from typing import Any, Literal, get_args

Tier = Literal["economy", "standard", "premium"]
Prefer = Literal["cheap", "fast", "balanced", "quality", "coding"]
# "chat": serves /v1/chat/completions (completions-only models such as instruct ones lack it);
# "fim": serves legacy /v1/completions with prompt + suffix.
Capability = Literal["chat", "tools", "json", "vision", "logprobs", "fim", "reasoning"]

TIERS: tuple[Tier, ...] = get_args(Tier)
PREFERS: tuple[Prefer, ...] = get_args(Prefer)
CAPABILITIES: frozenset[str] = frozenset(get_args(Capability))

# Price blend for "expected price": chat traffic is input-heavy; 3 input tokens per output.
INPUT_WEIGHT = 0.75
OUTPUT_WEIGHT = 0.25


# How much of a client-supplied model name an error message quotes.
MAX_SHOWN_NAME = 256


class CatalogError(ValueError):
    """A catalog or override entry is malformed; the message names the key path."""


@dataclass(frozen=True, slots=True)
class Deployment:
    """One model served by one provider under the provider's own model id."""

    model_id: str
    provider: str
    upstream_id: str
    nominal_ttft_ms: float
    # For a server that takes no ``suffix`` (vLLM, llama.cpp): the FIM template it is sent in
    # (a key of ``providers.fim.TEMPLATES``); "" sends ``suffix`` as it is.
    fim_template: str = ""
    # Built once: routing, health and dispatch look deployments up by it on every request.
    key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", f"{self.model_id}@{self.provider}")


@dataclass(frozen=True, slots=True)
class Score:
    value: float
    source: str
    date: str


@dataclass(frozen=True, slots=True)
class Model:
    id: str
    name: str
    tier: Tier
    context_length: int
    max_output_tokens: int
    input_price: float  # USD per 1M input tokens
    output_price: float  # USD per 1M output tokens
    pricing_source: str
    capabilities: frozenset[str]
    quality: Score
    coding: Score
    nominal_ttft_ms: float
    tokens_per_second: float
    deployments: tuple[Deployment, ...]
    aliases: tuple[str, ...] = ()
    owned_by: str = ""

    @property
    def blended_price(self) -> float:
        return INPUT_WEIGHT * self.input_price + OUTPUT_WEIGHT * self.output_price

    @property
    def balanced_score(self) -> float:
        """Quality per log-dollar: every 10x in blended price costs 10 quality points.

        Deterministic and scale-free; a model at $0 is treated as $0.01 so that the
        log stays finite.
        """
        return self.quality.value - 10.0 * math.log10(max(self.blended_price, 0.01))

    def cost_usd(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6


@dataclass(frozen=True, slots=True)
class Preference:
    """What one ``prefer`` means, in one place: how it ranks models before any measurement,
    the figure the reason header shows for the chosen model, and the default deadline for a
    first token ([routing] ttft_deadline_ms overrides it)."""

    # Tie-breaks are deterministic: then cheaper, then higher quality, then id order (the
    # id comparison is done by the caller's stable sort over id-sorted input).
    sort_key: Callable[[Model], tuple[float, ...]]
    # The reason's figure for the chosen model; "fast" reads the live estimate instead.
    figure: Callable[[Model], str]
    ttft_deadline_ms: float


PREFERENCES: Mapping[Prefer, Preference] = {
    "cheap": Preference(
        lambda m: (m.blended_price, -m.quality.value),
        lambda m: f"blended_usd_per_m={m.blended_price:.3g}",
        20_000.0,
    ),
    "fast": Preference(
        lambda m: (m.nominal_ttft_ms, m.blended_price),
        lambda m: f"nominal_ttft_ms={m.nominal_ttft_ms:.0f}",
        2_000.0,
    ),
    "balanced": Preference(
        lambda m: (-m.balanced_score, m.blended_price),
        lambda m: f"balanced_score={m.balanced_score:.1f}",
        20_000.0,
    ),
    "quality": Preference(
        lambda m: (-m.quality.value, m.blended_price),
        lambda m: f"quality={m.quality.value:g}",
        30_000.0,
    ),
    "coding": Preference(
        lambda m: (-m.coding.value, m.blended_price),
        lambda m: f"coding={m.coding.value:g}",
        30_000.0,
    ),
}
# What a request that names no preference gets.
DEFAULT_PREFER: Prefer = "balanced"
# The first-token deadline for a pinned model.
PINNED_TTFT_DEADLINE_MS = 30_000.0


def _sort_key(prefer: Prefer, m: Model) -> tuple[float, ...]:
    return PREFERENCES[prefer].sort_key(m)


@dataclass(frozen=True, slots=True)
class Catalog:
    models: tuple[Model, ...]
    by_name: Mapping[str, Model] = field(default_factory=dict)
    # (tier or "any", prefer) -> models in rank order; static prefers only.
    ranked: Mapping[tuple[str, str], tuple[Model, ...]] = field(default_factory=dict)
    # models by ascending blended price, for min_coding_score (Pareto choice).
    by_price: tuple[Model, ...] = ()
    # (prefer, model id) -> the reason's figure for that model, formatted once.
    figures: Mapping[tuple[str, str], str] = field(default_factory=dict)
    # What deployments() gives: the health snapshot, metrics and status walk it on a timer.
    every_deployment: tuple[Deployment, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        every = tuple(d for m in self.models for d in m.deployments)
        object.__setattr__(self, "every_deployment", every)

    @classmethod
    def build(cls, models: Iterable[Model]) -> Catalog:
        ordered = tuple(sorted(models, key=lambda m: m.id))
        by_name: dict[str, Model] = {}
        for m in ordered:
            for name in (m.id, *m.aliases):
                if name in by_name and by_name[name] is not m:
                    raise CatalogError(
                        f"models.{m.id}: name {name!r} also used by {by_name[name].id}"
                    )
                by_name[name] = m
        ranked: dict[tuple[str, str], tuple[Model, ...]] = {}
        for pool in ("any", *TIERS):
            members = [m for m in ordered if pool == "any" or m.tier == pool]
            for prefer in PREFERS:
                ranked[(pool, prefer)] = tuple(sorted(members, key=partial(_sort_key, prefer)))
        by_price = tuple(sorted(ordered, key=lambda m: _sort_key("cheap", m)))
        figures: dict[tuple[str, str], str] = {
            (p, m.id): PREFERENCES[p].figure(m) for p in PREFERS for m in ordered
        }
        return cls(ordered, by_name, ranked, by_price, figures)

    def get(self, name: str) -> Model | None:
        return self.by_name.get(name)

    def nearest(
        self, name: str, n: int = 3, keep: Callable[[Model], bool] | None = None
    ) -> list[str]:
        """The ids of the models whose id or alias reads most like ``name`` (for a 404's
        suggestions); best first, at most ``n``, only models ``keep`` passes (a key's own).
        Only on the error path: O(names)."""
        lowered = {k.lower(): m.id for k, m in self.by_name.items() if keep is None or keep(m)}
        found = difflib.get_close_matches(name[:MAX_SHOWN_NAME].lower(), lowered, n * 3, 0.6)
        return list(dict.fromkeys(lowered[k] for k in found))[:n]

    def deployments(self) -> Iterable[Deployment]:
        return self.every_deployment

    def only_providers(self, enabled: Iterable[str]) -> Catalog:
        """The catalog restricted to deployments on enabled providers; models left with
        no deployment are dropped."""
        allowed = set(enabled)
        kept = []
        for m in self.models:
            deps = tuple(d for d in m.deployments if d.provider in allowed)
            if deps:
                kept.append(replace(m, deployments=deps))
        return Catalog.build(kept)


_MODEL_KEYS = {
    "id",
    "name",
    "aliases",
    "owned_by",
    "tier",
    "context_length",
    "max_output_tokens",
    "input_price",
    "output_price",
    "pricing_source",
    "capabilities",
    "quality",
    "coding",
    "nominal_ttft_ms",
    "tokens_per_second",
    "deployments",
}
_SCORE_KEYS = {"value", "source", "date"}
_DEPLOYMENT_KEYS = {"provider", "upstream_id", "nominal_ttft_ms", "fim_template"}


def _check_keys(table: Mapping[str, Any], allowed: set[str], path: str) -> None:
    for key in table:
        if key not in allowed:
            raise CatalogError(f"{path}.{key}: unknown key")


def _require(table: Mapping[str, Any], key: str, kind: type | tuple[type, ...], path: str) -> Any:
    if key not in table:
        raise CatalogError(f"{path}.{key}: missing")
    value = table[key]
    if isinstance(value, bool) or not isinstance(value, kind):
        want = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
        raise CatalogError(f"{path}.{key}: expected {want}")
    return value


def _score(table: Mapping[str, Any], key: str, path: str) -> Score:
    raw = _require(table, key, dict, path)
    _check_keys(raw, _SCORE_KEYS, f"{path}.{key}")
    value = float(_require(raw, "value", (int, float), f"{path}.{key}"))
    if not 0.0 <= value <= 100.0:
        raise CatalogError(f"{path}.{key}.value: must be within 0-100")
    return Score(
        value=value,
        source=_require(raw, "source", str, f"{path}.{key}"),
        date=_require(raw, "date", str, f"{path}.{key}"),
    )


def _deployments(
    raw: Mapping[str, Any], model_id: str, nominal: float, path: str
) -> list[Deployment]:
    deps_raw = _require(raw, "deployments", list, path)
    if not deps_raw:
        raise CatalogError(f"{path}.deployments: at least one deployment is required")
    deployments: list[Deployment] = []
    for i, d in enumerate(deps_raw):
        dpath = f"{path}.deployments[{i}]"
        if not isinstance(d, dict):
            raise CatalogError(f"{dpath}: expected a table")
        _check_keys(d, _DEPLOYMENT_KEYS, dpath)
        provider = _require(d, "provider", str, dpath)
        if any(dep.provider == provider for dep in deployments):
            raise CatalogError(f"{dpath}.provider: {provider!r} already serves this model")
        dep_ttft = (
            float(_require(d, "nominal_ttft_ms", (int, float), dpath))
            if "nominal_ttft_ms" in d
            else nominal
        )
        if dep_ttft <= 0:
            raise CatalogError(f"{dpath}.nominal_ttft_ms: must be positive")
        # Checked against the adapters' templates by proxy.config (the catalog sits beside
        # the providers, not above them).
        template = _require(d, "fim_template", str, dpath) if "fim_template" in d else ""
        deployments.append(
            Deployment(
                model_id=model_id,
                provider=provider,
                upstream_id=_require(d, "upstream_id", str, dpath),
                nominal_ttft_ms=dep_ttft,
                fim_template=template,
            )
        )
    return deployments


def parse_model(raw: Mapping[str, Any], path: str) -> Model:
    """One ``[[models]]`` table -> Model; raises CatalogError naming the key path."""
    _check_keys(raw, _MODEL_KEYS, path)
    model_id = _require(raw, "id", str, path)
    tier: Tier = _require(raw, "tier", str, path)
    if tier not in TIERS:
        raise CatalogError(f"{path}.tier: {tier!r} is not one of {', '.join(TIERS)}")
    caps = _require(raw, "capabilities", list, path)
    for cap in caps:
        if cap not in CAPABILITIES:
            raise CatalogError(f"{path}.capabilities: unknown capability {cap!r}")
    nominal = float(_require(raw, "nominal_ttft_ms", (int, float), path))
    aliases = raw.get("aliases", [])
    if not isinstance(aliases, list) or not all(isinstance(a, str) and a for a in aliases):
        raise CatalogError(f"{path}.aliases: expected an array of strings")
    for key in ("name", "owned_by"):
        if key in raw and not isinstance(raw[key], str):
            raise CatalogError(f"{path}.{key}: expected str")
    for key in ("nominal_ttft_ms", "tokens_per_second", "context_length", "max_output_tokens"):
        if _require(raw, key, (int, float), path) <= 0:
            raise CatalogError(f"{path}.{key}: must be positive")
    deployments = _deployments(raw, model_id, nominal, path)
    for key in ("input_price", "output_price"):
        if _require(raw, key, (int, float), path) < 0:
            raise CatalogError(f"{path}.{key}: must not be negative")
    return Model(
        id=model_id,
        name=str(raw.get("name", model_id)),
        aliases=tuple(aliases),
        owned_by=str(raw.get("owned_by", "")),
        tier=tier,
        context_length=int(raw["context_length"]),
        max_output_tokens=int(raw["max_output_tokens"]),
        input_price=float(raw["input_price"]),
        output_price=float(raw["output_price"]),
        pricing_source=_require(raw, "pricing_source", str, path),
        capabilities=frozenset(caps),
        quality=_score(raw, "quality", path),
        coding=_score(raw, "coding", path),
        nominal_ttft_ms=nominal,
        tokens_per_second=float(_require(raw, "tokens_per_second", (int, float), path)),
        deployments=tuple(deployments),
    )


def parse_models(raw_models: Iterable[Mapping[str, Any]], prefix: str = "models") -> list[Model]:
    return [parse_model(raw, f"{prefix}[{i}]") for i, raw in enumerate(raw_models)]


def load_bundled() -> list[Model]:
    text = resources.files("proxy").joinpath("catalog.toml").read_text(encoding="utf-8")
    data = tomllib.loads(text)
    _check_keys(data, {"models"}, "catalog")
    return parse_models(data.get("models", []))
