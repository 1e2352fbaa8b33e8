"""Spend budgets per UTC day: a global cap and, once API keys exist, caps per key id.

Spend is counted as answers complete, so a request already in flight when a budget trips
still completes (and may take spend somewhat past the cap); the next one is refused.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from proxy.errors import RouterError

DAY_S = 86_400.0


def day_of(ts: float) -> int:
    # POSIX time has exactly 86 400 s per day, so this flips at UTC midnight.
    return int(ts // DAY_S)


class Budget:
    __slots__ = (
        "_clock",
        "_day",
        "by_key",
        "daily_usd",
        "elsewhere",
        "key_limits",
        "refused",
        "spent",
    )

    def __init__(self, daily_usd: float, clock: Callable[[], float] = time.time) -> None:
        self.daily_usd = daily_usd  # 0: no global budget
        # Per-key daily caps in USD, keyed by key id; filled by whoever owns API keys.
        self.key_limits: dict[str, float] = {}
        self._clock = clock
        self._day = day_of(clock())
        self.spent = 0.0
        self.by_key: dict[str, float] = {}
        self.refused = 0
        # Cluster hook (proxy/cluster/): today's spend by the other instances, globally
        # (None) or for one key id. ``spent`` and ``by_key`` stay this instance's own.
        self.elsewhere: Callable[[str | None], float] | None = None

    def midnight(self) -> float:
        """Unix time of today's UTC midnight (the start of the budget day)."""
        return day_of(self._clock()) * DAY_S

    def restore(self, spent: float, by_key: Mapping[str, float]) -> None:
        """Spend already made today, read back from the usage log at start-up."""
        self._roll()
        self.spent = spent
        self.by_key = dict(by_key)

    def add(self, cost: float, key_id: str | None) -> None:
        # day_of and _roll inlined for the common case, the same day: this runs once per
        # request, and so does check (17 bytecodes a call saved, ``benchmarks.opcodes``).
        if (day := int(self._clock() // DAY_S)) != self._day:
            self._roll_to(day)
        if cost <= 0:
            return
        self.spent += cost
        if key_id is not None:
            self.by_key[key_id] = self.by_key.get(key_id, 0.0) + cost

    def check(self, key_id: str | None) -> None:
        """Raise the 429 to answer when a budget that applies to this request is spent."""
        if (day := int(self._clock() // DAY_S)) != self._day:
            self._roll_to(day)
        if self.daily_usd > 0:
            elsewhere = self.elsewhere
            spent = self.spent + (elsewhere(None) if elsewhere is not None else 0.0)
            if spent >= self.daily_usd:
                self._refuse(f"the global daily budget of ${self.daily_usd:.2f}", spent)
        if key_id is not None and (limit := self.key_limits.get(key_id)) is not None:
            spent = self._key_spent(key_id)
            if spent >= limit:
                self._refuse(f"the daily_usd budget of ${limit:.2f} for API key {key_id!r}", spent)

    def _key_spent(self, key_id: str) -> float:
        spent = self.by_key.get(key_id, 0.0)
        return spent + self.elsewhere(key_id) if self.elsewhere is not None else spent

    def reset_in_s(self) -> float:
        self._roll()
        return (self._day + 1) * DAY_S - self._clock()

    def status(self) -> dict[str, Any]:
        self._roll()
        resets = (self._day + 1) * DAY_S
        spent = self.spent + (self.elsewhere(None) if self.elsewhere is not None else 0.0)
        return {
            "today_usd": round(spent, 6),
            "this_instance_usd": round(self.spent, 6),
            "daily_budget_usd": self.daily_usd or None,
            "remaining_usd": round(max(self.daily_usd - spent, 0.0), 6) if self.daily_usd else None,
            "resets_at": datetime.fromtimestamp(resets, UTC).isoformat(),
            "resets_in_s": round(self.reset_in_s(), 1),
            "refused": self.refused,
            # Keys with a daily_usd cap: today's spend (cluster-wide when clustered).
            "keys": {
                kid: {"today_usd": round(self._key_spent(kid), 6), "daily_budget_usd": limit}
                for kid, limit in sorted(self.key_limits.items())
            },
        }

    def _refuse(self, which: str, spent: float) -> None:
        self.refused += 1
        wait = max(1, math.ceil(self.reset_in_s()))
        raise RouterError(
            429,
            f"{which} is spent (${spent:.4f} so far today); it resets at 00:00 UTC, "
            f"in {wait // 3600} h {wait % 3600 // 60} min",
            type="insufficient_quota",
            code="budget_exceeded",
            # The SDK would retry after its own short backoff; the wait is hours.
            headers={"Retry-After": str(wait), "x-should-retry": "false"},
        )

    def _roll(self) -> None:
        self._roll_to(day_of(self._clock()))

    def _roll_to(self, day: int) -> None:
        # A clock stepped back over midnight (NTP) keeps counting into the day already begun,
        # rather than restarting one whose budget was spent. A clock that was days ahead and
        # is corrected takes the day it now reads: the budget must not wait for it to catch up.
        if day > self._day or day < self._day - 1:
            self._day = day
            self.spent = 0.0
            self.by_key = {}
