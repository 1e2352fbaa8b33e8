"""The probe scheduler, run against fake send callables (stand-ins for the network) and fake
time: the loop's sleep advances the clock instead of waiting, so hours pass in milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest

from probes.breaker import BreakerBoard, BreakerPolicy, State
from probes.latency import LatencyTable
from probes.loop import ProbeFailed, ProbeLoop, ProbeSettings, paced_interval_s

MIDNIGHT = datetime(2025, 3, 2, tzinfo=UTC).timestamp()


class FakeTime:
    """Clock plus the loop's sleep: sleeping moves the clock, and parks at the horizon."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now
        self.horizon = math.inf
        self.reached = asyncio.Event()
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        # Let the probes launched this round run to completion at the current instant.
        for _ in range(5):
            await asyncio.sleep(0)
        self.sleeps.append(seconds)
        if self.now + seconds > self.horizon:
            self.now = self.horizon
            self.reached.set()
            await asyncio.Future()  # parked until the test cancels the loop
        self.now += seconds


class Recorder:
    """A fake upstream: answers every probe at once and remembers when it was asked."""

    def __init__(self, clock: FakeTime, ttft_ms: float = 120.0) -> None:
        self.clock = clock
        self.ttft_ms = ttft_ms
        self.calls: list[tuple[str, float]] = []
        self.failures: dict[str, list[BaseException]] = {}

    async def __call__(self, key: str) -> float:
        self.calls.append((key, self.clock.now))
        pending = self.failures.get(key)
        if pending:
            raise pending.pop(0)
        return self.ttft_ms

    def times(self, key: str) -> list[float]:
        return [t for k, t in self.calls if k == key]


def gaps(times: list[float]) -> list[float]:
    return [b - a for a, b in itertools.pairwise(times)]


def build(
    clock: FakeTime,
    send: Callable[[str], Awaitable[float]],
    costs: dict[str, float],
    *,
    board: BreakerBoard | None = None,
    table: LatencyTable | None = None,
    wall: Callable[[], float] | None = None,
    seed: int = 0,
    **settings: object,
) -> tuple[ProbeLoop, LatencyTable, BreakerBoard]:
    fields: dict[str, object] = {"interval_s": 30.0, "jitter": 0.0}
    fields.update(settings)
    table = table or LatencyTable(300.0, clock=clock)
    board = board or BreakerBoard(BreakerPolicy(jitter=0.0), clock=clock, rng=random.Random(0))
    loop = ProbeLoop(
        ProbeSettings(**fields),  # type: ignore[arg-type]
        send,
        table,
        board,
        cost_per_probe=costs,
        clock=clock,
        wall_clock=wall or (lambda: MIDNIGHT - 43_200.0 + clock.now),
        rng=random.Random(seed),
        sleep=clock.sleep,
    )
    return loop, table, board


async def run_for(loop: ProbeLoop, clock: FakeTime, seconds: float) -> None:
    clock.horizon = clock.now + seconds
    clock.reached.clear()
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(clock.reached.wait(), timeout=10.0)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert task.cancelled()


async def wait_until(condition: Callable[[], bool]) -> None:
    for _ in range(10_000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError("condition never became true")


async def test_probes_a_quiet_key_every_interval_without_jitter() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, table, _ = build(clock, send, {"a": 0.0}, interval_s=30.0, jitter=0.0)
    await run_for(loop, clock, 300.0)
    times = send.times("a")
    assert times[0] == 0.0
    assert len(times) == 11
    assert gaps(times) == pytest.approx([30.0] * 10, abs=0.01)
    row = table.row("a")
    assert (row.samples, row.source) == (11, "probe")


async def test_jitter_spreads_probe_intervals_within_its_bounds() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    keys = {f"k{i}": 0.0 for i in range(5)}
    loop, _, _ = build(clock, send, keys, interval_s=30.0, jitter=0.2, seed=42)
    await run_for(loop, clock, 3000.0)
    all_gaps = [g for key in keys for g in gaps(send.times(key))]
    assert len(all_gaps) > 400
    assert min(all_gaps) >= 24.0 - 0.01
    assert max(all_gaps) <= 36.0 + 0.01
    assert min(all_gaps) < 25.0
    assert max(all_gaps) > 35.0
    # New keys are seeded within interval * jitter of start-up, not all at the same instant.
    firsts = [send.times(key)[0] for key in keys]
    assert max(firsts) <= 6.0
    assert len(set(firsts)) == len(keys)


@pytest.mark.parametrize(
    ("live_quiet_s", "expected_gap"),
    [
        pytest.param(10_000.0, 120.0, id="recent-live-traffic-stretches-the-interval"),
        pytest.param(5.0, 30.0, id="old-live-traffic-does-not"),
    ],
)
async def test_live_traffic_reduces_the_probe_rate(
    live_quiet_s: float, expected_gap: float
) -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, table, _ = build(
        clock,
        send,
        {"busy": 0.0, "quiet": 0.0},
        interval_s=30.0,
        jitter=0.0,
        live_quiet_s=live_quiet_s,
        live_interval_factor=4.0,
    )
    table.observe("busy", 200.0, "live")
    await run_for(loop, clock, 600.0)
    assert gaps(send.times("busy")) == pytest.approx(
        [expected_gap] * (len(send.times("busy")) - 1), abs=0.01
    )
    assert len(send.times("busy")) == 600 // expected_gap + 1
    assert gaps(send.times("quiet")) == pytest.approx([30.0] * 20, abs=0.01)


async def test_probing_stops_at_the_daily_budget_and_counts_the_skips() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(
        clock, send, {"a": 0.25, "free": 0.0}, interval_s=30.0, max_daily_spend_usd=1.0
    )
    await run_for(loop, clock, 600.0)
    assert send.times("a") == pytest.approx([0.0, 30.0, 60.0, 90.0], abs=0.01)
    assert len(send.times("free")) == 21  # a probe that costs nothing is never held back
    stats = loop.stats()
    assert stats.spend_today_usd == pytest.approx(1.0)
    assert stats.spend_cap_usd == 1.0
    assert stats.sent == 4 + 21
    assert stats.skipped_for_budget == 21 - 4


async def test_the_budget_resets_at_utc_midnight() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(
        clock,
        send,
        {"a": 0.25},
        wall=lambda: MIDNIGHT - 100.0 + clock.now,
        interval_s=30.0,
        max_daily_spend_usd=0.5,
    )
    await run_for(loop, clock, 99.0)
    assert send.times("a") == pytest.approx([0.0, 30.0], abs=0.01)
    assert loop.stats().spend_today_usd == pytest.approx(0.5)
    clock.now = 100.0  # 00:00:00 UTC
    assert loop.stats().spend_today_usd == 0.0
    await run_for(loop, clock, 200.0)
    assert send.times("a") == pytest.approx([0.0, 30.0, 120.0, 150.0], abs=0.01)
    assert loop.stats().skipped_for_budget == 2 + 5  # 60 and 90; then 180 to 300


async def test_a_half_open_breaker_is_probed_at_once_and_closed_by_probes() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    board = BreakerBoard(
        BreakerPolicy(base_open_s=5.0, jitter=0.0, half_open_successes=2),
        clock=clock,
        rng=random.Random(0),
    )
    for _ in range(5):
        board.record_failure("a", "server")
    assert board.state("a") is State.OPEN
    loop, _, _ = build(clock, send, {"a": 0.0}, board=board, interval_s=30.0, half_open_gap_s=1.0)
    await run_for(loop, clock, 40.0)
    # Nothing while open; at 5 s it half-opens and is probed at once, again a gap later, which
    # closes it; then it is back on the ordinary interval.
    assert send.times("a") == pytest.approx([5.0, 6.0, 36.0], abs=0.01)
    assert board.state("a") is State.CLOSED


async def test_a_failed_half_open_probe_waits_out_the_longer_backoff() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    send.failures["a"] = [ProbeFailed("overloaded")]
    board = BreakerBoard(
        BreakerPolicy(base_open_s=5.0, jitter=0.0, half_open_successes=2),
        clock=clock,
        rng=random.Random(0),
    )
    for _ in range(5):
        board.record_failure("a", "server")
    loop, _, _ = build(clock, send, {"a": 0.0}, board=board, interval_s=30.0, half_open_gap_s=1.0)
    await run_for(loop, clock, 20.0)
    assert send.times("a") == pytest.approx([5.0, 15.0, 16.0], abs=0.01)
    assert board.state("a") is State.CLOSED


async def test_concurrent_probes_never_exceed_the_cap() -> None:
    clock = FakeTime()
    gate = asyncio.Event()
    active = 0
    peak = 0
    done: list[str] = []

    async def send(key: str) -> float:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        try:
            await gate.wait()
        finally:
            active -= 1
        done.append(key)
        return 100.0

    keys = {f"k{i}": 0.0 for i in range(10)}
    loop, _, _ = build(clock, send, keys, concurrency=3, timeout_s=1e9)
    task = asyncio.create_task(loop.run())
    await wait_until(lambda: active == 3 and clock.now > 5.0)
    assert loop.stats().in_flight == 10
    gate.set()
    await wait_until(lambda: set(done) == set(keys))
    assert peak == 3
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def test_cancelling_the_loop_cancels_probes_in_flight_and_leaves_no_tasks() -> None:
    started = asyncio.Event()
    cancelled: list[str] = []

    async def send(key: str) -> float:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(key)
            raise
        return 1.0

    table = LatencyTable()
    board = BreakerBoard(BreakerPolicy())
    loop = ProbeLoop(
        ProbeSettings(interval_s=30.0, jitter=0.0), send, table, board, cost_per_probe={"a": 0.0}
    )
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(started.wait(), timeout=5.0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cancelled == ["a"]
    assert loop.stats().in_flight == 0
    assert asyncio.all_tasks() == {asyncio.current_task()}
    # A cancelled probe is not a verdict on the deployment.
    assert board.rows() == []


async def test_run_returns_at_once_when_probing_is_disabled() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(clock, send, {"a": 0.0}, enabled=False)
    await asyncio.wait_for(loop.run(), timeout=1.0)
    assert send.calls == []


async def test_the_loop_sleeps_until_the_next_due_probe_rather_than_spinning() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(clock, send, {"a": 0.0}, interval_s=30.0, max_sleep_s=1.0)
    await run_for(loop, clock, 300.0)
    # One wake-up per second at most (the cap that lets set_keys take effect), never a spin.
    assert len(clock.sleeps) <= 300 + 11
    assert min(clock.sleeps) > 0.0


async def test_set_keys_adds_and_removes_deployments() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(clock, send, {"old": 0.0})
    await run_for(loop, clock, 50.0)
    loop.set_keys(["new"], {"new": 0.0})
    await run_for(loop, clock, 100.0)
    assert send.times("old") == pytest.approx([0.0, 30.0], abs=0.01)
    assert send.times("new") == pytest.approx([50.0, 80.0, 110.0, 140.0], abs=0.01)
    assert set(loop.stats().last_run) == {"old", "new"}


async def test_probe_once_feeds_a_success_to_the_table_and_the_board() -> None:
    clock = FakeTime(100.0)
    send = Recorder(clock, ttft_ms=87.0)
    loop, table, board = build(clock, send, {"a": 0.01})
    await loop.probe_once("a")
    row = table.row("a")
    assert (row.samples, row.source) == (1, "probe")
    assert row.mean_ms == pytest.approx(87.0)
    assert board.rows()[0].requests_in_window == 1
    stats = loop.stats()
    assert (stats.sent, stats.failed, stats.spend_today_usd) == (1, 0, 0.01)
    assert stats.last_run["a"] == MIDNIGHT - 43_200.0 + 100.0


async def test_a_probe_sent_before_an_outage_does_not_reset_its_failure_streak() -> None:
    # The probe is in flight when live requests start failing; it answers after two failures.
    clock = FakeTime(100.0)
    released = asyncio.Event()

    async def slow_send(key: str) -> float:
        await released.wait()
        return 90.0

    loop, _, board = build(clock, slow_send, {"a": 0.0})
    probe = asyncio.create_task(loop.probe_once("a"))
    await asyncio.sleep(0)
    board.record_failure("a", "server")
    board.record_failure("a", "server")
    released.set()
    await probe
    assert board.rows()[0].consecutive_failures == 2
    # A probe sent after the latest failure is fresh evidence, and resets it as before.
    await loop.probe_once("a")
    assert board.rows()[0].consecutive_failures == 0


@pytest.mark.parametrize(
    ("error", "consecutive", "open_s"),
    [
        pytest.param(ProbeFailed("server"), 1, None, id="server-failure-counts"),
        pytest.param(ProbeFailed("client"), 0, None, id="client-fault-ignored"),
        pytest.param(ProbeFailed("rate_limited", 12.0), 0, 12.0, id="retry-after-opens-exactly"),
        pytest.param(ConnectionRefusedError(), 1, None, id="os-error-counts-as-connect"),
        pytest.param(RuntimeError("boom"), 1, None, id="unexpected-error-counts"),
    ],
)
async def test_probe_once_feeds_failures_to_the_board(
    error: BaseException, consecutive: int, open_s: float | None
) -> None:
    clock = FakeTime(100.0)
    send = Recorder(clock)
    send.failures["a"] = [error]
    loop, table, board = build(clock, send, {"a": 0.0})
    await loop.probe_once("a")
    row = board.rows()[0]
    assert row.consecutive_failures == consecutive
    until = board.open_until("a")
    assert (None if until is None else until - clock.now) == open_s
    assert "a" not in table
    assert loop.stats().failed == 1


async def test_a_probe_that_outlives_its_timeout_counts_as_a_timeout() -> None:
    async def send(key: str) -> float:
        await asyncio.sleep(30.0)
        return 1.0

    board = BreakerBoard(BreakerPolicy(consecutive_failures=1))
    loop = ProbeLoop(
        ProbeSettings(timeout_s=0.01),
        send,
        LatencyTable(),
        board,
        cost_per_probe={"a": 0.0},
    )
    await loop.probe_once("a")
    assert board.state("a") is State.OPEN
    assert loop.stats().failed == 1


async def test_a_nonsense_ttft_counts_as_a_protocol_failure() -> None:
    clock = FakeTime()
    send = Recorder(clock, ttft_ms=-5.0)
    loop, table, board = build(clock, send, {"a": 0.0})
    await loop.probe_once("a")
    assert "a" not in table
    assert board.rows()[0].consecutive_failures == 1


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"interval_s": 0.0}, id="zero-interval"),
        pytest.param({"concurrency": 0}, id="zero-concurrency"),
        pytest.param({"live_interval_factor": 0.5}, id="factor-below-one"),
        pytest.param({"jitter": 1.0}, id="jitter-of-one"),
    ],
)
def test_settings_reject_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid ProbeSettings"):
        ProbeSettings(**bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("per_round", "interval_s", "cap", "expected"),
    [
        pytest.param(0.001, 30.0, 10.0, 30.0, id="fits-the-cap"),
        # 2880 rounds a day at $0.001 is $2.88; 90 % of $1 buys 900 rounds: one per 96 s.
        pytest.param(0.001, 30.0, 1.0, 96.0, id="stretched-to-fit"),
        pytest.param(0.0, 30.0, 1.0, 30.0, id="free-probes"),
        pytest.param(0.001, 30.0, 0.0, 30.0, id="zero-cap-left-to-the-budget-check"),
    ],
)
def test_paced_interval_keeps_a_full_day_of_probing_under_the_cap(
    per_round: float, interval_s: float, cap: float, expected: float
) -> None:
    assert paced_interval_s(per_round, interval_s, cap) == pytest.approx(expected)


async def test_a_paced_loop_probes_all_day_without_hitting_the_cap() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    costs = {"a": 0.0006, "b": 0.0004}
    interval = paced_interval_s(sum(costs.values()), 30.0, 1.0)
    loop, _, _ = build(
        clock,
        send,
        costs,
        wall=lambda: MIDNIGHT + clock.now,
        interval_s=interval,
        jitter=0.2,
        max_sleep_s=10.0,
    )
    await run_for(loop, clock, 86_000.0)
    stats = loop.stats()
    assert stats.skipped_for_budget == 0
    assert 0.8 < stats.spend_today_usd <= 1.0
    assert send.times("a")[-1] > 80_000.0  # still probing late in the day


async def test_a_probe_timeout_feeds_the_table_a_censored_sample() -> None:
    async def send(key: str) -> float:
        if key == "sdk":
            raise ProbeFailed("timeout")
        await asyncio.sleep(30.0)
        return 1.0

    table = LatencyTable(prior_weight=0.0)
    loop = ProbeLoop(
        ProbeSettings(timeout_s=0.01),
        send,
        table,
        BreakerBoard(BreakerPolicy()),
        cost_per_probe={"a": 0.0, "sdk": 0.0},
    )
    await loop.probe_once("a")
    await loop.probe_once("sdk")
    for key in ("a", "sdk"):
        row = table.row(key)
        assert (row.samples, row.source) == (1, "probe")
        assert row.mean_ms == pytest.approx(10.0)  # at least as slow as the deadline


async def test_an_interval_shorter_than_max_sleep_is_kept_when_every_key_is_due_together() -> None:
    clock = FakeTime()
    send = Recorder(clock)
    loop, _, _ = build(clock, send, {"a": 0.0, "b": 0.0}, interval_s=0.1, max_sleep_s=1.0)
    await run_for(loop, clock, 2.0)
    for key in ("a", "b"):
        assert gaps(send.times(key)) == pytest.approx([0.1] * (len(send.times(key)) - 1))
        assert len(send.times(key)) >= 19


async def test_a_probe_beyond_the_band_is_confirmed_after_the_shift_span() -> None:
    """One probe that saw a 220 ms deployment answer in 60 ms is followed by another after the
    table's shift span, not a whole interval later; the pair restarts its history."""
    clock = FakeTime()
    send = Recorder(clock, ttft_ms=220.0)
    table = LatencyTable(300.0, clock=clock, shift_samples=2, shift_span_s=15.0)
    loop, _, _ = build(clock, send, {"a": 0.0}, table=table, interval_s=30.0, jitter=0.0)
    await run_for(loop, clock, 300.0)
    send.ttft_ms = 60.0
    await run_for(loop, clock, 60.0)
    times = send.times("a")
    assert gaps(times)[-2:] == pytest.approx([30.0, 15.0], abs=0.01)
    assert table.row("a").shifts == 1
    assert not table.unsettled("a")


async def test_a_suspected_deployment_with_live_traffic_is_probed_at_once() -> None:
    """Two slow live answers at one moment make routing leave a busy deployment before they are
    confirmed; its live traffic has gone, so the loop probes it a confirming gap later instead
    of waiting out the four-times-longer interval of a deployment with traffic, and that probe
    settles it."""
    clock = FakeTime()
    send = Recorder(clock, ttft_ms=80.0)
    table = LatencyTable(300.0, clock=clock, shift_samples=2, shift_span_s=15.0, false_alarm=1e-4)
    loop, _, _ = build(
        clock, send, {"a": 0.0}, table=table, live_quiet_s=10_000.0, live_interval_factor=4.0
    )
    for _ in range(2_000):
        clock.now += 0.1
        table.observe("a", 80.0, "live")
    await run_for(loop, clock, 130.0)
    assert gaps(send.times("a")) == pytest.approx([120.0], abs=0.01)
    table.observe("a", 400.0, "live")
    table.observe("a", 400.0, "live")
    assert table.suspected("a")
    send.ttft_ms = 400.0
    asked = clock.now
    await run_for(loop, clock, 60.0)
    # Due a confirming gap (the shift span) after its last live answer, not 120 s after its
    # last probe.
    assert send.times("a")[2] == pytest.approx(asked + 15.0, abs=0.01)
    assert not table.suspected("a")
    assert table.row("a").shifts == 1


class TakesItsTime(Recorder):
    """A fake upstream whose answer arrives its TTFT after it was asked, as a real one does:
    the table tells a probe sent after a run began by that difference."""

    async def __call__(self, key: str) -> float:
        ttft_ms = await super().__call__(key)
        self.clock.now += ttft_ms / 1000.0
        return ttft_ms


async def test_a_probe_that_sees_a_recovery_is_confirmed_by_the_next_one_at_once() -> None:
    """With suspicion on, the first 60 ms answer from a 220 ms deployment already moves routing;
    the loop confirms it with a second probe straight away instead of half an interval later,
    and that probe, sent after the run began, restarts the history."""
    clock = FakeTime()
    send = TakesItsTime(clock, ttft_ms=220.0)
    table = LatencyTable(300.0, clock=clock, shift_samples=2, shift_span_s=15.0, false_alarm=1e-4)
    loop, _, _ = build(clock, send, {"a": 0.0}, table=table, interval_s=30.0, jitter=0.0)
    await run_for(loop, clock, 300.0)
    send.ttft_ms = 60.0
    await run_for(loop, clock, 60.0)
    # Gaps between sends: each probe's own TTFT plus the interval, and just the TTFT before the
    # confirming one.
    assert gaps(send.times("a"))[-3:] == pytest.approx([30.22, 0.06, 30.06], abs=0.01)
    assert table.row("a").shifts == 1
    assert (table.row("a").suspicions, table.suspected("a")) == (1, False)
    assert loop.stats().sent == len(send.times("a"))


class PerKey(Recorder):
    """A fake upstream whose TTFT is set per deployment."""

    def __init__(self, clock: FakeTime, ttfts: dict[str, float]) -> None:
        super().__init__(clock)
        self.ttfts = ttfts

    async def __call__(self, key: str) -> float:
        self.calls.append((key, self.clock.now))
        return self.ttfts[key]


@contextlib.asynccontextmanager
async def parked(loop: ProbeLoop, clock: FakeTime) -> AsyncIterator[None]:
    """The loop running but asleep at the current instant: every probe launched meanwhile is
    one launched out of turn."""
    clock.horizon = clock.now
    clock.reached.clear()
    task = asyncio.create_task(loop.run())
    await asyncio.wait_for(clock.reached.wait(), timeout=10.0)
    await wait_until(lambda: not loop.stats().in_flight)  # probes that fell due on the way
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def suspicious_table(clock: FakeTime) -> LatencyTable:
    return LatencyTable(300.0, clock=clock, shift_samples=2, shift_span_s=15.0, false_alarm=1e-4)


def busy(table: LatencyTable, clock: FakeTime, keys: list[str], ms: float, seconds: float) -> None:
    """Live traffic at ``ms`` to each of ``keys``, ten answers a second."""
    for _ in range(int(seconds * 10)):
        clock.now += 0.1
        for key in keys:
            table.observe(key, ms, "live")


async def slow_down(
    loop: ProbeLoop, clock: FakeTime, send: PerKey, keys: list[str], ms: float
) -> None:
    """Probe-only ``keys`` turn ``ms`` slow and the loop adopts it (two probes in a row)."""
    for key in keys:
        send.ttfts[key] = ms
    await run_for(loop, clock, 60.0)


async def test_a_slowed_runner_up_is_probed_at_once_when_the_leader_turns_slow() -> None:
    """The leader carries the traffic; "back" slowed from 80 to 400 ms a while ago and has since
    recovered unseen. When two slow answers make routing leave the leader, "back" is probed at
    that instant, not at its next turn up to an interval later, so its recovery is found; a
    steady rival measured lately, and one that slowed from a level no better than the leader's
    slow one, are not."""
    clock = FakeTime()
    ttfts = {"lead": 60.0, "back": 80.0, "steady": 150.0, "worse": 700.0}
    send = PerKey(clock, ttfts)
    table = suspicious_table(clock)
    loop, _, _ = build(clock, send, dict.fromkeys(ttfts, 0.0), table=table, interval_s=30.0)
    busy(table, clock, ["lead"], 60.0, 60.0)
    await run_for(loop, clock, 120.0)
    await slow_down(loop, clock, send, ["worse"], 3_000.0)
    await slow_down(loop, clock, send, ["back"], 400.0)
    assert table.slowed_from("back") == pytest.approx(80.0, rel=0.05)
    assert table.slowed_from("worse") == pytest.approx(700.0, rel=0.05)
    ttfts["back"] = 80.0  # recovered; the table still says 400
    busy(table, clock, ["lead"], 60.0, 5.0)
    async with parked(loop, clock):
        before = len(send.calls)
        table.observe("lead", 500.0, "live")
        table.observe("lead", 500.0, "live")
        assert table.suspected("lead")
        await wait_until(lambda: len(send.calls) > before and not loop.stats().in_flight)
    # Its first answer makes routing follow it; the second, sent at once, confirms it.
    assert send.calls[before:] == [("back", clock.now)] * 2
    assert table.slowed_from("back") is None
    assert table.estimate_ms("back") < table.estimate_ms("steady")
    assert loop.stats().hurried == 1


async def leaders_and_slowed_rivals(
    leads: int, rivals: int, **settings: object
) -> tuple[ProbeLoop, LatencyTable, PerKey, FakeTime]:
    """``leads`` deployments with live traffic at 60 ms, and ``rivals`` probed-only ones that
    slowed from 80, 90, ... ms to 400 ms and stay there."""
    clock = FakeTime()
    ttfts = {f"lead{i}": 60.0 for i in range(leads)}
    ttfts.update({f"r{i}": 80.0 + 10 * i for i in range(rivals)})
    send = PerKey(clock, ttfts)
    table = suspicious_table(clock)
    loop, _, _ = build(clock, send, dict.fromkeys(ttfts, 0.0), table=table, **settings)
    await run_for(loop, clock, 120.0)
    await slow_down(loop, clock, send, [f"r{i}" for i in range(rivals)], 400.0)
    busy(table, clock, [f"lead{i}" for i in range(leads)], 60.0, 60.0)
    return loop, table, send, clock


def fall(table: LatencyTable, key: str) -> None:
    table.observe(key, 500.0, "live")
    table.observe(key, 500.0, "live")
    assert table.suspected(key)


async def test_many_leaders_falling_together_hurry_at_most_the_concurrency_cap() -> None:
    loop, table, send, clock = await leaders_and_slowed_rivals(3, 3, concurrency=2)
    async with parked(loop, clock):
        before = len(send.calls)
        for i in range(3):
            fall(table, f"lead{i}")
        await wait_until(lambda: len(send.calls) >= before + 2 and not loop.stats().in_flight)
    # The two that would win back the most; each answered 400 ms, so none is followed up.
    assert sorted(k for k, _ in send.calls[before:]) == ["r0", "r1"]
    assert loop.stats().hurried == 2


async def test_a_rival_is_hurried_once_per_interval_and_only_for_a_deployment_with_traffic() -> (
    None
):
    loop, table, send, clock = await leaders_and_slowed_rivals(2, 1, interval_s=30.0)
    # A slowdown that only probes saw moves no traffic: nothing to hurry for.
    table.observe("lead1", 60.0, "live")
    clock.now += 31.0
    async with parked(loop, clock):
        table.observe("r0", 2_000.0, "probe")
        table.observe("r0", 2_000.0, "probe")
        assert table.slowed_from("r0") is not None
        assert loop.stats().hurried == 0
    loop, table, send, clock = await leaders_and_slowed_rivals(2, 1, interval_s=30.0)
    async with parked(loop, clock):
        before = len(send.calls)
        fall(table, "lead0")
        await wait_until(lambda: loop.stats().hurried == 1 and not loop.stats().in_flight)
        clock.now += 29.0
        fall(table, "lead1")
        for _ in range(20):
            await asyncio.sleep(0)
        assert loop.stats().hurried == 1  # r0 was hurried 29 s ago
    assert send.calls[before:] == [("r0", clock.now - 29.0)]


@pytest.mark.parametrize(
    ("past_midnight_s", "hurried"),
    [
        pytest.param(43_200.0, 1, id="on-pace-at-noon"),
        pytest.param(1.0, 0, id="ahead-of-pace-minutes-past-midnight"),
    ],
)
async def test_out_of_turn_probes_never_spend_ahead_of_the_days_pace(
    past_midnight_s: float, hurried: int
) -> None:
    # The same history and spend either way: under $1 of a $20 cap, all of it today. At noon
    # that is well within half the cap; four minutes past midnight it is past the day's
    # share so far (~$0.06), and a hurried probe would take what the paced schedule needs
    # before midnight.
    clock = FakeTime()
    ttfts = {"lead": 60.0, "back": 80.0}
    send = PerKey(clock, ttfts)
    table = suspicious_table(clock)
    loop, _, _ = build(
        clock,
        send,
        dict.fromkeys(ttfts, 0.01),
        table=table,
        wall=lambda: MIDNIGHT + past_midnight_s + clock.now,
        interval_s=30.0,
        max_daily_spend_usd=20.0,
    )
    await run_for(loop, clock, 120.0)
    await slow_down(loop, clock, send, ["back"], 400.0)
    ttfts["back"] = 80.0
    busy(table, clock, ["lead"], 60.0, 5.0)
    spent = loop.stats().spend_today_usd
    assert 0.1 < spent < 1.0
    async with parked(loop, clock):
        fall(table, "lead")
        for _ in range(20):
            await asyncio.sleep(0)
        await wait_until(lambda: not loop.stats().in_flight)
    assert loop.stats().hurried == hurried
