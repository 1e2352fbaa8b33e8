"""make_app(config): middlewares, routes, app keys, and one ``cleanup_ctx`` per long-lived
thing (the demo simulator, client sessions, the router with its providers and probe loop,
the connection warmer, the watchdog, the loop-lag meter, accounting). What they are built
from lives in ``proxy.assembly``; credentials are found by ``proxy.service.discovery``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
import socket
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any

from aiohttp import web

from proxy.accounting.ledger import ACCOUNTING, accounting_ctx
from proxy.accounting.usage_log import db_path
from proxy.assembly.providers import SESSION_OF, make_session
from proxy.assembly.router import build_router
from proxy.assembly.warming import WARMER, make_warmer, noting, retarget, warm_ctx
from proxy.decide import bundled
from proxy.http import handlers, models_api
from proxy.http.auth import ACCESS, Access, auth_middleware
from proxy.http.hostile_input import GuardedRunner, expect_continue
from proxy.http.hygiene import guard_library_logs
from proxy.http.metrics import METRICS, Metrics, metrics_endpoint
from proxy.providers.session import UpstreamSession
from proxy.serve.drain import IN_FLIGHT, InFlight
from proxy.serve.state import CLUSTER, ROUTER, WORKER, Router, RouterHolder
from proxy.service.notify import Notifier, watchdog_task
from proxy.service.reload import Runtime, keep_listen_address
from proxy.status.history import HISTORY, History, history_ctx
from proxy.status.page import STATUS_PAGE, StatusPage, router_history, status_page

from .config import Config, load_config

log = logging.getLogger("model_router")

NOTIFIER = web.AppKey("notifier", Notifier)
RUNTIME = web.AppKey("runtime", Runtime)
# What runner.cleanup() waits for handlers after the drain has cut the streams.
SHUTDOWN_TIMEOUT_S = 5.0
# The upstream client sessions by wire family; read by the fault tests to check the pool.
SESSIONS: web.AppKey[dict[str, UpstreamSession]] = web.AppKey("sessions")
Ctx = Callable[[web.Application], AsyncIterator[None]]


async def start_server(
    app: web.Application, host: str, port: int, *, reuse_port: bool = False
) -> tuple[web.AppRunner, int]:
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
    # reuse_port: one of ``--workers`` processes bound to the same port (proxy/workers.py).
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_port=reuse_port or None)
    try:
        await site.start()
    except BaseException:
        await runner.cleanup()  # the simulator and the usage log were already started
        raise
    return runner, int(runner.addresses[0][1])


def make_app(
    config: Config,
    *,
    demo: bool = False,
    environ: Mapping[str, str] | None = None,
    config_path: str | None = None,
    sim_port: int = 0,
    worker: int | None = None,
) -> web.Application:
    """The app for ``config``. A reload (``app[RUNTIME].reload()``, on SIGHUP) re-reads
    ``config_path`` (the built-in defaults when None) and keeps the listen address."""
    env = dict(os.environ if environ is None else environ)
    guard_library_logs()
    bundled.read_all()  # now, not in the first request (EMFILE, file I/O on the loop)
    app = web.Application(
        client_max_size=config.server.max_body_bytes,
        middlewares=[
            handlers.request_id_middleware,
            handlers.in_flight_middleware,
            handlers.error_middleware,
            auth_middleware,
        ],
    )
    app[IN_FLIGHT] = InFlight()
    if worker is not None:
        app[WORKER] = worker
    app[NOTIFIER] = Notifier.from_env(env)
    app[METRICS] = Metrics(app)
    app[ACCESS] = Access()
    app[HISTORY] = History()
    app[STATUS_PAGE] = StatusPage()
    app[WARMER] = make_warmer(config)
    app.cleanup_ctx.append(notifier_ctx)
    if demo:  # the simulator is imported only when the demo asks for it
        from proxy.assembly.demo import sim_ctx

        app.cleanup_ctx.append(sim_ctx(float(env.get("MODEL_ROUTER_DEMO_SCALE", "1.0")), sim_port))
    app.cleanup_ctx.append(sessions_ctx(config))
    app.cleanup_ctx.append(router_ctx(config, env, demo, config_path))
    app.cleanup_ctx.append(warm_ctx(config))
    if config.cluster.enabled:
        app.cleanup_ctx.append(cluster_ctx(config, env))
    app.cleanup_ctx.append(task_ctx("watchdog", lambda: watchdog_task(app[NOTIFIER])))
    app.cleanup_ctx.append(task_ctx("loop-lag", app[METRICS].watch_loop_lag))
    app.cleanup_ctx.append(accounting_ctx(config, env))
    app.cleanup_ctx.append(cluster_accounting)
    app.cleanup_ctx.append(history_ctx)
    add_routes(app)
    return app


def add_routes(app: web.Application) -> None:
    """The served endpoints. OpenAI's Responses API is not among them: its path answers a
    404 that points at chat completions (models_api.responses_api)."""
    app.router.add_post(
        "/v1/chat/completions", handlers.chat_completions, expect_handler=expect_continue
    )
    app.router.add_post("/v1/completions", handlers.completions, expect_handler=expect_continue)
    app.router.add_get("/v1/models", models_api.list_models)
    app.router.add_get("/v1/models/{model_id:.+}", models_api.retrieve_model)
    app.router.add_route("*", "/v1/responses{rest:(/.*)?}", models_api.responses_api)
    app.router.add_get("/v1/router/status", handlers.router_status)
    app.router.add_get("/v1/router/history", router_history)
    app.router.add_get("/status", status_page)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/healthz", handlers.healthz)
    app.router.add_get("/readyz", handlers.readyz)


async def notifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """The sd_notify socket, closed last."""
    try:
        yield
    finally:
        app[NOTIFIER].close()


def sessions_ctx(config: Config) -> Ctx:
    """The upstream client sessions, one per HTTP wire family."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        warmer = noting(app, config)
        app[SESSIONS] = {
            family: make_session(config, warmer) for family in set(SESSION_OF.values())
        }
        try:
            yield
        finally:
            for session in app[SESSIONS].values():
                await session.close()

    return ctx


def router_ctx(config: Config, env: Mapping[str, str], demo: bool, config_path: str | None) -> Ctx:
    """The live Router (its providers started) and the Runtime that reloads it and runs its
    probe loop."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        prepare = _demo_prepare(app) if demo else None
        metrics, history = app[METRICS], app[HISTORY]
        sessions: dict[str, UpstreamSession] = app[SESSIONS]

        def build(cfg: Config, previous: Router | None) -> Router:
            if prepare is not None:  # the demo: every provider is the simulator
                cfg = prepare(cfg)
            router = build_router(cfg, sessions, environ=env, demo=demo, previous=previous)
            router.sinks.append(metrics.sink)
            router.sinks.append(history.sink)
            return router

        def rebuild(previous: Router) -> Router:
            router = build(keep_listen_address(load_config(config_path), config), previous)
            retarget(app, router)
            # The usage log and budget live across reloads; the new router must feed them.
            if (accounting := app.get(ACCOUNTING)) is not None:
                accounting.attach(router)
            if (cluster := app.get(CLUSTER)) is not None:
                cluster.attach(router)
            return router

        router = build(config, None)
        for provider in router.providers.values():
            await provider.start()
        app[ROUTER] = RouterHolder(router)
        app[RUNTIME] = runtime = Runtime(app[ROUTER], rebuild, app[IN_FLIGHT])
        try:
            yield
        finally:
            await runtime.close()

    return ctx


def instance_origin(config: Config, environ: Mapping[str, str]) -> str:
    """A name for this instance's own spend that survives its restarts: the host and its
    usage log (today's spend is read back from that file at start)."""
    where = os.path.abspath(db_path(config.usage, environ))
    return hashlib.sha256(f"{socket.gethostname()}:{where}".encode()).hexdigest()[:16]


def cluster_ctx(config: Config, env: Mapping[str, str]) -> Ctx:
    """[cluster] redis_url: this instance joins the others through Redis (proxy/cluster/).
    Imported only here, so without the table nothing loads redis-py."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        from proxy.cluster.node import Cluster

        cluster = Cluster(config.cluster, instance_origin(config, env))
        cluster.attach(app[ROUTER].current)  # before the first await: the probe gate is set
        app[CLUSTER] = cluster
        await cluster.start()
        try:
            yield
        finally:
            await cluster.close()

    return ctx


async def cluster_accounting(app: web.Application) -> AsyncIterator[None]:
    """After the accounting starts: the cluster shares its limits and budgets."""
    if (cluster := app.get(CLUSTER)) is not None:
        cluster.attach_accounting(app[ACCESS], app[ACCOUNTING].budget)
    yield


def _demo_prepare(app: web.Application) -> Callable[[Config], Config]:
    from proxy.assembly.demo import demo_build

    return demo_build(app)


def task_ctx(name: str, run: Callable[[], Coroutine[Any, Any, None]]) -> Ctx:
    """A background task for the app's lifetime. The watchdog and the lag meter both tick
    on the event loop itself: a blocked loop stops the watchdog pings (and systemd
    restarts the service) and shows up as lag."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        task = asyncio.create_task(run(), name=name)
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    return ctx
