"""The daily budget with an injected clock: tripping, the 429's wording, UTC-midnight reset,
per-key caps and the spend read back at start-up."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from proxy.accounting.daily_budget import Budget
from proxy.errors import RouterError


class Clock:
    def __init__(self, iso: str) -> None:
        self.now = datetime.fromisoformat(iso).replace(tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.now


def refusal(budget: Budget, key_id: str | None = None) -> RouterError:
    with pytest.raises(RouterError) as err:
        budget.check(key_id)
    return err.value


def test_no_budget_never_refuses() -> None:
    budget = Budget(0.0, Clock("2025-03-01T12:00:00"))
    budget.add(1_000.0, None)
    budget.check(None)
    assert budget.status()["daily_budget_usd"] is None


def test_trips_once_spend_reaches_the_cap_with_a_429_naming_budget_and_reset() -> None:
    clock = Clock("2025-03-01T21:30:00")
    budget = Budget(5.0, clock)
    budget.add(4.99, None)
    budget.check(None)  # still under: a request may go out (and take spend past the cap)
    budget.add(0.02, None)
    err = refusal(budget)
    assert err.status == 429 and err.code == "budget_exceeded" and err.type == "insufficient_quota"
    assert "global daily budget of $5.00" in err.message and "$5.0100 so far" in err.message
    assert "resets at 00:00 UTC, in 2 h 30 min" in err.message
    assert err.headers == {"Retry-After": "9000", "x-should-retry": "false"}
    assert budget.refused == 1


def test_spend_resets_at_utc_midnight() -> None:
    clock = Clock("2025-03-01T23:59:59")
    budget = Budget(1.0, clock)
    budget.add(2.0, "team-a")
    assert refusal(budget).headers["Retry-After"] == "1"
    clock.now += 1
    budget.check(None)
    assert budget.spent == 0 and budget.by_key == {}
    assert budget.status()["resets_at"] == "2025-03-03T00:00:00+00:00"


def test_a_step_back_over_midnight_keeps_the_day_and_a_corrected_clock_takes_its_day() -> None:
    clock = Clock("2025-03-02T00:00:05")
    budget = Budget(1.0, clock)
    budget.add(2.0, None)
    clock.now -= 10  # NTP steps back to 23:59:55 of the day before
    assert refusal(budget).headers["Retry-After"] == "86405"  # the day begun ends at its midnight
    assert budget.status()["resets_at"] == "2025-03-03T00:00:00+00:00"
    clock.now += 10 + 86_400  # the next midnight: a new day, a new budget
    budget.check(None)
    assert budget.spent == 0
    budget.add(2.0, None)
    clock.now -= 3 * 86_400  # a clock that was days ahead, corrected: its day, not a wait
    budget.check(None)
    assert budget.spent == 0 and budget.status()["resets_at"] == "2025-03-01T00:00:00+00:00"


def test_per_key_cap_refuses_only_that_key_and_names_it() -> None:
    budget = Budget(0.0, Clock("2025-03-01T08:00:00"))
    budget.key_limits["team-a"] = 0.5
    budget.add(0.6, "team-a")
    budget.add(3.0, "team-b")
    budget.check("team-b")
    budget.check(None)
    err = refusal(budget, "team-a")
    assert "daily_usd budget of $0.50 for API key 'team-a'" in err.message


def test_restored_spend_counts_toward_today() -> None:
    clock = Clock("2025-03-01T08:00:00")
    budget = Budget(1.0, clock)
    assert budget.midnight() == Clock("2025-03-01T00:00:00").now
    budget.restore(1.5, {"team-a": 1.5})
    assert refusal(budget).status == 429
    assert budget.status()["remaining_usd"] == 0


def test_zero_cost_answers_do_not_move_spend() -> None:
    budget = Budget(1.0, Clock("2025-03-01T08:00:00"))
    budget.add(0.0, "k")
    assert budget.spent == 0 and budget.by_key == {}
