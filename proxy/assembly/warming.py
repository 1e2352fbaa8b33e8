"""Warm upstream connections (``proxy/serve/warm.py``) wired into the app: the upstream
sessions tell the warmer about each request, its targets come from the live Router (at
start and after each reload), and its background task runs for the app's lifetime, as a
``cleanup_ctx`` entry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from proxy.config import Config
from proxy.serve.state import ROUTER, Router
from proxy.serve.warm import Warmer, WarmTarget

# Keeps the upstream pools warm; the tests read its counters.
WARMER: web.AppKey[Warmer] = web.AppKey("warmer", Warmer)


def make_warmer(config: Config) -> Warmer:
    return Warmer(config.server.upstream_keepalive_s, timeout_s=config.server.connect_timeout_s)


def noting(app: web.Application, config: Config) -> Warmer | None:
    """Who the upstream sessions tell about each request and each connection closed instead
    of pooled: the warmer, when warming is on (the session's ``observer``)."""
    return app[WARMER] if config.server.warm_connections else None


def warm_targets(router: Router) -> list[WarmTarget]:
    """The upstreams the config expects to use: every provider serving a deployment."""
    used = {d.provider for d in router.catalog.deployments()}
    targets = []
    for name, provider in router.providers.items():
        if name in used and (pool := provider.pool_target()) is not None:
            url, session, tls = pool
            targets.append(WarmTarget(name, url, session, tls))
    return targets


def retarget(app: web.Application, router: Router) -> None:
    """A (re)built Router: pre-connect to the upstreams it routes to."""
    if router.config.server.warm_connections:
        app[WARMER].set_targets(warm_targets(router))


def warm_ctx(config: Config) -> Callable[[web.Application], AsyncIterator[None]]:
    """After the router: its targets, then the re-use check every quarter keep-alive."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        warmer = app[WARMER]
        task = None
        if config.server.warm_connections:
            retarget(app, app[ROUTER].current)
            task = asyncio.create_task(warmer.run(), name="warm-connections")
        try:
            yield
        finally:
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await warmer.close()

    return ctx
