"""The simulator's aiohttp app: every wire's routes plus the control API, started on loopback."""

from __future__ import annotations

import ssl
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from .anthropic_api import add_anthropic_routes
from .bedrock_api import add_bedrock_routes
from .mistral_api import add_mistral_routes
from .openai_api import add_openai_routes
from .server import (
    SIM_STATE,
    SimState,
    control_fault,
    control_profile,
    control_reset,
    control_stats,
)


@web.middleware
async def _count_connection(request: web.Request, handler: Handler) -> web.StreamResponse:
    state = request.app[SIM_STATE]
    if request.method == "POST":
        state.last_arrival = time.perf_counter()
    transport = request.transport
    peer = transport.get_extra_info("peername") if transport is not None else None
    if peer is not None:
        state.connections.add(f"{peer[0]}:{peer[1]}")
    return await handler(request)


def make_sim_app(state: SimState) -> web.Application:
    app = web.Application(client_max_size=64 * 1024 * 1024, middlewares=[_count_connection])
    app[SIM_STATE] = state
    app.router.add_post("/_sim/profile", control_profile)
    app.router.add_post("/_sim/fault", control_fault)
    app.router.add_post("/_sim/reset", control_reset)
    app.router.add_get("/_sim/stats", control_stats)
    add_openai_routes(app)
    add_anthropic_routes(app)
    add_bedrock_routes(app)
    add_mistral_routes(app)
    return app


def bound_port(site: web.TCPSite) -> int:
    """The port a site listens on (it may have been asked for port 0)."""
    # asyncio's Server and uvloop's both have .sockets; neither is the other's subclass.
    sockets = getattr(site._server, "sockets", None)
    if not sockets:
        raise RuntimeError("site is not started")
    return int(sockets[0].getsockname()[1])


async def start_sim(
    state: SimState,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    tls: ssl.SSLContext | None = None,
    keepalive_timeout_s: float = 75.0,
) -> tuple[web.AppRunner, str]:
    """Start the simulator on loopback; returns the runner (to clean up) and its base URL
    (``https://`` when ``tls`` is given: see ``proxy.sim.tls``).

    ``handler_cancellation`` is on so a departed client cancels the simulated answer, as a
    real provider would notice. Idle connections are kept ``keepalive_timeout_s`` (aiohttp's
    default is 75 s, as many providers' load balancers).
    """
    runner = web.AppRunner(
        make_sim_app(state),
        handler_cancellation=True,
        access_log=None,
        keepalive_timeout=keepalive_timeout_s,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=tls)
    await site.start()
    bound = bound_port(site)
    scheme = "https" if tls is not None else "http"
    return runner, f"{scheme}://{host}:{bound}"
