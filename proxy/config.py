"""User configuration: TOML -> frozen dataclasses. Unknown keys are errors naming their path.

Built-in provider definitions live here; a user config may override their fields, add
providers, add models and override catalog entries.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from probes.breaker import BreakerPolicy

from .catalog import PREFERS, Catalog, CatalogError, Model, load_bundled, parse_model

ProviderKind = Literal["openai", "anthropic", "bedrock"]
PROVIDER_KINDS = ("openai", "anthropic", "bedrock")


class ConfigError(ValueError):
    """The config is invalid; the message starts with the offending key's path."""


@dataclass(frozen=True, slots=True)
class ServerSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    # An 80k-token document is ~320 KB of text; JSON escaping and images in base64
    # need room on top, so 8 MiB.
    max_body_bytes: int = 8 * 1024 * 1024
    # A client that stops reading: a write making no progress for this long ends the stream.
    write_stall_s: float = 30.0
    # An upstream that goes quiet mid-stream for this long has stalled.
    upstream_idle_s: float = 60.0
    connect_timeout_s: float = 5.0
    # On SIGTERM, in-flight streams get this long to finish.
    drain_s: float = 20.0


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    max_attempts: int = 3
    # Fallbacks in flight may be at most this fraction of active requests (with a floor),
    # so an outage cannot turn into a retry storm.
    retry_budget_ratio: float = 0.2
    retry_budget_min: int = 5
    # Whole-answer deadline for non-streaming requests (they have no first token to time).
    request_timeout_s: float = 300.0
    # Deadline for the first content-bearing chunk, per prefer; "pinned" for named models.
    ttft_deadline_ms: Mapping[str, float] = field(
        default_factory=lambda: {
            "fast": 2_000.0,
            "cheap": 20_000.0,
            "balanced": 20_000.0,
            "quality": 30_000.0,
            "coding": 30_000.0,
            "pinned": 30_000.0,
        }
    )

    def deadline_s(self, prefer: str | None) -> float:
        return self.ttft_deadline_ms.get(prefer or "pinned", self.ttft_deadline_ms["pinned"]) / 1e3


@dataclass(frozen=True, slots=True)
class ProviderConfig:
    name: str
    kind: ProviderKind
    base_url: str = ""
    api_key_env: str = ""
    api_key_credential: str = ""  # systemd LoadCredential name, read from $CREDENTIALS_DIRECTORY
    region: str = ""
    endpoint_url: str = ""
    enabled: bool | None = None  # None: enabled when its credentials are present


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    enabled: bool = True
    # 30 s keeps a 300 s half-life table fed with ~10 samples per half-life per
    # deployment while costing well under a cent a day per model at max_tokens=1.
    interval_s: float = 30.0
    jitter: float = 0.2
    # Latency shifts by the hour; 5 minutes forgets a bad spell quickly but not from one probe.
    half_life_s: float = 300.0
    concurrency: int = 4
    max_daily_spend_usd: float = 1.0
    timeout_s: float = 10.0


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings = ServerSettings()
    routing: RoutingSettings = RoutingSettings()
    probes: ProbeConfig = ProbeConfig()
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog.build(()))
    source: str = "<defaults>"

    def with_providers(self, providers: Mapping[str, ProviderConfig]) -> Config:
        return replace(self, providers=dict(providers))


BUILTIN_PROVIDERS: dict[str, ProviderConfig] = {
    "openai": ProviderConfig(
        "openai", "openai", "https://api.openai.com/v1", "OPENAI_API_KEY", "openai_api_key"
    ),
    "anthropic": ProviderConfig(
        "anthropic",
        "anthropic",
        "https://api.anthropic.com",
        "ANTHROPIC_API_KEY",
        "anthropic_api_key",
    ),
    "google": ProviderConfig(
        "google",
        "openai",
        "https://generativelanguage.googleapis.com/v1beta/openai",
        "GEMINI_API_KEY",
        "gemini_api_key",
    ),
    "openrouter": ProviderConfig(
        "openrouter",
        "openai",
        "https://openrouter.ai/api/v1",
        "OPENROUTER_API_KEY",
        "openrouter_api_key",
    ),
    "deepseek": ProviderConfig(
        "deepseek",
        "openai",
        "https://api.deepseek.com/beta",
        "DEEPSEEK_API_KEY",
        "deepseek_api_key",
    ),
    "bedrock": ProviderConfig("bedrock", "bedrock", region="us-east-1"),
}

# Overrides may change these catalog fields (or drop a model with enabled = false).
_OVERRIDE_KEYS = {
    "tier",
    "input_price",
    "output_price",
    "context_length",
    "max_output_tokens",
    "nominal_ttft_ms",
    "aliases",
    "enabled",
}


def _check(table: Any, cls: type, path: str, extra: set[str] | None = None) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: expected a table")
    allowed = {f.name for f in fields(cls)} | (extra or set())
    for key in table:
        if key not in allowed:
            raise ConfigError(f"{path}.{key}: unknown key")
    return table


def _typed(cls: type, raw: dict[str, Any], path: str, **fixed: Any) -> Any:
    """Build a settings dataclass from a table, checking each value against its default's type."""
    defaults = cls(**fixed) if fixed else cls()
    values: dict[str, Any] = dict(fixed)
    for f in fields(cls):
        if f.name not in raw:
            continue
        value, default = raw[f.name], getattr(defaults, f.name)
        if isinstance(default, bool) or (default is None and f.name == "enabled"):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        else:
            ok = isinstance(value, dict)
        if not ok:
            raise ConfigError(f"{path}.{f.name}: expected {type(default).__name__}, got {value!r}")
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ConfigError(f"{path}.{f.name}: must not be negative")
        values[f.name] = value
    return cls(**values)


def _routing(raw: dict[str, Any]) -> RoutingSettings:
    _check(raw, RoutingSettings, "routing")
    deadlines = raw.get("ttft_deadline_ms")
    base: RoutingSettings = _typed(
        RoutingSettings, {k: v for k, v in raw.items() if k != "ttft_deadline_ms"}, "routing"
    )
    if deadlines is None:
        return base
    if not isinstance(deadlines, dict):
        raise ConfigError("routing.ttft_deadline_ms: expected a table")
    merged = dict(base.ttft_deadline_ms)
    for key, value in deadlines.items():
        if key not in (*PREFERS, "pinned"):
            raise ConfigError(f"routing.ttft_deadline_ms.{key}: unknown key")
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"routing.ttft_deadline_ms.{key}: expected a positive number")
        merged[key] = float(value)
    if base.max_attempts < 1:
        raise ConfigError("routing.max_attempts: must be at least 1")
    return replace(base, ttft_deadline_ms=merged)


# The [breaker] keys a user may set; the rest of BreakerPolicy are internal bounds.
BREAKER_KEYS = (
    "consecutive_failures",
    "failure_rate",
    "window_s",
    "min_requests",
    "slow_ttft_ms",
    "slow_rate",
    "base_open_s",
    "max_open_s",
    "jitter",
    "half_open_successes",
    "max_retry_after_s",
)


def _breaker(raw: Any) -> BreakerPolicy:
    if not isinstance(raw, dict):
        raise ConfigError("breaker: expected a table")
    for key in raw:
        if key not in BREAKER_KEYS:
            raise ConfigError(f"breaker.{key}: unknown key")
    defaults = BreakerPolicy()
    values: dict[str, Any] = {}
    for key, value in raw.items():
        default = getattr(defaults, key)
        if isinstance(default, int) and not isinstance(default, bool):
            ok = isinstance(value, int) and not isinstance(value, bool)
        else:  # floats, and slow_ttft_ms whose default is None (no threshold)
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        if not ok:
            kind = "an integer" if isinstance(default, int) else "a number"
            raise ConfigError(f"breaker.{key}: expected {kind}, got {value!r}")
        values[key] = value
    try:
        return BreakerPolicy(**values)
    except ValueError as exc:
        # BreakerPolicy lists every problem; the prefix names the section.
        raise ConfigError(f"breaker: {exc}") from None


def _providers(raw: Any) -> dict[str, ProviderConfig]:
    providers = dict(BUILTIN_PROVIDERS)
    if raw is None:
        return providers
    if not isinstance(raw, dict):
        raise ConfigError("providers: expected a table of provider tables")
    for name, table in raw.items():
        path = f"providers.{name}"
        _check(table, ProviderConfig, path)
        if "name" in table:
            raise ConfigError(f"{path}.name: unknown key (the table's name is the provider's name)")
        base = providers.get(name)
        kind = table.get("kind", base.kind if base else None)
        if kind not in PROVIDER_KINDS:
            raise ConfigError(f"{path}.kind: expected one of {', '.join(PROVIDER_KINDS)}")
        merged = {f.name: getattr(base, f.name) for f in fields(ProviderConfig)} if base else {}
        merged.update(table)
        merged.pop("name", None)
        merged.pop("kind", None)
        providers[name] = _typed(ProviderConfig, merged, path, name=name, kind=kind)
        if providers[name].kind != "bedrock" and not providers[name].base_url:
            raise ConfigError(f"{path}.base_url: required for kind {kind!r}")
    return providers


def _apply_overrides(models: list[Model], raw: Any) -> list[Model]:
    if raw is None:
        return models
    if not isinstance(raw, dict):
        raise ConfigError("overrides: expected a table of model tables")
    by_id = {m.id: m for m in models}
    for model_id, table in raw.items():
        path = f"overrides.{model_id}"
        if model_id not in by_id:
            raise ConfigError(f"{path}: no catalog model with that id")
        if not isinstance(table, dict):
            raise ConfigError(f"{path}: expected a table")
        for key in table:
            if key not in _OVERRIDE_KEYS:
                raise ConfigError(f"{path}.{key}: unknown key")
        if table.get("enabled") is False:
            del by_id[model_id]
            continue
        changes = {k: v for k, v in table.items() if k != "enabled"}
        if "aliases" in changes:
            changes["aliases"] = tuple(changes["aliases"])
        for key in ("input_price", "output_price", "nominal_ttft_ms"):
            if key in changes:
                changes[key] = float(changes[key])
        try:
            by_id[model_id] = replace(by_id[model_id], **changes)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return list(by_id.values())


TOP_LEVEL = {"server", "routing", "probes", "breaker", "providers", "models", "overrides"}


def parse_config(data: Mapping[str, Any], source: str = "<string>") -> Config:
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown key")
    server = _typed(
        ServerSettings, _check(data.get("server", {}), ServerSettings, "server"), "server"
    )
    probes = _typed(ProbeConfig, _check(data.get("probes", {}), ProbeConfig, "probes"), "probes")
    routing = _routing(data.get("routing", {}))
    breaker = _breaker(data.get("breaker", {}))
    providers = _providers(data.get("providers"))
    try:
        models = load_bundled()
        extra = data.get("models", [])
        if not isinstance(extra, list):
            raise ConfigError("models: expected an array of tables ([[models]])")
        added = [parse_model(raw, f"models[{i}]") for i, raw in enumerate(extra)]
        replaced = {m.id for m in added}
        models = [m for m in models if m.id not in replaced] + added
        models = _apply_overrides(models, data.get("overrides"))
        for m in models:
            for d in m.deployments:
                if d.provider not in providers:
                    raise ConfigError(f"models.{m.id}.deployments: unknown provider {d.provider!r}")
        catalog = Catalog.build(models)
    except CatalogError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        server=server,
        routing=routing,
        probes=probes,
        breaker=breaker,
        providers=providers,
        catalog=catalog,
        source=source,
    )


def load_config(path: str | os.PathLike[str] | None) -> Config:
    if path is None:
        return parse_config({}, "<defaults>")
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: not valid TOML: {exc}") from None
    return parse_config(data, str(p))
