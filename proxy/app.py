"""make_app(config): routes, app keys, and the lifecycle of long-lived things
(client sessions, providers, the probe loop, the demo simulator) in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import aiohttp
from aiohttp import web

from probes.loop import ProbeFailed, ProbeLoop, ProbeSettings, paced_interval_s
from proxy.accounting.ledger import ACCOUNTING, accounting_ctx
from proxy.decide.fields import FieldPolicy
from proxy.http import handlers
from proxy.http.auth import ACCESS, Access, auth_middleware
from proxy.http.hostile_input import GuardedRunner, expect_continue
from proxy.http.hygiene import guard_library_logs
from proxy.http.metrics import METRICS, Metrics, metrics_endpoint
from proxy.providers.base import Endpoint, Provider, UpstreamError, UpstreamRequest, UpstreamStream
from proxy.providers.openai import OpenAIProvider
from proxy.serve.dispatch import Dispatcher, first_content
from proxy.serve.drain import IN_FLIGHT, InFlight, in_flight_middleware
from proxy.serve.health import Health
from proxy.serve.relay import SSERelay
from proxy.serve.state import ROUTER, Router, RouterHolder
from proxy.serve.warm import Warmer, WarmTarget
from proxy.service.credentials import read_credential
from proxy.service.notify import Notifier, watchdog_task
from proxy.service.reload import Runtime, keep_listen_address
from proxy.sim.launch import bound_port, start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState
from proxy.status.history import HISTORY, History, history_ctx
from proxy.status.page import STATUS_PAGE, StatusPage, router_history, status_page

from .catalog import Catalog, Deployment, Model
from .config import Config, ProviderConfig, load_config

log = logging.getLogger("model_router")

DEMO_KEY = "sim-key"
AWS_ENV_HINTS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
# systemd credential names for a static AWS key pair (see systemd/model-router.service).
AWS_CREDENTIALS = ("aws_access_key_id", "aws_secret_access_key", "aws_session_token")
SIM = web.AppKey("sim", SimState)
SIM_URL = web.AppKey("sim_url", str)
NOTIFIER = web.AppKey("notifier", Notifier)
RUNTIME = web.AppKey("runtime", Runtime)
# What runner.cleanup() waits for handlers after the drain has cut the streams.
SHUTDOWN_TIMEOUT_S = 5.0
# Keeps the upstream pools warm (proxy/serve/warm.py); the tests read its counters.
WARMER: web.AppKey[Warmer] = web.AppKey("warmer", Warmer)
# The upstream client sessions by wire family; read by the fault tests to check the pool.
SESSIONS: web.AppKey[dict[str, aiohttp.ClientSession]] = web.AppKey("sessions")


class SimPortError(Exception):
    """The demo's simulator could not listen on its port (``--sim-port``)."""

    def __init__(self, os_error: OSError) -> None:
        super().__init__(str(os_error))
        self.os_error = os_error


def provider_key(pc: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    """The provider's API key: a systemd credential first, then the environment variable."""
    if pc.api_key_credential and (key := read_credential(pc.api_key_credential)):
        return key
    return environ.get(pc.api_key_env) or None if pc.api_key_env else None


def aws_credential_files() -> dict[str, str] | None:
    """A static AWS key pair handed over as systemd credentials (LoadCredential=)."""
    key_id, secret = read_credential(AWS_CREDENTIALS[0]), read_credential(AWS_CREDENTIALS[1])
    if not (key_id and secret):
        return None
    creds = {"aws_access_key_id": key_id, "aws_secret_access_key": secret}
    if token := read_credential(AWS_CREDENTIALS[2]):
        creds["aws_session_token"] = token
    return creds


def enabled_providers(config: Config, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Providers that can serve: explicitly enabled, or with their credentials present."""
    enabled = {}
    for name, pc in config.providers.items():
        if pc.enabled is False:
            continue
        if pc.kind == "bedrock":
            has_creds = (
                any(environ.get(v) for v in AWS_ENV_HINTS) or aws_credential_files() is not None
            )
        else:
            has_creds = provider_key(pc, environ) is not None
        if pc.enabled or has_creds:
            enabled[name] = pc
    return enabled


def how_to_enable(config: Config) -> str:
    lines = ["No provider has credentials, so there is nothing to route to. Enable one of:"]
    for name, pc in sorted(config.providers.items()):
        if pc.kind == "bedrock":
            lines.append(
                f"  {name:<11} AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE, or systemd "
                f"credentials {AWS_CREDENTIALS[0]!r} + {AWS_CREDENTIALS[1]!r}), "
                f"or [providers.{name}] enabled = true"
            )
        elif not pc.api_key_env and not pc.api_key_credential:
            lines.append(f"  {name:<11} [providers.{name}] enabled = true (a local server)")
        else:
            where = f"${pc.api_key_env}" + (
                f" or systemd credential {pc.api_key_credential!r}" if pc.api_key_credential else ""
            )
            lines.append(f"  {name:<11} {where}")
    lines.append("or run `model-router serve --demo` to try it against simulated providers.")
    return "\n".join(lines)


def demo_config(config: Config, sim_url: str, ca_file: str = "") -> Config:
    """Every provider pointed at the local simulator (unless the config disabled it); the
    catalog is unchanged. ``ca_file``: the simulator's CA when it serves TLS."""
    providers = {}
    for name, pc in config.providers.items():
        on = pc.enabled is not False
        pc = replace(pc, ca_file=ca_file or pc.ca_file)
        if pc.kind in ("openai", "mistral"):
            providers[name] = replace(pc, base_url=f"{sim_url}/v1", enabled=on)
        elif pc.kind == "anthropic":
            providers[name] = replace(pc, base_url=sim_url, enabled=on)
        else:
            providers[name] = replace(
                pc, endpoint_url=sim_url, region=pc.region or "us-east-1", enabled=on
            )
    return config.with_providers(providers)


def demo_profiles(catalog: Catalog) -> dict[str, Profile]:
    """Simulated latency per upstream id, from each deployment's nominal figures."""
    profiles = {}
    for m in catalog.models:
        gap = 1000.0 / m.tokens_per_second if m.tokens_per_second > 0 else 10.0
        for d in m.deployments:
            profiles[d.upstream_id] = Profile(ttft_ms=d.nominal_ttft_ms, gap_ms=gap, tokens=24)
    return profiles


def aws_credentials_from(environ: Mapping[str, str], demo: bool) -> dict[str, str] | None:
    """Static AWS keys from systemd credentials or ``environ`` (or the demo's dummies); None
    means the standard AWS credential chain."""
    if demo:
        return {"aws_access_key_id": "sim", "aws_secret_access_key": "sim"}
    if (creds := aws_credential_files()) is not None:
        return creds
    if environ.get("AWS_ACCESS_KEY_ID") and environ.get("AWS_SECRET_ACCESS_KEY"):
        creds = {"aws_access_key_id": environ["AWS_ACCESS_KEY_ID"]}
        creds["aws_secret_access_key"] = environ["AWS_SECRET_ACCESS_KEY"]
        if environ.get("AWS_SESSION_TOKEN"):
            creds["aws_session_token"] = environ["AWS_SESSION_TOKEN"]
        return creds
    return None


def build_provider(
    pc: ProviderConfig,
    key: str | None,
    sessions: Mapping[str, aiohttp.ClientSession],
    aws_credentials: dict[str, str] | None,
    timeouts: tuple[float, float] = (5.0, 60.0),
    fields: FieldPolicy | None = None,
) -> Provider:
    context = ssl.create_default_context(cafile=pc.ca_file) if pc.ca_file else None
    if pc.kind in ("openai", "mistral"):
        forwarded = (fields or FieldPolicy.build((), {pc.name: pc.extra_body_fields})).forwarded
        if pc.kind == "mistral":
            from proxy.providers.mistral import MistralProvider

            return MistralProvider(
                pc.name,
                base_url=pc.base_url,
                api_key=key or "",
                session=sessions["openai"],
                ssl_context=context,
                fields=forwarded.get(pc.name),
            )
        return OpenAIProvider(
            pc.name,
            base_url=pc.base_url,
            api_key=key or "",
            session=sessions["openai"],
            ssl_context=context,
            fields=forwarded.get(pc.name),
        )
    if pc.kind == "anthropic":
        from proxy.providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            pc.name,
            base_url=pc.base_url,
            api_key=key or "",
            session=sessions["anthropic"],
            ssl_context=context,
        )
    from proxy.providers.bedrock import BedrockProvider

    return BedrockProvider(
        pc.name,
        region=pc.region,
        endpoint_url=pc.endpoint_url or None,
        credentials=aws_credentials,
        connect_timeout_s=timeouts[0],
        read_timeout_s=timeouts[1],
        ca_file=pc.ca_file or None,
    )


def make_session(
    config: Config, trace_configs: list[aiohttp.TraceConfig] | None = None
) -> aiohttp.ClientSession:
    # No pool limit: 512 concurrent streams must not queue behind aiohttp's default of 100.
    s = config.server
    connector = aiohttp.TCPConnector(
        limit=0,
        use_dns_cache=s.dns_cache_s > 0,
        ttl_dns_cache=max(1, round(s.dns_cache_s)),
        keepalive_timeout=s.upstream_keepalive_s,
    )
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=s.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, trace_configs=trace_configs)


def warm_targets(router: Router) -> list[WarmTarget]:
    """The upstreams the config expects to use: every provider serving a deployment."""
    used = {d.provider for d in router.catalog.deployments()}
    targets = []
    for name, provider in router.providers.items():
        if name in used and (pool := provider.pool_target()) is not None:
            url, session, tls = pool
            targets.append(WarmTarget(name, url, session, tls))
    return targets


async def drain(upstream: UpstreamStream, relay: SSERelay) -> None:
    """Read a probe's answer to its end (briefly) so its connection is pooled, not closed."""
    if relay.done:
        return
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(PROBE_DRAIN_S):
            async for chunk in upstream:
                relay.feed(chunk)


# How long a probe reads on after its first token so its connection goes back to the pool:
# a max_tokens=1 answer has a finish chunk, a usage chunk and [DONE] left.
PROBE_DRAIN_S = 1.0


# What a probe is billed: "ping" in a chat template is ~8 input tokens, and 1 output token.
PROBE_TOKENS = (8, 1)


def probe_costs(catalog: Catalog) -> dict[str, float]:
    """Estimated USD per probe, per deployment key, from catalog prices."""
    return {d.key: m.cost_usd(*PROBE_TOKENS) for m in catalog.models for d in m.deployments}


def probe_interval(config: Config, catalog: Catalog) -> float:
    """The configured interval, stretched so a full day of probing fits the spend cap."""
    pc = config.probes
    per_round = sum(probe_costs(catalog).values())
    return paced_interval_s(per_round, pc.interval_s, pc.max_daily_spend_usd)


def probe_body(model: Model, d: Deployment, provider: ProviderConfig | None) -> dict[str, Any]:
    """The smallest streaming request that yields a first token."""
    body: dict[str, Any] = {"model": d.upstream_id, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if "chat" in model.capabilities:
        body["messages"] = [{"role": "user", "content": "ping"}]
        # OpenAI's reasoning models refuse max_tokens; everywhere else (DeepSeek, and
        # OpenAI-compatible hosts) max_tokens is the one understood.
        official = provider is not None and provider.name == "openai"
        body["max_completion_tokens" if official else "max_tokens"] = 1
    else:
        body["prompt"] = "ping"
        body["max_tokens"] = 1
    return body


def make_probe_sender(router: Router) -> ProbeLoop | None:
    """The probe loop, handed a send-probe callable that uses the live adapters.

    It shares the adapters' connection pools with live traffic (so it measures what live
    requests see) but no queue or lock: the pools are unbounded and the loop's concurrency
    cap is its own.
    """
    pc = router.config.probes
    if not pc.enabled:
        return None
    by_key = {d.key: (m, d) for m in router.catalog.models for d in m.deployments}

    async def send(key: str) -> float:
        model, d = by_key[key]
        endpoint: Endpoint = "chat" if "chat" in model.capabilities else "completions"
        body = probe_body(model, d, router.config.providers.get(d.provider))
        request = UpstreamRequest(endpoint, d.upstream_id, body, True, fim_template=d.fim_template)
        loop = asyncio.get_running_loop()
        started = loop.time()
        upstream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(pc.timeout_s):
                upstream = await router.providers[d.provider].stream(request)
                relay = SSERelay(False, model.cost_usd)
                await first_content(upstream, relay)
            ttft_ms = (loop.time() - started) * 1000
            await drain(upstream, relay)
        except UpstreamError as exc:
            raise ProbeFailed(exc.kind, exc.retry_after, exc.message) from None
        except TimeoutError:
            raise ProbeFailed(
                "timeout", None, f"no first token within {pc.timeout_s:g} s"
            ) from None
        finally:
            if upstream is not None:
                await upstream.aclose()
        return ttft_ms

    settings = ProbeSettings(
        enabled=True,
        interval_s=probe_interval(router.config, router.catalog),
        jitter=pc.jitter,
        concurrency=pc.concurrency,
        live_quiet_s=pc.live_quiet_s,
        live_interval_factor=pc.live_interval_factor,
        max_daily_spend_usd=pc.max_daily_spend_usd,
        timeout_s=pc.timeout_s,
    )
    costs = probe_costs(router.catalog)
    interval = settings.interval_s
    if interval > pc.interval_s:
        log.info(
            "probing every %.0f s instead of %g s to keep %d deployments within "
            "max_daily_spend_usd=%g",
            interval,
            pc.interval_s,
            len(costs),
            pc.max_daily_spend_usd,
        )
    return ProbeLoop(settings, send, router.health.table, router.health.board, cost_per_probe=costs)


def provider_fingerprint(
    pc: ProviderConfig,
    key: str | None,
    aws_credentials: Mapping[str, str] | None,
    fields: FieldPolicy | None = None,
) -> str:
    """A digest of everything a provider is built from; secrets enter only hashed."""
    forwarded = fields.forwarded.get(pc.name, {}) if fields is not None else {}
    allow = sorted((e, sorted(f)) for e, f in forwarded.items())
    material = repr((pc, key, sorted((aws_credentials or {}).items()), allow))
    return hashlib.sha256(material.encode()).hexdigest()


def build_router(
    config: Config,
    sessions: Mapping[str, aiohttp.ClientSession],
    *,
    environ: Mapping[str, str],
    demo: bool,
    health: Health | None = None,
    previous: Router | None = None,
) -> Router:
    """The Router for ``config``. On reload, ``health`` and ``previous`` are the live
    Router's: latency and breakers carry over, and providers built from the same settings
    and credentials are shared instead of rebuilt."""
    enabled = enabled_providers(config, environ)
    catalog = config.catalog.only_providers(enabled)
    providers: dict[str, Provider] = {}
    fingerprints: dict[str, str] = {}
    for name, pc in enabled.items():
        key = DEMO_KEY if demo else provider_key(pc, environ)
        aws = aws_credentials_from(environ, demo) if pc.kind == "bedrock" else None
        fingerprints[name] = provider_fingerprint(pc, key, aws, config.fields)
        if previous is not None and previous.provider_fingerprints.get(name) == fingerprints[name]:
            providers[name] = previous.providers[name]  # a reload that left it unchanged
        else:
            timeouts = (config.server.connect_timeout_s, config.server.upstream_idle_s)
            providers[name] = build_provider(pc, key, sessions, aws, timeouts, config.fields)
    if health is None:
        health = Health.create(
            catalog,
            config.probes.half_life_s,
            config.breaker,
            p90_weight=config.probes.p90_weight,
            probe_interval_s=probe_interval(config, catalog),
            shift_samples=config.probes.shift_samples,
        )
    else:
        health.set_catalog(catalog)
    dispatcher = Dispatcher(providers, health, config.routing, config.server, config.hedging)
    router = Router(config, catalog, providers, health, dispatcher, demo=demo)
    router.provider_fingerprints = fingerprints
    router.probe_loop = make_probe_sender(router)
    router.sinks.append(handlers.access_log_sink)
    return router


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` the way production does; returns the runner and the bound port.

    run_app/AppRunner default ``handler_cancellation`` to False; without it a client that
    leaves goes unnoticed until the next write and its upstream keeps generating.
    ``shutdown_timeout`` bounds what ``runner.cleanup()`` waits for handlers: the drain
    (proxy/serve/drain.py) has already ended the streams by then. The guarded runner adds the
    header deadline and the connection cap ([limits]).
    """
    runner = GuardedRunner(
        app, handler_cancellation=True, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # the simulator and the usage log were already started
        raise
    return runner, bound_port(site)


def make_app(
    config: Config,
    *,
    demo: bool = False,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    sim_port: int = 0,
) -> web.Application:
    """The app for ``config``. A reload (``app[RUNTIME].reload()``, on SIGHUP) re-reads
    ``config_path`` (the built-in defaults when None) and keeps the listen address."""
    env = dict(os.environ if environ is None else environ)
    guard_library_logs()
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            handlers.request_id_middleware,
            in_flight_middleware,
            handlers.error_middleware,
            auth_middleware,
        ],
    )
    app[IN_FLIGHT] = InFlight()
    app[NOTIFIER] = Notifier.from_env(env)
    metrics = app[METRICS] = Metrics(app)
    app[ACCESS] = Access()
    history = app[HISTORY] = History()
    app[STATUS_PAGE] = StatusPage()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        sim_runner = None
        sim: tuple[SimState, str] | None = None
        if demo:
            state = SimState(scale=float(env.get("MODEL_ROUTER_DEMO_SCALE", "1.0")))
            try:
                sim_runner, sim_url = await start_sim(state, port=sim_port)
            except OSError as exc:
                raise SimPortError(exc) from exc
            app[SIM], app[SIM_URL] = state, sim_url
            sim = state, sim_url
        warmer = Warmer(
            config.server.upstream_keepalive_s, timeout_s=config.server.connect_timeout_s
        )
        traces = [warmer.trace] if config.server.warm_connections else None
        sessions = {
            "openai": make_session(config, traces),
            "anthropic": make_session(config, traces),
        }
        app[SESSIONS] = sessions
        app[WARMER] = warmer

        def build(cfg: Config, previous: Router | None) -> Router:
            if sim is not None:  # the demo: every provider is the simulator
                sim[0].profiles.update(demo_profiles(cfg.catalog))
                sim[0].no_suffix.update(
                    d.upstream_id for d in cfg.catalog.deployments() if d.fim_template
                )
                cfg = demo_config(cfg, sim[1])
            router = build_router(
                cfg,
                sessions,
                environ=env,
                demo=demo,
                health=previous.health if previous else None,
                previous=previous,
            )
            router.sinks.append(metrics.sink)
            router.sinks.append(history.sink)
            return router

        def rebuild(previous: Router) -> Router:
            router = build(keep_listen_address(load_config(config_path), config), previous)
            if traces:
                warmer.set_targets(warm_targets(router))
            # The usage log and budget live across reloads; the new router must feed them.
            if (accounting := app.get(ACCOUNTING)) is not None:
                accounting.attach(router)
            return router

        router = build(config, None)
        for provider in router.providers.values():
            await provider.start()
        warming = None
        if traces:
            warmer.set_targets(warm_targets(router))
            warming = asyncio.create_task(warmer.run(), name="warm-connections")
        app[ROUTER] = RouterHolder(router)
        app[RUNTIME] = runtime = Runtime(app[ROUTER], rebuild, app[IN_FLIGHT])
        # Both tick on the event loop itself: a blocked loop stops the watchdog pings (and
        # systemd restarts the service) and shows up as lag.
        watchdog = asyncio.create_task(watchdog_task(app[NOTIFIER]), name="watchdog")
        lag = asyncio.create_task(metrics.watch_loop_lag(), name="loop-lag")
        try:
            yield
        finally:
            for task in (watchdog, lag, warming):
                if task is None:
                    continue
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await warmer.close()
            await runtime.close()
            for session in sessions.values():
                await session.close()
            if sim_runner is not None:
                await sim_runner.cleanup()
            app[NOTIFIER].close()

    app.cleanup_ctx.append(lifecycle)
    app.cleanup_ctx.append(accounting_ctx(config, env))
    app.cleanup_ctx.append(history_ctx)
    app.router.add_post(
        "/v1/chat/completions", handlers.chat_completions, expect_handler=expect_continue
    )
    app.router.add_post("/v1/completions", handlers.completions, expect_handler=expect_continue)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", handlers.retrieve_model)
    app.router.add_get("/v1/router/status", handlers.router_status)
    app.router.add_get("/v1/router/history", router_history)
    app.router.add_get("/status", status_page)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    return app
