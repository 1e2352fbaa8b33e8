# Over 400 lines: one schema, one reader: each section's dataclass and checks, side by side.
"""User configuration: TOML -> frozen dataclasses. Unknown keys are errors naming their path.

[probes] and [breaker] are the measuring layer's own dataclasses (probes.loop.ProbeSettings,
probes.breaker.BreakerPolicy), filled and checked from here. Built-in provider definitions
live here; a user config may override their fields, add providers, add models and override
catalog entries.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import SplitResult, urlsplit

from probes.breaker import BreakerPolicy
from probes.loop import ProbeSettings, ProbeSettingsError
from proxy.decide.fields import FieldPolicy, check_extra
from proxy.decide.policy import TOP_LEVEL_KEYS as POLICY_KEYS
from proxy.decide.policy import Policy, PolicyError, parse_policy

from .catalog import (
    PINNED_TTFT_DEADLINE_MS,
    PREFERENCES,
    PREFERS,
    TIERS,
    Catalog,
    CatalogError,
    Deployment,
    Model,
    load_bundled,
    parse_model,
)
from .providers.fim import TEMPLATES as FIM_TEMPLATES

ProviderKind = Literal["openai", "anthropic", "bedrock", "mistral"]
# Bedrock's cross-region inference profiles are named after a geography, and a profile can
# only be invoked from a region in it: us.* from us-*, eu.* from eu-*, apac.* from ap-*.
PROFILE_BY_REGION = {"us": "us", "eu": "eu", "ap": "apac"}
PROVIDER_KINDS = ("openai", "anthropic", "bedrock", "mistral")


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
    # With `serve --workers N`: worker i also listens on worker_port_base + i (same host),
    # so Prometheus can scrape each worker's /metrics; 0 = only the shared port.
    worker_port_base: int = 0
    # An idle upstream connection is kept this long. A minute outlasts a developer reading
    # code between completions (and the 30 s probe interval), and is under the idle limits
    # providers' load balancers are known to keep (60-120 s or more).
    upstream_keepalive_s: float = 60.0
    # Keep a connection to every upstream the config routes to open and fresh (serve/warm.py):
    # pre-connect at start and reload, re-use an idle one before it expires.
    warm_connections: bool = True
    # Resolved upstream addresses are cached this long (aiohttp's DNS cache).
    dns_cache_s: float = 300.0
    # Without [[keys]], browsers: origins besides loopback ones that may call the router
    # ("https://chat.example.com"; "*" any), and Host names besides loopback ones
    # (a reverse proxy in front that passes its own name; "*" any). proxy/http/cross_site.py.
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()


def _default_deadlines() -> dict[str, float]:
    deadlines: dict[str, float] = {k: p.ttft_deadline_ms for k, p in PREFERENCES.items()}
    deadlines["pinned"] = PINNED_TTFT_DEADLINE_MS
    return deadlines


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
    ttft_deadline_ms: Mapping[str, float] = field(default_factory=_default_deadlines)

    def deadline_s(self, prefer: str | None) -> float:
        return self.ttft_deadline_ms.get(prefer or "pinned", self.ttft_deadline_ms["pinned"]) / 1e3


@dataclass(frozen=True, slots=True)
class HedgeSettings:
    """``[hedging]``: hedged first-token races (``proxy/serve/hedge.py``)."""

    enabled: bool = True
    # prefer values hedged by default; a key or a request may override.
    prefer: tuple[str, ...] = ("fast",)
    # At most this share of eligible requests hedges (a token bucket per instance).
    budget_percent: float = 10.0
    # Hedges that may happen back to back when the budget is full.
    burst: float = 5.0
    # The p90 delay is clamped to this range: never hedge a primary given less than the
    # floor, never wait more than the ceiling.
    min_delay_ms: float = 50.0
    max_delay_ms: float = 1500.0


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
    # A PEM file of CAs to trust for this provider's endpoint instead of the system store: a
    # private gateway, a local server behind TLS, the simulator's TLS mode.
    ca_file: str = ""
    # Bedrock: the cross-region inference profile prefix for catalog ids that start with
    # "us." ("eu", "apac", ...; "none" keeps them). "": from the region (eu-* -> eu,
    # ap-* -> apac, else us).
    inference_profile: str = ""
    # Request fields beyond OpenAI's schema this provider is sent (e.g. vLLM's top_k).
    extra_body_fields: tuple[str, ...] = ()

    def profile_prefix(self) -> str:
        """The inference-profile geography this Bedrock provider's ``us.`` ids become."""
        if self.inference_profile:
            return self.inference_profile
        return PROFILE_BY_REGION.get(self.region.split("-")[0], "us")


# The [probes] table is the measuring layer's own settings dataclass, filled from the table and
# validated there (as [breaker] is probes.breaker.BreakerPolicy); the old name stays for imports.
ProbeConfig = ProbeSettings


@dataclass(frozen=True, slots=True)
class UsageSettings:
    """The SQLite usage log (proxy/accounting/usage_log.py)."""

    enabled: bool = True
    # "": $STATE_DIRECTORY/model-router.db under systemd, else ./model-router.db.
    path: str = ""
    # A crash loses at most the rows of one flush interval (and never more than queue_max).
    flush_ms: float = 500.0
    flush_rows: int = 256
    # Rows waiting for the writer; past this (a stuck disk) rows are dropped and counted.
    queue_max: int = 10_000


@dataclass(frozen=True, slots=True)
class CacheSettings:
    """The response cache (proxy/accounting/cache.py): temperature-0 or opted-in requests."""

    enabled: bool = True
    max_entries: int = 1024
    ttl_s: float = 300.0
    # Worst-case memory is max_entries x max_entry_bytes (64 MiB at the defaults).
    max_entry_bytes: int = 64 * 1024


# --- [cluster]: Redis for several workers and boxes (proxy/cluster/) ----------------

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    # Empty: no cluster; every instance and worker runs on its own state.
    redis_url: str = ""
    # Every key and channel name starts with this, so several routers can share one Redis.
    key_prefix: str = "model-router"
    # How often each instance pushes its counters and pulls the others' (limits, budgets).
    sync_interval_s: float = 0.1
    # A probe lease lasts this long; its holder renews it at a third of it, and another
    # instance takes a lease over within one lease after its holder dies.
    probe_lease_s: float = 15.0
    # Heartbeat period; an instance silent for three of them no longer counts.
    heartbeat_s: float = 1.0
    # Each Redis call gives up after this; the instance then runs on local state.
    op_timeout_s: float = 0.5

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


class RedisUrlError(ValueError):
    pass


def mask_url(url: str) -> str:
    """The URL with any password (and user name) replaced by ``***``: what logs and status
    show. An unparseable URL is masked entirely past its scheme."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return url.split(":", 1)[0] + "://***"
    if "@" not in netloc:
        return url
    host = netloc.rsplit("@", 1)[1]
    return SplitResult(parts.scheme, f"***@{host}", parts.path, parts.query, "").geturl()


def check_url(url: str) -> None:
    """Raise RedisUrlError naming what is wrong; the message never contains a secret."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedisUrlError(f"{shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise RedisUrlError(
            f"{shown!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"{shown!r}: a unix:// URL needs a socket path")
        return
    if not parts.hostname:
        raise RedisUrlError(f"{shown!r}: no host")
    if port == 0:
        raise RedisUrlError(f"{shown!r}: port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise RedisUrlError(f"{shown!r}: the path must be a database number, got {db!r}")


@dataclass(frozen=True, slots=True)
class BudgetSettings:
    # Global spend cap per UTC day in USD; 0 means no budget.
    daily_usd: float = 0.0


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    """Hostile-input limits; each answers with its own status naming the limit."""

    # Real chat bodies nest about 6 deep (messages[].content[].image_url.url, tool schemas
    # somewhat more); 64 leaves room for deep JSON schemas and stops pathological nesting.
    max_json_depth: int = 64
    max_messages: int = 2048
    # From connection open (or a request's first byte on a kept-alive connection) to the
    # end of its headers; aiohttp alone has no such deadline.
    header_timeout_s: float = 10.0
    # For the whole body once the headers are in: 8 MiB in 30 s is ~280 KB/s at the least.
    body_timeout_s: float = 30.0
    # An idle kept-alive connection is closed after this long.
    keepalive_timeout_s: float = 75.0
    # Connections past this get 503 and are closed; 512 concurrent streams fit with room.
    max_connections: int = 2048
    # Open connections one client address may hold; past it: 429, closed. 0 means an eighth
    # of max_connections, so one sender cannot take every connection.
    max_connections_per_address: int = 0
    # A new connection must send its first request's headers within this (it has shown
    # nothing yet, so it gets less than header_timeout_s); idle-and-never-used is not kept.
    first_request_timeout_s: float = 5.0
    # Addresses or networks (CIDR) of reverse proxies in front of the router: their
    # X-Forwarded-For names the client, and they are exempt from the per-address cap.
    trusted_proxies: tuple[str, ...] = ()

    @property
    def per_address(self) -> int:
        return self.max_connections_per_address or max(1, self.max_connections // 8)


@dataclass(frozen=True, slots=True)
class ForwardingSettings:
    """What request fields go upstream besides OpenAI's own (proxy/decide/fields.py)."""

    extra_body_fields: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class KeyConfig:
    """One client API key, stored only as the SHA-256 hex digest of the key.

    Empty ``allowed_*`` and zero limits mean unrestricted."""

    id: str
    sha256: str
    allowed_tiers: tuple[str, ...] = ()
    allowed_models: tuple[str, ...] = ()  # catalog ids (aliases are resolved when parsed)
    rpm: int = 0
    tpm: int = 0
    daily_usd: float = 0.0
    max_concurrent_streams: int = 0
    # Hedge this key's streams (True) or never (False); None: the [hedging] prefer default.
    hedge: bool | None = None
    # May read the status page's data (GET /v1/router/history), which shows every key's
    # traffic and spend.
    admin: bool = False


@dataclass(frozen=True, slots=True)
class Config:
    server: ServerSettings = ServerSettings()
    routing: RoutingSettings = RoutingSettings()
    probes: ProbeSettings = field(default_factory=ProbeSettings)
    usage: UsageSettings = UsageSettings()
    cache: CacheSettings = CacheSettings()
    budget: BudgetSettings = BudgetSettings()
    breaker: BreakerPolicy = field(default_factory=BreakerPolicy)
    providers: Mapping[str, ProviderConfig] = field(default_factory=dict)
    catalog: Catalog = field(default_factory=lambda: Catalog.build(()))
    source: str = "<defaults>"
    policy: Policy = field(default_factory=Policy)
    limits: LimitsSettings = LimitsSettings()
    keys: tuple[KeyConfig, ...] = ()
    hedging: HedgeSettings = field(default_factory=HedgeSettings)
    forwarding: ForwardingSettings = ForwardingSettings()
    # Built from forwarding and the providers' extra_body_fields by parse_config.
    fields: FieldPolicy = field(default_factory=lambda: FieldPolicy.build((), {}))
    cluster: ClusterSettings = field(default_factory=ClusterSettings)

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
    # Chat as OpenAI's wire; FIM (Codestral) on /v1/fim/completions.
    "mistral": ProviderConfig(
        "mistral", "mistral", "https://api.mistral.ai/v1", "MISTRAL_API_KEY", "mistral_api_key"
    ),
    # Local OpenAI-compatible servers for the open FIM models: never on unless a config says
    # `enabled = true` (and, if the server is elsewhere, its base_url). Their default ports.
    "ollama": ProviderConfig("ollama", "openai", "http://127.0.0.1:11434/v1"),
    "vllm": ProviderConfig("vllm", "openai", "http://127.0.0.1:8000/v1", "VLLM_API_KEY"),
    "llamacpp": ProviderConfig("llamacpp", "openai", "http://127.0.0.1:8080/v1"),
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
            # None is "enabled when its credentials are present": a built-in provider's
            # setting, carried over when a user table overrides its other fields.
            ok = isinstance(value, bool) or (default is None and value is None)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool)
            value = float(value) if ok else value
        elif isinstance(default, int):
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif isinstance(default, str):
            ok = isinstance(value, str)
        elif isinstance(default, tuple):
            ok = isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)
            value = tuple(value) if ok else value
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
    if base.max_attempts < 1:
        raise ConfigError("routing.max_attempts: must be at least 1")
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
    return replace(base, ttft_deadline_ms=merged)


def _probes(raw: Any) -> ProbeSettings:
    try:
        settings: ProbeSettings = _typed(
            ProbeSettings, _check(raw, ProbeSettings, "probes"), "probes"
        )
    except ProbeSettingsError as exc:
        # ProbeSettings names each field it refuses; each becomes its key's path here.
        raise ConfigError("; ".join(f"probes.{k}: {m}" for k, m in exc.problems)) from None
    return settings


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
        if "extra_body_fields" in table:
            try:
                merged["extra_body_fields"] = check_extra(
                    table["extra_body_fields"], f"{path}.extra_body_fields"
                )
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        providers[name] = _typed(ProviderConfig, merged, path, name=name, kind=kind)
        if providers[name].kind != "bedrock" and not providers[name].base_url:
            raise ConfigError(f"{path}.base_url: required for kind {kind!r}")
        if (ca := providers[name].ca_file) and not Path(ca).is_file():
            raise ConfigError(f"{path}.ca_file: {ca!r} is not a readable file")
        profile = providers[name].inference_profile
        if profile and not (profile.isascii() and profile.isalpha() and profile.islower()):
            raise ConfigError(
                f"{path}.inference_profile: expected a geography prefix such as us, eu, "
                f"apac, or none; got {profile!r}"
            )
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
        if "nominal_ttft_ms" in changes:
            changes["deployments"] = _scaled_nominals(by_id[model_id], changes["nominal_ttft_ms"])
        try:
            by_id[model_id] = replace(by_id[model_id], **changes)
        except TypeError as exc:
            raise ConfigError(f"{path}: {exc}") from None
    return list(by_id.values())


def _inference_profiles(
    models: list[Model], providers: Mapping[str, ProviderConfig]
) -> list[Model]:
    """The bundled catalog names US inference profiles (``us.anthropic...``); a Bedrock
    provider in another geography calls the same model through its own profile."""
    out = []
    for m in models:
        deps = []
        for d in m.deployments:
            pc = providers.get(d.provider)
            if pc is not None and pc.kind == "bedrock" and d.upstream_id.startswith("us."):
                prefix = pc.profile_prefix()
                if prefix not in ("us", "none"):
                    d = replace(d, upstream_id=f"{prefix}.{d.upstream_id[3:]}")
            deps.append(d)
        out.append(replace(m, deployments=tuple(deps)) if deps != list(m.deployments) else m)
    return out


def _scaled_nominals(model: Model, nominal_ms: float) -> tuple[Deployment, ...]:
    """prefer=fast reads each deployment's nominal, so an overridden model nominal moves them
    all, keeping the providers' relative offsets."""
    if not nominal_ms > 0:
        raise ConfigError(f"overrides.{model.id}.nominal_ttft_ms: must be positive")
    ratio = nominal_ms / model.nominal_ttft_ms
    return tuple(replace(d, nominal_ttft_ms=d.nominal_ttft_ms * ratio) for d in model.deployments)


TOP_LEVEL = {"server", "routing", "probes", "providers", "models", "overrides", *POLICY_KEYS}
TOP_LEVEL |= {"usage", "cache", "budget", "limits", "keys", "breaker", "cluster"}
TOP_LEVEL |= {"forwarding"}


def _cluster(raw: Any) -> ClusterSettings:
    cluster: ClusterSettings = _typed(
        ClusterSettings, _check(raw, ClusterSettings, "cluster"), "cluster"
    )
    if cluster.redis_url:
        try:
            check_url(cluster.redis_url)
        except RedisUrlError as exc:
            raise ConfigError(f"cluster.redis_url: {exc}") from None
    if not cluster.key_prefix:
        raise ConfigError("cluster.key_prefix: must not be empty")
    for name in ("sync_interval_s", "probe_lease_s", "heartbeat_s", "op_timeout_s"):
        if not getattr(cluster, name) > 0:
            raise ConfigError(f"cluster.{name}: must be positive")
    return cluster


TOP_LEVEL |= {"hedging"}


def _hedging(raw: Any) -> HedgeSettings:
    table = dict(_check(raw, HedgeSettings, "hedging"))
    prefer = _names(table.pop("prefer", list(HedgeSettings().prefer)), "hedging.prefer")
    for p in prefer:
        if p not in PREFERS:
            raise ConfigError(f"hedging.prefer: {p!r} is not one of {', '.join(PREFERS)}")
    settings: HedgeSettings = _typed(HedgeSettings, table, "hedging", prefer=tuple(prefer))
    if settings.budget_percent > 100:
        raise ConfigError("hedging.budget_percent: must be at most 100")
    if settings.min_delay_ms > settings.max_delay_ms:
        raise ConfigError("hedging.min_delay_ms: must not exceed max_delay_ms")
    return settings


def _accounting(data: Mapping[str, Any]) -> dict[str, Any]:
    """The [usage], [cache] and [budget] tables, checked."""
    usage = _typed(UsageSettings, _check(data.get("usage", {}), UsageSettings, "usage"), "usage")
    cache = _typed(CacheSettings, _check(data.get("cache", {}), CacheSettings, "cache"), "cache")
    budget = _typed(
        BudgetSettings, _check(data.get("budget", {}), BudgetSettings, "budget"), "budget"
    )
    for path, value in (
        ("usage.flush_ms", usage.flush_ms),
        ("usage.flush_rows", usage.flush_rows),
        ("usage.queue_max", usage.queue_max),
        ("cache.max_entries", cache.max_entries),
        ("cache.ttl_s", cache.ttl_s),
        ("cache.max_entry_bytes", cache.max_entry_bytes),
    ):
        if value <= 0:
            raise ConfigError(f"{path}: must be positive")
    return {"usage": usage, "cache": cache, "budget": budget}


def _limits(raw: Any) -> LimitsSettings:
    limits: LimitsSettings = _typed(LimitsSettings, _check(raw, LimitsSettings, "limits"), "limits")
    for f in fields(LimitsSettings):
        value = getattr(limits, f.name)
        if isinstance(value, tuple) or f.name == "max_connections_per_address":
            continue  # 0 per address: the default share of max_connections
        if value <= 0:
            raise ConfigError(f"limits.{f.name}: must be positive")
    for entry in limits.trusted_proxies:
        try:
            ipaddress.ip_network(entry, strict=False)
        except ValueError:
            raise ConfigError(
                f"limits.trusted_proxies: {entry!r} is not an IP address or network"
            ) from None
    return limits


def _forwarding(raw: Any, providers: Mapping[str, ProviderConfig]) -> dict[str, Any]:
    table = _check(raw, ForwardingSettings, "forwarding")
    try:
        extra = check_extra(table.get("extra_body_fields", []), "forwarding.extra_body_fields")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    per_provider = {name: pc.extra_body_fields for name, pc in providers.items()}
    return {
        "forwarding": ForwardingSettings(extra),
        "fields": FieldPolicy.build(extra, per_provider),
    }


_SHA256_HEX = frozenset("0123456789abcdef")


def _names(raw: Any, path: str) -> list[str]:
    if not isinstance(raw, list) or not all(isinstance(v, str) and v for v in raw):
        raise ConfigError(f"{path}: expected an array of strings")
    return raw


def _key(raw: Any, path: str, catalog: Catalog) -> KeyConfig:
    table = dict(_check(raw, KeyConfig, path))
    key_id = table.get("id")
    if not isinstance(key_id, str) or not key_id:
        raise ConfigError(f"{path}.id: required, a non-empty name for the key")
    digest = table.get("sha256")
    # Never echo the value: a plaintext key pasted here by mistake must not reach a log.
    if not isinstance(digest, str) or len(digest) != 64 or set(digest.lower()) - _SHA256_HEX:
        raise ConfigError(
            f"{path}.sha256: expected the key's SHA-256 hex digest (64 hex characters); "
            "`model-router hash-key` prints it"
        )
    tiers = _names(table.pop("allowed_tiers", []), f"{path}.allowed_tiers")
    for tier in tiers:
        if tier not in TIERS:
            raise ConfigError(f"{path}.allowed_tiers: {tier!r} is not one of {', '.join(TIERS)}")
    models = []
    for name in _names(table.pop("allowed_models", []), f"{path}.allowed_models"):
        model = catalog.get(name)
        if model is None:
            raise ConfigError(f"{path}.allowed_models: no catalog model named {name!r}")
        models.append(model.id)
    del table["id"], table["sha256"]
    hedge = table.pop("hedge", None)
    if hedge is not None and not isinstance(hedge, bool):
        raise ConfigError(f"{path}.hedge: expected true or false")
    key: KeyConfig = _typed(
        KeyConfig,
        table,
        path,
        id=key_id,
        sha256=digest.lower(),
        allowed_tiers=tuple(tiers),
        allowed_models=tuple(dict.fromkeys(models)),
        hedge=hedge,
    )
    return key


def _keys(raw: Any, catalog: Catalog) -> tuple[KeyConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError("keys: expected an array of tables ([[keys]])")
    keys = tuple(_key(table, f"keys[{i}]", catalog) for i, table in enumerate(raw))
    seen: dict[tuple[str, str], int] = {}
    for i, key in enumerate(keys):
        for what, value in (("id", key.id), ("sha256", key.sha256)):
            if (what, value) in seen:
                raise ConfigError(f"keys[{i}].{what}: same as keys[{seen[(what, value)]}]")
            seen[(what, value)] = i
    return keys


_ORIGIN = re.compile(r"^https?://(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)(:[0-9]{1,5})?/?$")
_OTHER_ORIGIN = re.compile(r"^[a-z][a-z0-9+.-]*://[^/\s]+/?$")  # chrome-extension://id, app://x
_HOST = re.compile(r"^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9._-]+)$")


def _check_browser_lists(server: ServerSettings) -> None:
    """allowed_origins are origins as a browser sends them (scheme://host[:port], no path);
    allowed_hosts are names or addresses without a port (any port matches)."""
    for origin in server.allowed_origins:
        if origin != "*" and not (_ORIGIN.match(origin) or _OTHER_ORIGIN.match(origin)):
            raise ConfigError(
                f"server.allowed_origins: {origin!r} is not an origin: expected "
                "scheme://host[:port] with no path (e.g. 'https://chat.example.com'), or '*'"
            )
    for host in server.allowed_hosts:
        if host != "*" and not _HOST.match(host):
            raise ConfigError(
                f"server.allowed_hosts: {host!r} is not a host name or address: expected a "
                "name like 'router.example.com' without scheme or port, or '*'"
            )


def parse_config(data: Mapping[str, Any], source: str = "<string>") -> Config:
    for key in data:
        if key not in TOP_LEVEL:
            raise ConfigError(f"{key}: unknown key")
    server = _typed(
        ServerSettings, _check(data.get("server", {}), ServerSettings, "server"), "server"
    )
    if not server.upstream_keepalive_s > 0:
        raise ConfigError("server.upstream_keepalive_s: must be > 0")
    if not server.dns_cache_s >= 0:
        raise ConfigError("server.dns_cache_s: must be >= 0")
    _check_browser_lists(server)
    probes = _probes(data.get("probes", {}))
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
        models = _inference_profiles(models, providers)
        for m in models:
            for d in m.deployments:
                if d.provider not in providers:
                    raise ConfigError(f"models.{m.id}.deployments: unknown provider {d.provider!r}")
                if d.fim_template and d.fim_template not in FIM_TEMPLATES:
                    raise ConfigError(
                        f"models.{m.id}.deployments.{d.provider}.fim_template: expected one of "
                        + ", ".join(sorted(FIM_TEMPLATES))
                    )
        catalog = Catalog.build(models)
    except CatalogError as exc:
        raise ConfigError(str(exc)) from None
    try:
        policy = parse_policy(data, catalog.by_name)
    except PolicyError as exc:
        raise ConfigError(str(exc)) from None
    return Config(
        server=server,
        routing=routing,
        probes=probes,
        breaker=breaker,
        providers=providers,
        catalog=catalog,
        source=source,
        policy=policy,
        **_accounting(data),
        limits=_limits(data.get("limits", {})),
        keys=_keys(data.get("keys"), catalog),
        hedging=_hedging(data.get("hedging", {})),
        **_forwarding(data.get("forwarding", {}), providers),
        cluster=_cluster(data.get("cluster", {})),
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
