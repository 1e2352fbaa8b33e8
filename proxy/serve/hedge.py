"""Hedged first-token races: when the first attempt of a stream has no content token after a
delay, a second one starts on another provider; the first to produce a content token wins.

This module knows nothing of HTTP, providers or dispatch. ``Racers`` waits on attempts that
dispatch started as tasks ("open a stream and return at its first content token") and picks
the winner; it never calls back into dispatch, which decides when and where to hedge at its
commit point (``Dispatcher._open_hedged``). ``HedgeBudget`` bounds how many requests may
hedge; ``HedgePolicy`` says whether a request may hedge and after how long. The settings are
``proxy.config.HedgeSettings``.

How it decides, per streamed request:
1. Eligible: hedging is on for the request's ``prefer`` (``[hedging] prefer``, default
   ``["fast"]``) or for its key (``[[keys]] hedge``), and the request did not say
   ``"hedge": false``. A request may also ask for it with ``"hedge": true``.
2. The delay is the primary deployment's decayed p90 TTFT, clamped to ``min_delay_ms`` ..
   ``max_delay_ms``: a primary slower than nine in ten of its recent answers is hedged.
3. At the delay, the hedge needs a token from the budget (at most ``budget_percent`` % of
   eligible requests, ``burst`` at once) and a candidate on another provider whose breaker is
   CLOSED. Without either, the primary runs alone.
4. The first content token wins; the other attempt is cancelled at once, which closes its
   upstream connection (as a client disconnect does). Nothing reaches the client before then.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.config import HedgeSettings

T = TypeVar("T")


class HedgeBudget:
    """A token bucket: every eligible request adds ``percent / 100`` of a token (up to
    ``burst``), a hedge takes a whole one, so hedges stay under ``percent`` % of requests."""

    __slots__ = ("_per_request", "burst", "denied", "tokens", "used")

    def __init__(self, percent: float, burst: float) -> None:
        self._per_request = percent / 100.0
        self.burst = burst
        self.tokens = burst
        self.used = 0
        self.denied = 0

    def offer(self) -> None:
        """One eligible request arrived."""
        self.tokens = min(self.burst, self.tokens + self._per_request)

    def take(self) -> bool:
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            self.used += 1
            return True
        self.denied += 1
        return False


@dataclass(slots=True)
class HedgePolicy:
    settings: HedgeSettings
    budget: HedgeBudget = field(init=False)

    def __post_init__(self) -> None:
        self.budget = HedgeBudget(self.settings.budget_percent, self.settings.burst)

    def wants(self, prefer: str | None, key_hedge: bool | None, request_hedge: bool | None) -> bool:
        """Whether a streamed request is eligible: the request's say first, then its key's,
        then the per-prefer default."""
        if not self.settings.enabled or request_hedge is False:
            return False
        if request_hedge is True:
            return True
        if key_hedge is not None:
            return key_hedge
        return prefer in self.settings.prefer

    def delay_s(self, p90_ms: float) -> float:
        s = self.settings
        ms = p90_ms if math.isfinite(p90_ms) else s.max_delay_ms
        return min(s.max_delay_ms, max(s.min_delay_ms, ms)) / 1000.0


@dataclass(slots=True)
class RaceResult(Generic[T]):
    value: T | None  # the winner's, None when every attempt failed
    winner: int  # 0 the primary, 1 the hedge, -1 none
    hedged: bool  # a second attempt was started
    discarded: list[T] = field(default_factory=list)  # a tie's loser, already at its token


class Racers(Generic[T]):
    """The attempts of one race, each a task its caller started (so a racer's work is never
    called from here: this only waits). The first to return a value wins; the others are
    cancelled and awaited before ``result`` returns, so their upstreams are closed by then. A
    failure (None) of one leaves the other running. ``aclose`` cancels whatever still runs."""

    __slots__ = ("tasks",)

    def __init__(self, primary: asyncio.Future[T | None]) -> None:
        self.tasks = [primary]

    async def within(self, delay_s: float) -> bool:
        """Whether the primary finished (won or failed) within ``delay_s``."""
        done, _ = await asyncio.wait(self.tasks[:1], timeout=delay_s)
        return bool(done)

    def add(self, hedge: asyncio.Future[T | None]) -> None:
        self.tasks.append(hedge)

    async def result(self) -> RaceResult[T]:
        tasks = self.tasks
        if len(tasks) == 1:
            value = await tasks[0]
            return RaceResult(value, 0 if value is not None else -1, False)
        pending: set[asyncio.Future[T | None]] = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winners = [t for t in tasks if t in done and t.result() is not None]
            if winners:
                win = winners[0]
                await self.aclose()
                # A tie: both reached their first token in the same turn; the caller closes
                # the one that lost.
                discarded = [t.result() for t in winners[1:]]
                extra = [v for v in discarded if v is not None]
                return RaceResult(win.result(), tasks.index(win), True, extra)
        return RaceResult(None, -1, True)

    async def aclose(self) -> None:
        live = [t for t in self.tasks if not t.done()]
        for t in live:
            t.cancel()
        if live:
            await asyncio.wait(live)
