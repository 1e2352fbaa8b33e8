"""Hedged first-token races: when the first attempt of a stream has no content token after a
delay, a second one starts on another provider; the first to produce a content token wins.

This module knows nothing of HTTP, providers or dispatch. ``race`` takes "start an attempt and
return when its first content token arrives" callables and a delay; ``HedgeBudget`` bounds
how many requests may hedge; ``HedgePolicy`` says whether a request may hedge and after how
long. Dispatch plugs in at its commit point (``Dispatcher._open_hedged``); the settings are
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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from proxy.config import HedgeSettings

T = TypeVar("T")

# Starts one attempt; resolves to its value at the first content token, or None when the
# attempt failed (the callable records the failure itself).
Attempt = Callable[[], Awaitable[T | None]]


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


async def race(
    primary: Attempt[T],
    hedge: Callable[[], Attempt[T] | None],
    delay_s: float,
    *,
    on_hedge: Callable[[], None] | None = None,
) -> RaceResult[T]:
    """Run ``primary``; if it has not finished after ``delay_s``, ask ``hedge`` for a second
    attempt (None: no hedge) and run both. The first to return a value wins; the other is
    cancelled and awaited before this returns, so its upstream is closed by then. A failure
    (None) of one leaves the other running. Cancelling ``race`` cancels both."""
    first = asyncio.ensure_future(primary())
    tasks = [first]
    try:
        done, _ = await asyncio.wait(tasks, timeout=delay_s)
        second_attempt = None if done else hedge()
        if second_attempt is None:
            value = await first
            return RaceResult(value, 0 if value is not None else -1, False)
        if on_hedge is not None:
            on_hedge()
        tasks.append(asyncio.ensure_future(second_attempt()))
        pending = set(tasks)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            winners = [t for t in tasks if t in done and t.result() is not None]
            if winners:
                win = winners[0]
                for t in pending:
                    t.cancel()
                if pending:
                    await asyncio.wait(pending)
                # A tie: both reached their first token in the same turn; the caller closes
                # the one that lost.
                discarded = [t.result() for t in winners[1:]]
                extra = [v for v in discarded if v is not None]
                return RaceResult(win.result(), tasks.index(win), True, extra)
        return RaceResult(None, -1, True)
    finally:
        live = [t for t in tasks if not t.done()]
        for t in live:
            t.cancel()
        if live:
            await asyncio.wait(live)
