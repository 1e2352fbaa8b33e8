"""The retry budget: fallback attempts in flight bounded by a fraction of the requests in
flight, so an outage cannot become a retry storm. It also counts those requests (``active``,
which the handlers move in and out), the one in-flight counter the bound is taken from.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class RetryBudget:
    """Fallback attempts in flight may be at most ``ratio`` x requests in flight (or ``floor``).

    That bound is what keeps an outage from becoming a retry storm. A fallback that finds the
    budget full waits its turn, first come first served, for up to its attempt's deadline
    instead of failing at once: when a provider dies under load, many requests fail in the
    same few milliseconds, and dropping the fallbacks that would have succeeded elsewhere turns
    a failure the router could hide into client errors. The queue keeps the bound; only a
    fallback that cannot get a slot in time is denied.
    """

    __slots__ = ("_active", "_waiters", "denied", "floor", "ratio", "retrying")

    def __init__(self, ratio: float, floor: int) -> None:
        self.ratio = ratio
        self.floor = floor
        self._active = 0
        self.retrying = 0
        self.denied = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def active(self) -> int:
        """Requests in flight; the handlers count them in and out."""
        return self._active

    @active.setter
    def active(self, n: int) -> None:
        self._active = n
        if self._waiters:  # twice a request: 7 bytecodes less each than calling _wake
            self._wake()

    @property
    def waiting(self) -> int:
        return sum(1 for f in self._waiters if not f.done())

    def _room(self) -> bool:
        return self.retrying < max(self.floor, int(self.ratio * self._active))

    async def acquire(self, wait_s: float) -> bool:
        """Take a fallback slot, waiting up to ``wait_s``; False (and counted) if denied."""
        if not self._waiters and self._room():
            self.retrying += 1
            return True
        if wait_s <= 0:
            self.denied += 1
            return False
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        try:
            async with asyncio.timeout(wait_s):
                await fut
        except BaseException as exc:
            if fut.done() and not fut.cancelled():
                self.release()  # a slot was handed over just as we gave up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(fut)
            if isinstance(exc, TimeoutError):
                self.denied += 1
                return False
            raise
        return True

    def release(self) -> None:
        self.retrying -= 1
        self._wake()

    def _wake(self) -> None:
        while self._waiters and self._room():
            fut = self._waiters.popleft()
            if not fut.done():
                self.retrying += 1  # handed over: the waiter owns it when it resumes
                fut.set_result(None)
