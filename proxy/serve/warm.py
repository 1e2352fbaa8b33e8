"""Warm upstream connections: the pools hold a live, recently used connection to every
upstream the config routes to, so the first completion after a pause pays no DNS, TCP or TLS.

- Pre-connect: at start and after every reload, one request per upstream origin the config
  expects to use (each enabled provider that serves a deployment) opens a pooled connection.
- Re-use check before expiry: an origin nothing has used for half the keep-alive gets a
  ``HEAD`` on its pooled connection. That re-uses the connection (proving it alive) and
  restarts its idle timer on both ends; if the upstream had closed it, a fresh one is opened
  now instead of on a user's request. Only origins with traffic (live or probe) in the last
  ``traffic_horizon_s`` are kept warm, so an unused provider is not pinged forever.
- Replacement: a request whose connection is closed rather than pooled (a stream cancelled
  by its client or lost in a hedged race, an upstream that said ``Connection: close``) has
  one opened in its place at once, so the next completion does not pay for the cancel of the
  last one (editors cancel the completion in flight at every keystroke). A closed connection
  of the warmer's own is not replaced, so a server that closes every connection costs at
  most one ``HEAD`` per closed request.
- Probes and live requests share the sessions (and so the pools); a probe reads its tiny answer
  to the end so its connection goes back to the pool (``proxy.assembly.probing``).

A ``HEAD`` to an API's base URL costs the provider nothing billable (a 404 or 405 is fine: the
connection is the point). Bedrock is not warmed here: botocore keeps its own pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from proxy.providers.session import SessionError, UpstreamSession, origin_of

log = logging.getLogger("model_router.warm")

# An origin with no traffic for this long is let go cold (an hour of a developer away).
TRAFFIC_HORIZON_S = 3600.0


@dataclass(frozen=True, slots=True)
class WarmTarget:
    """Where a provider's requests go: the URL to ping, its session and TLS settings."""

    provider: str
    url: str
    session: UpstreamSession
    ssl: ssl.SSLContext | bool = True
    # As the session names it in ``saw`` and ``lost``; computed once, so that a lost connection
    # (reported from inside the session) is matched without calling back into it.
    origin: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "origin", origin_of(self.url))


class Warmer:
    """Keeps one pooled connection per upstream origin alive; see the module docstring."""

    def __init__(
        self,
        keepalive_s: float,
        *,
        timeout_s: float = 5.0,
        traffic_horizon_s: float = TRAFFIC_HORIZON_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not keepalive_s > 0:
            raise ValueError(f"keepalive_s must be positive, got {keepalive_s!r}")
        self.keepalive_s = keepalive_s
        self.timeout_s = timeout_s
        self.traffic_horizon_s = traffic_horizon_s
        self._clock = clock
        self._targets: list[WarmTarget] = []
        self._last_use: dict[str, float] = {}  # origin -> last request of any kind
        self._last_traffic: dict[str, float] = {}  # origin -> last request not ours
        self._tasks: set[asyncio.Task[bool]] = set()
        self._warming: set[str] = set()  # origins with a HEAD of ours in flight (or queued)
        self._replace: set[str] = set()  # origins that lost a connection, for run() to replace
        self._wake = asyncio.Event()
        self._closed = False
        self.warmed = 0  # requests the warmer sent
        self.failed = 0

    def saw(self, origin: str, method: str) -> None:
        """A request to ``origin`` is about to take a pooled (or new) connection: it counts
        as use and as traffic. (The session does not report a ``HEAD``: the warmer's own,
        whose use ``_spawn`` has marked.)"""
        self._last_use[origin] = self._last_traffic[origin] = self._clock()

    def lost(self, origin: str) -> None:
        """A connection to ``origin`` was closed instead of pooled: open one in its place,
        unless the closed one was the warmer's own (or the origin is not ours to keep).

        Called from inside the session, so the ``HEAD`` is left to ``run``'s task: the
        request that closed the connection only marks the origin (marked warming now, so a
        burst of closes, a thousand clients gone in one turn of the loop, is one ``HEAD``)."""
        if origin in self._warming or self._closed:
            return
        now = self._clock()
        if now - self._last_traffic.get(origin, -1e18) >= self.traffic_horizon_s:
            return
        self._last_use[origin] = now
        self._warming.add(origin)
        self._replace.add(origin)
        self._wake.set()

    @property
    def targets(self) -> list[WarmTarget]:
        return list(self._targets)

    def set_targets(self, targets: Iterable[WarmTarget]) -> None:
        """The upstreams to keep warm (start-up and every reload); new ones are pre-connected
        at once, in the background."""
        known = {(t.origin, id(t.ssl)) for t in self._targets}
        self._targets = list({(t.origin, id(t.ssl)): t for t in targets}.values())
        now = self._clock()
        for t in self._targets:
            # The config expects to use it: that counts as traffic for the horizon.
            self._last_traffic.setdefault(t.origin, now)
            if (t.origin, id(t.ssl)) not in known:
                self._spawn(t)

    def due(self) -> list[WarmTarget]:
        """Targets whose origin has been idle for half the keep-alive and had traffic within
        the horizon: their pooled connection is re-used now, before it expires."""
        now = self._clock()
        refresh_after = self.keepalive_s / 2
        return [
            t
            for t in self._targets
            if now - self._last_use.get(t.origin, -1e18) >= refresh_after
            and now - self._last_traffic.get(t.origin, -1e18) < self.traffic_horizon_s
        ]

    async def run(self) -> None:
        """Replace lost connections at once and check every quarter keep-alive, forever
        (cancel to stop)."""
        try:
            while True:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(max(0.05, self.keepalive_s / 4)):
                        await self._wake.wait()
                self._wake.clear()
                if self._replace:
                    replace, self._replace = self._replace, set()
                    for t in self._targets:
                        if t.origin in replace:
                            self._spawn(t)
                    # Origins no target names: nothing will be sent, so not warming either.
                    self._warming -= replace - {t.origin for t in self._targets}
                for t in self.due():
                    self._spawn(t)
        finally:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _spawn(self, target: WarmTarget) -> None:
        # Marked used now, so a slow upstream is not pinged again while this one is pending;
        # marked warming now, not when the task starts, so a burst of closes (a thousand
        # clients gone in one turn of the loop) is replaced by one HEAD, not a thousand.
        self._last_use[target.origin] = self._clock()
        self._warming.add(target.origin)
        task = asyncio.create_task(self.warm(target), name=f"warm:{target.provider}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def warm(self, target: WarmTarget) -> bool:
        """One ``HEAD`` to the target: True if a response came (whatever its status)."""
        self.warmed += 1
        try:
            async with asyncio.timeout(self.timeout_s):
                # Not reported back to saw (the session reports no HEAD): _spawn marked the use.
                resp = await target.session.request("HEAD", target.url, tls=target.ssl)
                resp.release()
        except (SessionError, TimeoutError, OSError, ValueError) as exc:
            self.failed += 1
            # str() only: reprs of client errors carry request headers.
            log.info("warming %s failed: %s: %s", target.provider, type(exc).__name__, exc)
            return False
        finally:
            self._warming.discard(target.origin)
        return True

    async def close(self) -> None:
        # Connections closed while the app shuts down (drained streams, cancelled probes) are
        # not replaced: a HEAD then would only meet a closing session.
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
