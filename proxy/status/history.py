"""The last hour in memory, for the status page: one point per deployment, model and API key
every ``INTERVAL_S`` in fixed-size rings, taken by a background task.

Per request the only work is ``History.sink`` (two dict look-ups and four additions, about
0.3 us: benchmarks/history_overhead.py). Everything else is read every ten seconds from
counters that exist anyway: the latency table (estimate, p90, sample counts by source), the
breakers (state, transitions) and ``Health.failures``. Memory is fixed per series once the
first sample has run: about 15 KB per deployment for an hour, models' rings included (1.0 MB
for the bundled catalog's 65 deployments, 7.5 MB for 500; measured by the benchmark).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from array import array
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

from aiohttp import web

from proxy.serve.record import RequestRecord
from proxy.serve.state import ROUTER, Router

log = logging.getLogger("model_router.history")

INTERVAL_S = 10.0
POINTS = 360  # one hour
# Breaker codes in the rings, as in /metrics' model_router_breaker_state; -1: no data.
BREAKER_CODES = {"closed": 0, "half_open": 1, "open": 2}
NO_KEY = "(no key)"  # requests when no [[keys]] are configured
NO_MODEL = "(none)"  # requests no deployment answered (bad input, every attempt failed)


class Tally:
    """Requests and spend since the last point, for one deployment or one key."""

    __slots__ = ("requests", "spend")

    def __init__(self) -> None:
        self.requests = 0
        self.spend = 0.0


class DeploymentSeries:
    """One deployment's hour. Arrays of fixed length, indexed like ``History.times``."""

    __slots__ = (
        "breaker",
        "errors",
        "last_failures",
        "last_probe",
        "last_samples",
        "live",
        "p90",
        "probes",
        "requests",
        "ttft",
    )

    def __init__(self, failures: int, samples: int, probe_samples: int) -> None:
        # Doubles rounded to 0.1 ms at sampling: the payload is then a slice and a tolist().
        nan = array("d", [math.nan]) * POINTS
        zero = array("I", [0]) * POINTS
        self.ttft = array("d", nan)  # decayed estimate routing used, ms
        self.p90 = array("d", nan)  # decayed p90, ms
        self.requests = array("I", zero)  # answered by this deployment
        self.errors = array("I", zero)  # failed attempts (live and probe), client faults aside
        self.probes = array("I", zero)  # TTFT samples from probes
        self.live = array("I", zero)  # TTFT samples from live requests
        self.breaker = array("b", [-1]) * POINTS  # the worst state seen in the interval
        self.last_failures = failures
        self.last_samples = samples
        self.last_probe = probe_samples


class SpendSeries:
    """Requests and spend per point for one model or one API key."""

    __slots__ = ("requests", "spend")

    def __init__(self) -> None:
        self.requests = array("I", [0]) * POINTS
        self.spend = array("d", [0.0]) * POINTS


class History:
    """Rings for the last ``POINTS`` samples. ``sink`` is a ``Router.sinks`` entry; ``sample``
    runs every ``INTERVAL_S`` (``history_ctx``); ``payload`` is GET /v1/router/history."""

    def __init__(self, wall: Callable[[], float] = time.time) -> None:
        self._wall = wall
        self.times = array("d", [math.nan]) * POINTS  # wall-clock time of each point
        self.head = 0  # the slot the next point goes to
        self.filled = 0
        self.deployments: dict[str, DeploymentSeries] = {}
        self.models: dict[str, SpendSeries] = {}
        self.keys: dict[str, SpendSeries] = {}
        self._by_dep: dict[tuple[str | None, str | None], Tally] = {}
        self._by_key: dict[str | None, Tally] = {}
        self._last_wall: float | None = None

    def sink(self, outcome: RequestRecord, seconds: float) -> None:
        """Once per request, after its answer: count it for its deployment and its key."""
        # Subscripts in try blocks, not get() and a None test, and no locals for the keys:
        # after the first request of an interval the keys are there (8 bytecodes fewer).
        try:
            t = self._by_dep[(outcome.model, outcome.provider)]
        except KeyError:
            t = self._by_dep[(outcome.model, outcome.provider)] = Tally()
        t.requests += 1
        t.spend += outcome.cost
        try:
            k = self._by_key[outcome.key_id]
        except KeyError:
            k = self._by_key[outcome.key_id] = Tally()
        k.requests += 1
        k.spend += outcome.cost

    def sample(self, router: Router, monotonic: float | None = None) -> None:
        """Take one point for every deployment, model and key of ``router``."""
        now = self._wall()
        mono = time.monotonic() if monotonic is None else monotonic
        slot = self.head
        by_dep, self._by_dep = self._by_dep, {}
        by_key, self._by_key = self._by_key, {}
        health = router.health
        rows = {row.key: row for row in health.table.rows()}
        board = health.board
        since = None if self._last_wall is None else mono - (now - self._last_wall)
        current: dict[str, DeploymentSeries] = {}
        model_requests: dict[str, int] = {}
        model_spend: dict[str, float] = {}
        for d in router.catalog.deployments():
            row = rows.get(d.key)
            samples = row.samples if row is not None else 0
            probe_samples = row.probe_samples if row is not None else 0
            failures = health.failures.get(d.key, 0)
            s = self.deployments.get(d.key)
            if s is None:
                s = DeploymentSeries(failures, samples, probe_samples)
            current[d.key] = s
            if row is not None:
                s.ttft[slot] = round(row.estimate_ms, 1)
                s.p90[slot] = round(row.p90_ms, 1)
            else:
                s.ttft[slot] = s.p90[slot] = math.nan
            t = by_dep.get((d.model_id, d.provider))
            s.requests[slot] = t.requests if t is not None else 0
            if t is not None:
                model_requests[d.model_id] = model_requests.get(d.model_id, 0) + t.requests
                model_spend[d.model_id] = model_spend.get(d.model_id, 0.0) + t.spend
            # A reload may reset a counter (a new table); never record a negative count.
            s.errors[slot] = max(0, failures - s.last_failures)
            s.probes[slot] = max(0, probe_samples - s.last_probe)
            s.live[slot] = max(0, (samples - probe_samples) - (s.last_samples - s.last_probe))
            s.last_failures, s.last_samples, s.last_probe = failures, samples, probe_samples
            s.breaker[slot] = _worst_state(board.state(d.key).value, board.changes(d.key), since)
        self.deployments = current
        none = by_dep.get((None, None))
        if none is not None:
            model_requests[NO_MODEL] = none.requests
        self._sample_spend(router, (model_requests, model_spend), by_key, slot)
        self.times[slot] = round(now, 3)  # as the payload shows it, so ?since= matches
        self._last_wall = now
        self.head = (slot + 1) % POINTS
        self.filled = min(POINTS, self.filled + 1)

    def _sample_spend(
        self,
        router: Router,
        by_model: tuple[dict[str, int], dict[str, float]],
        by_key: Mapping[str | None, Tally],
        slot: int,
    ) -> None:
        """Requests and spend per model and per key id for this point."""
        self.models = self._spend_rings(
            self.models,
            [m.id for m in router.catalog.models] + [NO_MODEL],
            by_model[0],
            by_model[1],
            slot,
        )
        key_names = [k.id for k in router.config.keys] or [NO_KEY]
        self.keys = self._spend_rings(
            self.keys,
            key_names,
            {(k or NO_KEY): t.requests for k, t in by_key.items()},
            {(k or NO_KEY): t.spend for k, t in by_key.items()},
            slot,
        )

    @staticmethod
    def _spend_rings(
        old: Mapping[str, SpendSeries],
        names: Iterable[str],
        requests: Mapping[str, int],
        spend: Mapping[str, float],
        slot: int,
    ) -> dict[str, SpendSeries]:
        rings = {}
        for name in names:
            s = old.get(name) or SpendSeries()
            s.requests[slot] = requests.get(name, 0)
            s.spend[slot] = round(spend.get(name, 0.0), 8)
            rings[name] = s
        return rings

    def _window(self, since: float | None) -> tuple[int, int]:
        """(first slot, points): the oldest-first run of points newer than ``since``."""
        start = (self.head - self.filled) % POINTS
        n = self.filled
        if since is not None:
            while n and self.times[(start + self.filled - n) % POINTS] <= since:
                n -= 1
        return (start + self.filled - n) % POINTS, n

    def _deployment_payload(
        self, router: Router, tail: Callable[[array[Any]], list[Any]]
    ) -> list[dict[str, Any]]:
        offset = self._wall() - time.monotonic()
        models = {m.id: m for m in router.catalog.models}
        deployments = []
        for d in router.catalog.deployments():
            s = self.deployments.get(d.key)
            if s is None:
                continue
            changes = router.health.board.changes(d.key)
            deployments.append(
                {
                    "deployment": d.key,
                    "model": d.model_id,
                    "provider": d.provider,
                    "tier": models[d.model_id].tier,
                    "ttft_estimate_ms": tail(s.ttft),
                    "ttft_p90_ms": tail(s.p90),
                    "requests": tail(s.requests),
                    "errors": tail(s.errors),
                    "breaker": tail(s.breaker),
                    "probe_samples": tail(s.probes),
                    "live_samples": tail(s.live),
                    "transitions": [
                        {"at": round(at + offset, 3), "state": state} for at, state in changes
                    ],
                }
            )
        return deployments

    def payload(
        self, router: Router, since: float | None = None, spend: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        """GET /v1/router/history: the rings oldest first (only points after ``since``), and
        each breaker's transitions in wall-clock time. Keys appear by their config id only."""
        first, n = self._window(since)

        def tail(values: array[Any]) -> list[Any]:
            # NaN (no data) leaves orjson as null.
            if first + n <= POINTS:
                return values[first : first + n].tolist()
            return (values[first:] + values[: first + n - POINTS]).tolist()

        deployments = self._deployment_payload(router, tail)
        limits = {k.id: k.daily_usd for k in router.config.keys}
        by_key = (spend or {}).get("by_key", {})
        return {
            "object": "router.history",
            "interval_s": INTERVAL_S,
            "points": POINTS,
            "times": tail(self.times),
            "breaker_codes": BREAKER_CODES,
            "deployments": deployments,
            "models": [
                {
                    "model": name,
                    "requests": tail(s.requests),
                    "spend_usd": tail(s.spend),
                }
                for name, s in self.models.items()
            ],
            "keys": [
                {
                    "key": name,
                    "requests": tail(s.requests),
                    "spend_usd": tail(s.spend),
                    "spend_today_usd": round(by_key.get(name, 0.0), 6),
                    "daily_usd": limits.get(name) or None,
                }
                for name, s in self.keys.items()
            ],
        }


def _worst_state(now_state: str, changes: list[tuple[float, str]], since: float | None) -> int:
    """The worst breaker state during the interval: an opening that closed again between
    two samples still shows."""
    worst = BREAKER_CODES[now_state]
    if since is None:
        return worst
    for at, state in reversed(changes):
        if at < since:
            # The state entered before the interval began held at its start.
            return max(worst, BREAKER_CODES[state])
        worst = max(worst, BREAKER_CODES[state])
    return worst


HISTORY = web.AppKey("history", History)


async def sample_every(app: web.Application, interval_s: float = INTERVAL_S) -> None:
    """The sampling task: a point now, then one every ``interval_s`` on the wall clock's
    grid, from the live Router of the moment (a reload swaps it)."""
    history = app[HISTORY]
    while True:
        try:
            history.sample(app[ROUTER].current)
        except Exception:
            # A sampling bug must not stop serving, nor the next sample.
            log.exception("history sample failed")
        await asyncio.sleep(interval_s - time.time() % interval_s)


async def history_ctx(app: web.Application) -> AsyncIterator[None]:
    """A ``cleanup_ctx`` entry after the one that builds the router."""
    task = asyncio.create_task(sample_every(app), name="history")
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
