"""A deadline for the current task that is cheap to move (here, below both layers, for the
probe loop and the serving path): setting ``at`` is an attribute
write. ``asyncio.Timeout.reschedule`` replaces a loop timer each time (about 2.5 us), and the
relay moves its deadline twice per streamed chunk. Time the loop did not run (the process
stopped, a VM paused, the loop blocked) is not counted against a deadline.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType

# A check this late means the event loop was not running: the process stopped (SIGSTOP), its
# VM paused, the loop blocked. Ordinary loop lag under load is milliseconds.
PAUSE_S = 1.0


class Deadline:
    """``async with Deadline(at, period) as d: ... d.at = loop.time() + x`` raises TimeoutError
    (like ``asyncio.timeout``) once the loop's clock passes ``d.at``.

    One timer checks at most every ``period`` seconds and re-arms itself until ``at`` has
    passed. Every ``at`` set must be at least ``period`` after the moment it is set; then the
    check is never late, because it always runs no later than that.

    A check that runs more than ``PAUSE_S`` late moves ``at`` on by its lateness (and at least
    a period past now): the loop was not running, so whatever the deadline waits for (a first
    token, a chunk) was not late.
    ``paused()`` says how long that was, for callers that time the same wait.
    """

    __slots__ = ("_armed_at", "_handle", "_loop", "_paused_s", "_period", "_task", "at", "expired")

    def __init__(self, at: float, period: float) -> None:
        self.at = at
        self._period = period
        self.expired = False
        self._loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("Deadline must be used inside a task")
        self._task = task
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = at
        self._paused_s = 0.0

    async def __aenter__(self) -> Deadline:
        self._arm()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self.expired and exc_type is asyncio.CancelledError and self._task.uncancel() == 0:
            raise TimeoutError from exc

    def reschedule(self, when: float | None) -> None:
        """``asyncio.Timeout.reschedule``'s contract: a later deadline is a float write; an
        earlier one than the timer's re-arms it (the drain pulls a stream's deadline to now)."""
        self.at = math.inf if when is None else when
        if self._handle is not None and self.at < self._armed_at:
            self._handle.cancel()
            self._arm()

    def _arm(self) -> None:
        self._armed_at = min(self.at, self._loop.time() + self._period)
        self._handle = self._loop.call_at(self._armed_at, self._check)

    def paused(self) -> float:
        """Seconds the loop did not run while this deadline was armed, counting a pause that
        has ended but whose check has not run yet (I/O can be handled first on resuming)."""
        if self._handle is None:
            return self._paused_s
        late = self._loop.time() - self._armed_at
        return self._paused_s + (late if late > PAUSE_S else 0.0)

    def _check(self) -> None:
        now = self._loop.time()
        late = now - self._armed_at
        if late > PAUSE_S:
            # At least one more period: what arrived during the pause is read first.
            self._paused_s += late
            self.at = max(self.at + late, now + self._period)
        if now >= self.at:
            self._handle = None
            self.expired = True
            self._task.cancel()
        else:
            self._arm()
