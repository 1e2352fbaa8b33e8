"""Config reload (SIGHUP): build a new Router and swap it in with one reference change.

In-flight requests finish on the Router they started with. Latency and breaker state carry
over (the new Router shares the Health object) and so does the probe loop's accounting. A
provider whose settings and credentials did not change is shared by both Routers; the
others are started before the swap, and the replaced ones closed once the old Router has
no request left. A config that does not load or build is rejected and the old one serves on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from proxy.config import Config, ConfigError
from proxy.providers.base import Provider
from proxy.serve.drain import InFlight
from proxy.serve.state import Router, RouterHolder

log = logging.getLogger("model_router")

# Read once at start-up; changing them in the file takes a restart. (The listen address
# too, but the command line may override it, so it is pinned silently: keep_listen_address.)
RESTART_ONLY = (
    ("server", "max_body_bytes"),
    ("server", "connect_timeout_s"),
    ("probes", "half_life_s"),
    # Like the half-life, fixed when the latency table is made (it outlives reloads).
    ("probes", "p90_weight"),
    ("probes", "shift_samples"),
)


class ReloadError(Exception):
    """The new config was rejected; the message says why (it never holds secrets)."""


Rebuild = Callable[[Router], Router]


class Runtime:
    """Owns the live Router's lifecycle: its probe task, reloads, and retiring old Routers.

    ``rebuild(previous)`` loads the config file and builds a Router from it (raising
    ConfigError when the file is wrong); it is given the live Router to share its Health and
    unchanged providers.
    """

    def __init__(self, holder: RouterHolder, rebuild: Rebuild, in_flight: InFlight) -> None:
        self.holder = holder
        self._in_flight = in_flight
        self._rebuild = rebuild
        self._lock = asyncio.Lock()
        self._probe_task: asyncio.Task[None] | None = None
        self._retiring: dict[asyncio.Task[None], list[Provider]] = {}
        self._start_probes(holder.current)

    async def reload(self) -> str:
        """Apply the config file now; returns a one-line summary or raises ReloadError."""
        async with self._lock:
            old = self.holder.current
            try:
                new = self._rebuild(old)
            except ConfigError as exc:
                raise ReloadError(str(exc)) from None
            except Exception as exc:
                # str() only: an exception's repr may carry request headers.
                raise ReloadError(
                    f"building the router failed: {type(exc).__name__}: {exc}"
                ) from None
            fresh = [p for name, p in new.providers.items() if old.providers.get(name) is not p]
            started: list[Provider] = []
            try:
                for provider in fresh:
                    await provider.start()
                    started.append(provider)
            except Exception as exc:
                for provider in started:
                    await provider.close()
                raise ReloadError(
                    f"starting provider {provider.name} failed: {type(exc).__name__}: {exc}"
                ) from None
            # Both in one step, with no await between: no request sees one without the other.
            new.health.set_catalog(new.catalog)
            self.holder.current = new
            await self._stop_probes()
            if new.probe_loop is not None and old.probe_loop is not None:
                new.probe_loop.adopt(old.probe_loop)
            self._start_probes(new)
            kept = set(map(id, new.providers.values()))
            stale = [p for p in old.providers.values() if id(p) not in kept]
            if stale:
                running = set(self._in_flight.requests)
                task = asyncio.create_task(self._retire(running, stale), name="retire-providers")
                self._retiring[task] = stale
                task.add_done_callback(self._retiring.pop)
            for section, key in RESTART_ONLY:
                before = getattr(getattr(old.config, section), key)
                after = getattr(getattr(new.config, section), key)
                if before != after:
                    log.warning(
                        "config reload: %s.%s changed (%r -> %r); it takes effect on restart",
                        section,
                        key,
                        before,
                        after,
                    )
            return (
                f"config reloaded from {new.config.source}: {len(new.catalog.models)} models, "
                f"{len(new.providers)} providers ({len(fresh)} new, {len(stale)} retiring)"
            )

    @property
    def retiring(self) -> int:
        """Providers a reload replaced that still wait for their last requests to finish."""
        return sum(len(providers) for providers in self._retiring.values())

    async def close(self) -> None:
        """App shutdown: stop probing and close every provider, retiring ones included."""
        await self._stop_probes()
        closing: list[Provider] = []
        for task, providers in list(self._retiring.items()):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            closing += providers
        seen: set[int] = set()
        for provider in [*self.holder.current.providers.values(), *closing]:
            if id(provider) not in seen:
                seen.add(id(provider))
                await provider.close()

    async def _retire(self, requests: set[asyncio.Task[Any]], stale: list[Provider]) -> None:
        # Only requests already in flight at the swap can be on the old Router (a handler
        # reads the live one once, on arrival); when they are done, so are its providers.
        if requests:
            await asyncio.wait(requests)
        for provider in stale:
            try:
                await provider.close()
            except Exception as exc:
                log.warning("closing retired provider %s: %s", provider.name, type(exc).__name__)

    def _start_probes(self, router: Router) -> None:
        if router.probe_loop is not None:
            self._probe_task = asyncio.create_task(router.probe_loop.run(), name="probe-loop")

    async def _stop_probes(self) -> None:
        task, self._probe_task = self._probe_task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


def keep_listen_address(new: Config, running: Config) -> Config:
    """The running listen address stays: the socket is bound at start-up."""
    server = replace(new.server, host=running.server.host, port=running.server.port)
    return replace(new, server=server)
