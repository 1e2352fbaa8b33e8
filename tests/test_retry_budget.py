"""The retry budget: fallbacks in flight bounded by a share of requests in flight, a fair queue
for fallbacks that find it full, and no slot ever lost to a timeout or a cancellation."""

from __future__ import annotations

import asyncio

import pytest

from proxy.serve.retry_budget import RetryBudget


@pytest.mark.parametrize(
    ("ratio", "floor", "active", "retrying", "granted"),
    [
        pytest.param(0.2, 5, 0, 0, True, id="floor-with-no-traffic"),
        pytest.param(0.2, 5, 10, 4, True, id="under-the-floor"),
        pytest.param(0.2, 5, 10, 5, False, id="at-the-floor"),
        pytest.param(0.2, 5, 200, 39, True, id="under-the-share"),
        pytest.param(0.2, 5, 200, 40, False, id="at-the-share"),
        pytest.param(0.5, 1, 3, 1, False, id="share-rounds-down"),
        pytest.param(0.0, 0, 100, 0, False, id="no-budget-at-all"),
    ],
)
async def test_a_fallback_gets_a_slot_only_within_the_share_or_the_floor(
    ratio: float, floor: int, active: int, retrying: int, granted: bool
) -> None:
    budget = RetryBudget(ratio, floor)
    budget.active = active
    budget.retrying = retrying
    assert await budget.acquire(0.0) is granted
    assert budget.retrying == retrying + granted
    assert budget.denied == (not granted)


async def test_a_full_budget_queues_fallbacks_and_hands_slots_over_in_order() -> None:
    budget = RetryBudget(0.0, 1)
    assert await budget.acquire(1.0)
    order: list[int] = []

    async def wait(i: int) -> None:
        assert await budget.acquire(5.0)
        order.append(i)

    waiters = [asyncio.create_task(wait(i)) for i in range(3)]
    await asyncio.sleep(0)
    assert budget.waiting == 3 and budget.retrying == 1
    for expected in range(3):
        budget.release()
        await asyncio.sleep(0)
        assert order == list(range(expected + 1))
        assert budget.retrying == 1  # never more than the budget, even while handing over
    await asyncio.gather(*waiters)
    budget.release()
    assert (budget.retrying, budget.waiting, budget.denied) == (0, 0, 0)


async def test_a_waiter_that_runs_out_of_time_is_denied_and_leaves_no_trace() -> None:
    budget = RetryBudget(0.0, 1)
    assert await budget.acquire(1.0)
    assert not await budget.acquire(0.01)
    assert (budget.denied, budget.waiting, budget.retrying) == (1, 0, 1)
    budget.release()
    assert budget.retrying == 0
    assert await budget.acquire(0.0)  # nobody stale is queued ahead


async def test_more_requests_in_flight_make_room_for_a_waiter() -> None:
    budget = RetryBudget(0.5, 1)
    budget.active = 1
    assert await budget.acquire(0.0)
    waiter = asyncio.create_task(budget.acquire(5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    budget.active += 3  # four in flight: room for two fallbacks
    assert await waiter
    assert budget.retrying == 2


async def test_a_slot_handed_to_a_cancelled_waiter_passes_to_the_next() -> None:
    budget = RetryBudget(0.0, 1)
    assert await budget.acquire(1.0)
    first = asyncio.create_task(budget.acquire(5.0))
    second = asyncio.create_task(budget.acquire(5.0))
    await asyncio.sleep(0)
    budget.release()  # hands the slot to `first`...
    first.cancel()  # ...whose client leaves before it resumes
    with pytest.raises(asyncio.CancelledError):
        await first
    assert await second
    assert (budget.retrying, budget.waiting, budget.denied) == (1, 0, 0)


async def test_a_cancelled_waiter_leaves_the_queue() -> None:
    budget = RetryBudget(0.0, 1)
    assert await budget.acquire(1.0)
    waiter = asyncio.create_task(budget.acquire(5.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert budget.waiting == 0
    budget.release()
    assert budget.retrying == 0
