"""make_app(config): routes, app keys, and the lifecycle of long-lived things
(client sessions, providers, the probe loop, the demo simulator) in ``cleanup_ctx``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace

import aiohttp
from aiohttp import web

from probes.loop import ProbeFailed, ProbeLoop, ProbeSettings

from . import handlers
from .catalog import Catalog
from .config import Config, ProviderConfig
from .credentials import read_credential
from .dispatch import Dispatcher, first_content
from .health import Health
from .providers.base import Endpoint, Provider, UpstreamError, UpstreamRequest, UpstreamStream
from .providers.openai import OpenAIProvider
from .relay import SSERelay
from .sim.script import Profile
from .sim.server import SimState, bound_port, start_sim
from .state import ROUTER, Router, RouterHolder

log = logging.getLogger("model_router")

DEMO_KEY = "sim-key"
AWS_ENV_HINTS = (
    "AWS_ACCESS_KEY_ID",
    "AWS_PROFILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)
SIM = web.AppKey("sim", SimState)
SIM_URL = web.AppKey("sim_url", str)
# The upstream client sessions by wire family; read by the fault tests to check the pool.
SESSIONS: web.AppKey[dict[str, aiohttp.ClientSession]] = web.AppKey("sessions")


def provider_key(pc: ProviderConfig, environ: Mapping[str, str]) -> str | None:
    """The provider's API key: a systemd credential first, then the environment variable."""
    if pc.api_key_credential and (key := read_credential(pc.api_key_credential)):
        return key
    return environ.get(pc.api_key_env) or None if pc.api_key_env else None


def enabled_providers(config: Config, environ: Mapping[str, str]) -> dict[str, ProviderConfig]:
    """Providers that can serve: explicitly enabled, or with their credentials present."""
    enabled = {}
    for name, pc in config.providers.items():
        if pc.enabled is False:
            continue
        if pc.kind == "bedrock":
            has_creds = any(environ.get(v) for v in AWS_ENV_HINTS)
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
                f"  {name:<11} AWS credentials (AWS_ACCESS_KEY_ID / AWS_PROFILE), "
                f"or [providers.{name}] enabled = true"
            )
        else:
            where = f"${pc.api_key_env}" + (
                f" or systemd credential {pc.api_key_credential!r}" if pc.api_key_credential else ""
            )
            lines.append(f"  {name:<11} {where}")
    lines.append("or run `model-router serve --demo` to try it against simulated providers.")
    return "\n".join(lines)


def demo_config(config: Config, sim_url: str) -> Config:
    """Every provider pointed at the local simulator; the catalog is unchanged."""
    providers = {}
    for name, pc in config.providers.items():
        if pc.kind == "openai":
            providers[name] = replace(pc, base_url=f"{sim_url}/v1", enabled=True)
        elif pc.kind == "anthropic":
            providers[name] = replace(pc, base_url=sim_url, enabled=True)
        else:
            providers[name] = replace(
                pc, endpoint_url=sim_url, region=pc.region or "us-east-1", enabled=True
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
    """Static AWS keys when given in ``environ`` (or the demo's dummies); None means the
    standard AWS credential chain."""
    if demo:
        return {"aws_access_key_id": "sim", "aws_secret_access_key": "sim"}
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
) -> Provider:
    if pc.kind == "openai":
        return OpenAIProvider(
            pc.name, base_url=pc.base_url, api_key=key or "", session=sessions["openai"]
        )
    if pc.kind == "anthropic":
        from .providers.anthropic import AnthropicProvider

        return AnthropicProvider(
            pc.name, base_url=pc.base_url, api_key=key or "", session=sessions["anthropic"]
        )
    from .providers.bedrock import BedrockProvider

    return BedrockProvider(
        pc.name, region=pc.region, endpoint_url=pc.endpoint_url or None, credentials=aws_credentials
    )


def make_session(config: Config) -> aiohttp.ClientSession:
    # No pool limit: 512 concurrent streams must not queue behind aiohttp's default of 100.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.server.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def make_probe_sender(router: Router) -> ProbeLoop | None:
    """The probe loop, handed a send-probe callable that uses the live adapters."""
    pc = router.config.probes
    if not pc.enabled:
        return None
    by_key = {d.key: (m, d) for m in router.catalog.models for d in m.deployments}

    async def send(key: str) -> float:
        model, d = by_key[key]
        endpoint: Endpoint = "chat" if "chat" in model.capabilities else "completions"
        body: dict[str, object] = {"model": d.upstream_id, "max_tokens": 1, "stream": True}
        body["stream_options"] = {"include_usage": True}
        if endpoint == "chat":
            body["messages"] = [{"role": "user", "content": "ping"}]
        else:
            body["prompt"] = "ping"
        request = UpstreamRequest(endpoint, d.upstream_id, body, True)
        loop = asyncio.get_running_loop()
        started = loop.time()
        upstream: UpstreamStream | None = None
        try:
            async with asyncio.timeout(pc.timeout_s):
                upstream = await router.providers[d.provider].stream(request)
                await first_content(upstream, SSERelay(False, model.cost_usd))
        except UpstreamError as exc:
            raise ProbeFailed(exc.kind, exc.retry_after, exc.message) from None
        except TimeoutError:
            raise ProbeFailed(
                "timeout", None, f"no first token within {pc.timeout_s:g} s"
            ) from None
        finally:
            if upstream is not None:
                await upstream.aclose()
        return (loop.time() - started) * 1000

    costs = {key: m.cost_usd(8, 1) for key, (m, _) in by_key.items()}
    settings = ProbeSettings(
        enabled=True,
        interval_s=pc.interval_s,
        jitter=pc.jitter,
        concurrency=pc.concurrency,
        max_daily_spend_usd=pc.max_daily_spend_usd,
        timeout_s=pc.timeout_s,
    )
    return ProbeLoop(settings, send, router.health.table, router.health.board, cost_per_probe=costs)


def build_router(
    config: Config,
    sessions: Mapping[str, aiohttp.ClientSession],
    *,
    environ: Mapping[str, str],
    demo: bool,
    health: Health | None = None,
) -> Router:
    enabled = enabled_providers(config, environ)
    catalog = config.catalog.only_providers(enabled)
    providers = {
        name: build_provider(
            pc,
            DEMO_KEY if demo else provider_key(pc, environ),
            sessions,
            aws_credentials_from(environ, demo),
        )
        for name, pc in enabled.items()
    }
    if health is None:
        health = Health.create(catalog, config.probes.half_life_s, config.breaker)
    else:
        health.set_catalog(catalog)
    dispatcher = Dispatcher(providers, health, config.routing, config.server)
    router = Router(config, catalog, providers, health, dispatcher, demo=demo)
    router.probe_loop = make_probe_sender(router)
    router.sinks.append(handlers.access_log_sink)
    return router


async def start_server(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, int]:
    """Serve ``app`` the way production does; returns the runner and the bound port.

    run_app/AppRunner default ``handler_cancellation`` to False; without it a client that
    leaves goes unnoticed until the next write and its upstream keeps generating.
    """
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    await site.start()
    return runner, bound_port(site)


def make_app(
    config: Config, *, demo: bool = False, environ: Mapping[str, str] | None = None
) -> web.Application:
    env = dict(os.environ if environ is None else environ)
    app = web.Application(
        client_max_size=config.server.max_body_bytes, middlewares=[handlers.error_middleware]
    )

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        cfg = config
        sim_runner = None
        if demo:
            state = SimState(scale=float(env.get("MODEL_ROUTER_DEMO_SCALE", "1.0")))
            state.profiles.update(demo_profiles(config.catalog))
            sim_runner, sim_url = await start_sim(state)
            app[SIM], app[SIM_URL] = state, sim_url
            cfg = demo_config(config, sim_url)
        sessions = {"openai": make_session(cfg), "anthropic": make_session(cfg)}
        app[SESSIONS] = sessions
        router = build_router(cfg, sessions, environ=env, demo=demo)
        for provider in router.providers.values():
            await provider.start()
        app[ROUTER] = RouterHolder(router)
        probe_task = None
        if router.probe_loop is not None:
            probe_task = asyncio.create_task(router.probe_loop.run(), name="probe-loop")
        try:
            yield
        finally:
            if probe_task is not None:
                probe_task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await probe_task
            for provider in app[ROUTER].current.providers.values():
                await provider.close()
            for session in sessions.values():
                await session.close()
            if sim_runner is not None:
                await sim_runner.cleanup()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_post("/v1/chat/completions", handlers.chat_completions)
    app.router.add_post("/v1/completions", handlers.completions)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/router/status", handlers.router_status)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)
    return app
