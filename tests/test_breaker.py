"""Circuit breaker transitions, driven by an injected clock and a seeded jitter source."""

from __future__ import annotations

import random

import pytest

from probes.breaker import BreakerBoard, BreakerPolicy, State

K = "openai/gpt-x"


class FakeClock:
    def __init__(self, now: float = 500.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make_board(clock: FakeClock, **policy: object) -> BreakerBoard:
    fields: dict[str, object] = {"jitter": 0.0}
    fields.update(policy)
    return BreakerBoard(BreakerPolicy(**fields), clock=clock, rng=random.Random(1))  # type: ignore[arg-type]


def trip(board: BreakerBoard, key: str = K) -> None:
    for _ in range(board.policy.consecutive_failures):
        board.record_failure(key, "server")
    assert board.state(key) is State.OPEN


def open_duration(board: BreakerBoard, clock: FakeClock, key: str = K) -> float:
    until = board.open_until(key)
    assert until is not None
    return until - clock.now


def to_half_open(board: BreakerBoard, clock: FakeClock, key: str = K) -> None:
    until = board.open_until(key)
    assert until is not None
    clock.now = until
    assert board.state(key) is State.HALF_OPEN


def test_a_fresh_breaker_is_closed_and_lets_live_requests_through() -> None:
    board = make_board(FakeClock())
    assert board.state(K) is State.CLOSED
    assert board.allow(K)
    assert board.open_until(K) is None
    assert board.badness(K) == 0.0


@pytest.mark.parametrize(
    "kind", ["connect", "timeout", "overloaded", "server", "auth", "protocol", "rate_limited"]
)
def test_opens_after_the_configured_number_of_consecutive_failures(kind: str) -> None:
    board = make_board(FakeClock(), consecutive_failures=5, min_requests=100, max_events=100)
    for _ in range(4):
        board.record_failure(K, kind)
    assert board.state(K) is State.CLOSED
    board.record_failure(K, kind)
    assert board.state(K) is State.OPEN
    assert not board.allow(K)


def test_a_success_resets_the_consecutive_failure_count() -> None:
    board = make_board(FakeClock(), consecutive_failures=3, min_requests=100, max_events=100)
    for _ in range(10):
        board.record_failure(K, "server")
        board.record_failure(K, "server")
        board.record_success(K, 100.0)
    assert board.state(K) is State.CLOSED
    assert board.rows()[0].consecutive_failures == 0


@pytest.mark.parametrize(
    ("failures", "successes", "expected"),
    [
        pytest.param(5, 5, State.OPEN, id="half-failing-at-min-requests-opens"),
        pytest.param(4, 6, State.CLOSED, id="forty-percent-stays-closed"),
        pytest.param(5, 4, State.CLOSED, id="below-min-requests-stays-closed"),
        pytest.param(8, 12, State.CLOSED, id="forty-percent-of-twenty-stays-closed"),
        pytest.param(10, 10, State.OPEN, id="half-of-twenty-opens"),
    ],
)
def test_opens_on_failure_rate_in_the_window_once_min_requests_is_reached(
    failures: int, successes: int, expected: State
) -> None:
    board = make_board(
        FakeClock(), consecutive_failures=1000, failure_rate=0.5, min_requests=10, max_events=1000
    )
    # Interleaved so consecutive failures never decide it.
    outcomes = [False] * failures + [True] * successes
    random.Random(0).shuffle(outcomes)
    for ok in outcomes:
        if ok:
            board.record_success(K, 100.0)
        else:
            board.record_failure(K, "server")
    assert board.state(K) is expected


@pytest.mark.parametrize(
    ("pause_s", "expected"),
    [
        pytest.param(29.0, State.OPEN, id="old-failures-still-in-window"),
        pytest.param(31.0, State.CLOSED, id="old-failures-slid-out-of-window"),
    ],
)
def test_failure_rate_only_counts_results_inside_the_sliding_window(
    pause_s: float, expected: State
) -> None:
    clock = FakeClock()
    board = make_board(clock, consecutive_failures=1000, window_s=30.0, min_requests=10)
    for _ in range(4):
        board.record_failure(K, "server")
        board.record_success(K, 100.0)
    board.record_success(K, 100.0)
    assert board.state(K) is State.CLOSED  # nine results: below min_requests
    clock.now += pause_s
    board.record_failure(K, "server")
    assert board.state(K) is expected


@pytest.mark.parametrize(
    ("default_ms", "override_ms", "ttft_ms", "expected"),
    [
        pytest.param(500.0, None, 600.0, State.OPEN, id="slow-against-default-opens"),
        pytest.param(500.0, None, 400.0, State.CLOSED, id="fast-against-default-stays-closed"),
        pytest.param(500.0, 800.0, 600.0, State.CLOSED, id="per-key-threshold-overrides-default"),
        pytest.param(None, 300.0, 600.0, State.OPEN, id="per-key-threshold-without-default"),
        pytest.param(None, None, 60_000.0, State.CLOSED, id="no-threshold-never-slow"),
    ],
)
def test_opens_when_too_many_successes_are_slow(
    default_ms: float | None, override_ms: float | None, ttft_ms: float, expected: State
) -> None:
    board = make_board(FakeClock(), slow_ttft_ms=default_ms, slow_rate=0.5, min_requests=10)
    if override_ms is not None:
        board.set_threshold(K, override_ms)
    for i in range(10):
        board.record_success(K, ttft_ms if i % 2 else 100.0)
    assert board.state(K) is expected
    if expected is State.CLOSED:
        assert board.rows()[0].slow_rate == 0.0


def test_slow_rate_below_the_threshold_keeps_it_closed() -> None:
    board = make_board(FakeClock(), slow_ttft_ms=500.0, slow_rate=0.5, min_requests=10)
    for i in range(10):
        board.record_success(K, 900.0 if i < 4 else 100.0)
    row = board.rows()[0]
    assert (row.state, row.slow_rate) == ("closed", 0.4)


def test_stays_open_until_the_backoff_elapses_then_half_opens() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0)
    trip(board)
    assert open_duration(board, clock) == 5.0
    start = clock.now
    clock.now = start + 4.999
    assert not board.allow(K)
    assert board.state(K) is State.OPEN
    clock.now = start + 5.0
    assert board.state(K) is State.HALF_OPEN
    assert board.open_until(K) is None


@pytest.mark.parametrize(
    ("openings", "expected_s"),
    [
        pytest.param(1, 5.0, id="first-opening-is-base"),
        pytest.param(2, 10.0, id="second-doubles"),
        pytest.param(3, 20.0, id="third-doubles-again"),
        pytest.param(5, 80.0, id="fifth"),
        pytest.param(6, 120.0, id="sixth-hits-the-cap"),
        pytest.param(40, 120.0, id="fortieth-stays-at-the-cap"),
    ],
)
def test_backoff_doubles_with_each_opening_up_to_the_cap(openings: int, expected_s: float) -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, max_open_s=120.0)
    trip(board)
    for _ in range(openings - 1):
        to_half_open(board, clock)
        board.record_failure(K, "timeout", probe=True)
    assert open_duration(board, clock) == expected_s
    assert board.rows()[0].backoff_openings == openings


@pytest.mark.parametrize(
    "openings",
    [pytest.param(1, id="at-base"), pytest.param(3, id="grown"), pytest.param(9, id="at-cap")],
)
def test_jitter_keeps_open_durations_within_bounds_and_spreads_them(openings: int) -> None:
    nominal = min(120.0, 5.0 * 2 ** (openings - 1))
    durations = []
    for seed in range(300):
        clock = FakeClock()
        board = BreakerBoard(
            BreakerPolicy(base_open_s=5.0, max_open_s=120.0, jitter=0.2),
            clock=clock,
            rng=random.Random(seed),
        )
        trip(board)
        for _ in range(openings - 1):
            to_half_open(board, clock)
            board.record_failure(K, "server", probe=True)
        durations.append(open_duration(board, clock))
    assert min(durations) >= nominal * 0.8
    assert max(durations) <= nominal * 1.2
    # Spread across the band, not one fixed offset.
    assert min(durations) < nominal * 0.85
    assert max(durations) > nominal * 1.15


def test_backoff_returns_to_base_after_a_full_close() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, half_open_successes=2)
    trip(board)
    to_half_open(board, clock)
    board.record_failure(K, "server", probe=True)
    assert open_duration(board, clock) == 10.0
    to_half_open(board, clock)
    board.record_success(K, 100.0, probe=True)
    board.record_success(K, 100.0, probe=True)
    assert board.state(K) is State.CLOSED
    trip(board)
    assert open_duration(board, clock) == 5.0


@pytest.mark.parametrize(
    "retry_after_s",
    [pytest.param(7.5, id="seconds"), pytest.param(0.25, id="sub-second")],
)
def test_rate_limit_with_retry_after_opens_for_exactly_that_long(retry_after_s: float) -> None:
    clock = FakeClock()
    board = make_board(clock, jitter=0.5)  # jitter must not apply to a Retry-After
    board.record_failure(K, "rate_limited", retry_after_s=retry_after_s)
    assert board.state(K) is State.OPEN
    assert open_duration(board, clock) == retry_after_s
    row = board.rows()[0]
    assert row.retry_after_remaining_s == retry_after_s
    assert row.requests_in_window == 0  # not a health result
    start = clock.now
    clock.now = start + retry_after_s * 0.999
    assert not board.allow(K)
    clock.now = start + retry_after_s
    assert board.state(K) is State.HALF_OPEN


def test_rate_limit_does_not_grow_the_health_backoff() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0)
    for _ in range(3):
        board.record_failure(K, "rate_limited", retry_after_s=2.0)
        to_half_open(board, clock)
    board.record_failure(K, "server", probe=True)
    assert open_duration(board, clock) == 5.0
    assert board.rows()[0].opened_count == 4


def test_retry_after_lengthens_an_open_period_but_never_shortens_it() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0)
    trip(board)
    board.record_failure(K, "rate_limited", retry_after_s=1.0)
    assert open_duration(board, clock) == 5.0
    board.record_failure(K, "rate_limited", retry_after_s=30.0)
    assert open_duration(board, clock) == 30.0


def test_absurd_retry_after_is_capped() -> None:
    clock = FakeClock()
    board = make_board(clock, max_retry_after_s=600.0)
    board.record_failure(K, "rate_limited", retry_after_s=86_400.0)
    assert open_duration(board, clock) == 600.0


@pytest.mark.parametrize(
    ("probe", "half_open"),
    [
        pytest.param(False, False, id="live-while-closed"),
        pytest.param(True, False, id="probe-while-closed"),
        pytest.param(False, True, id="live-trial-while-half-open"),
        pytest.param(True, True, id="probe-while-half-open"),
    ],
)
def test_client_faults_never_count_against_a_deployment(probe: bool, half_open: bool) -> None:
    clock = FakeClock()
    board = make_board(clock, consecutive_failures=2)
    if half_open:
        trip(board)
        to_half_open(board, clock)
        assert board.allow(K)
    for _ in range(50):
        board.record_failure(K, "client", probe=probe)
    expected = State.HALF_OPEN if half_open else State.CLOSED
    assert board.state(K) is expected
    row = board.rows()[0]
    assert row.consecutive_failures == (2 if half_open else 0)
    assert row.failure_rate == (1.0 if half_open else 0.0)


def test_half_open_admits_one_live_trial_at_a_time() -> None:
    clock = FakeClock()
    board = make_board(clock, half_open_successes=3)
    trip(board)
    to_half_open(board, clock)
    assert board.allow(K)
    assert not board.allow(K)
    assert not board.allow(K)
    board.record_success(K, 100.0, probe=True)  # a probe does not free the live trial slot
    assert not board.allow(K)
    board.record_success(K, 100.0)  # the trial's own result does
    assert board.state(K) is State.HALF_OPEN
    assert board.allow(K)
    board.release(K)  # the trial's client went away before the upstream answered
    assert board.allow(K)


@pytest.mark.parametrize("probe", [False, True], ids=["live", "probe"])
def test_a_success_sent_before_the_breaker_opened_is_not_a_half_open_verdict(probe: bool) -> None:
    # A slow answer to a request sent while the deployment still looked healthy arrives
    # after the breaker opened and went half-open: it must not close it, nor take the
    # place of the live trial in flight.
    clock = FakeClock()
    board = make_board(clock, half_open_successes=1)
    stale = board.failure_mark(K)
    trip(board)
    to_half_open(board, clock)
    assert board.allow(K)  # the trial is in flight
    board.record_success(K, 100.0, probe=probe, since=stale)
    assert board.state(K) is State.HALF_OPEN
    assert not board.allow(K)  # the trial still holds its slot
    board.record_success(K, 100.0, since=board.failure_mark(K))  # the trial's own answer
    assert board.state(K) is State.CLOSED


def test_a_lost_trial_slot_frees_itself_after_the_trial_timeout() -> None:
    clock = FakeClock()
    board = make_board(clock, trial_timeout_s=60.0)
    trip(board)
    to_half_open(board, clock)
    assert board.allow(K)
    clock.now += 59.0
    assert not board.allow(K)
    clock.now += 1.0
    assert board.allow(K)


@pytest.mark.parametrize("needed", [1, 2, 3])
def test_half_open_closes_after_consecutive_good_probes(needed: int) -> None:
    clock = FakeClock()
    board = make_board(clock, half_open_successes=needed)
    trip(board)
    to_half_open(board, clock)
    for _ in range(needed - 1):
        board.record_success(K, 100.0, probe=True)
        assert board.state(K) is State.HALF_OPEN
    board.record_success(K, 100.0, probe=True)
    assert board.state(K) is State.CLOSED
    assert board.allow(K)
    assert board.allow(K)


def test_the_live_trials_success_counts_toward_closing() -> None:
    clock = FakeClock()
    board = make_board(clock, half_open_successes=2)
    trip(board)
    to_half_open(board, clock)
    board.record_success(K, 100.0, probe=True)
    assert board.allow(K)
    board.record_success(K, 100.0)
    assert board.state(K) is State.CLOSED


def test_a_live_success_without_the_trial_slot_does_not_close_it() -> None:
    # e.g. a request admitted before the breaker opened, finishing late
    clock = FakeClock()
    board = make_board(clock, half_open_successes=1)
    trip(board)
    to_half_open(board, clock)
    board.record_success(K, 100.0)
    assert board.state(K) is State.HALF_OPEN


@pytest.mark.parametrize("probe", [pytest.param(True, id="probe"), pytest.param(False, id="live")])
def test_any_failure_in_half_open_reopens_with_grown_backoff(probe: bool) -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, half_open_successes=3)
    trip(board)
    to_half_open(board, clock)
    board.record_success(K, 100.0, probe=True)
    board.record_failure(K, "overloaded", probe=probe)
    assert board.state(K) is State.OPEN
    assert open_duration(board, clock) == 10.0


def test_a_slow_probe_in_half_open_reopens_it() -> None:
    clock = FakeClock()
    board = make_board(clock, slow_ttft_ms=500.0, base_open_s=5.0)
    trip(board)
    to_half_open(board, clock)
    board.record_success(K, 900.0, probe=True)
    assert board.state(K) is State.OPEN
    assert open_duration(board, clock) == 10.0


def test_results_arriving_while_open_are_ignored() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, half_open_successes=1)
    trip(board)
    for _ in range(20):
        board.record_success(K, 100.0, probe=True)
        board.record_failure(K, "server")
    assert board.state(K) is State.OPEN
    assert open_duration(board, clock) == 5.0


def test_badness_orders_healthy_then_half_open_then_soonest_to_reopen() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, consecutive_failures=3)
    board.record_success("healthy", 100.0)
    board.record_success("shaky", 100.0)
    board.record_failure("shaky", "server")
    trip(board, "half")
    to_half_open(board, clock, "half")
    trip(board, "soon")
    trip(board, "later")
    board.record_failure("later", "rate_limited", retry_after_s=60.0)
    clock.now += 1.0
    keys = ["later", "soon", "half", "shaky", "healthy", "never-seen"]
    ranked = sorted(keys, key=lambda k: (board.badness(k), k))
    assert ranked == ["healthy", "never-seen", "shaky", "half", "soon", "later"]
    # four seconds left open, plus a window failure share of 1
    assert board.badness("soon") == pytest.approx(4.0 + 1.0)


def test_version_bumps_on_every_state_transition_only() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0, half_open_successes=1)
    v = board.version
    board.record_success(K, 100.0)
    board.allow(K)
    assert board.version == v
    trip(board)  # CLOSED -> OPEN
    assert board.version == v + 1
    clock.now += 5.0
    board.record_failure(K, "server", probe=True)  # -> HALF_OPEN -> OPEN in one call
    assert board.version == v + 3
    to_half_open(board, clock)  # -> HALF_OPEN
    board.record_success(K, 100.0, probe=True)  # -> CLOSED
    assert board.version == v + 5


def test_window_memory_stays_bounded_under_heavy_traffic() -> None:
    board = make_board(FakeClock(), max_events=200, min_requests=10)
    for _ in range(50_000):
        board.record_success(K, 100.0)
    for _ in range(4):
        board.record_failure(K, "server")
    row = board.rows()[0]
    assert row.requests_in_window == 200
    assert row.failure_rate == pytest.approx(4 / 200)


def test_rows_report_remaining_open_time_and_counts() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0)
    board.record_success("a", 100.0)
    trip(board, "b")
    clock.now += 2.0
    rows = {r.key: r for r in board.rows()}
    assert rows["a"].state == "closed"
    assert rows["a"].open_remaining_s == 0.0
    assert rows["b"].state == "open"
    assert rows["b"].open_remaining_s == pytest.approx(3.0)
    assert rows["b"].opened_count == 1
    assert rows["b"].consecutive_failures == 5
    assert rows["b"].retry_after_remaining_s == 0.0


def test_retain_forgets_removed_deployments() -> None:
    board = make_board(FakeClock())
    for key in ("a", "b"):
        board.record_success(key, 1.0)
    board.retain(["b"])
    assert [r.key for r in board.rows()] == ["b"]


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param({"consecutive_failures": 0}, id="zero-consecutive"),
        pytest.param({"failure_rate": 1.5}, id="rate-above-one"),
        pytest.param({"base_open_s": 200.0, "max_open_s": 100.0}, id="base-above-cap"),
        pytest.param({"jitter": 1.0}, id="jitter-of-one"),
        pytest.param({"half_open_successes": 0}, id="zero-half-open-successes"),
    ],
)
def test_policy_rejects_nonsense(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match="invalid BreakerPolicy"):
        BreakerPolicy(**bad)  # type: ignore[arg-type]


# Steps for the table below: ("ok", ttft) a success at the first token; ("broke",) a failure of
# a request already counted as a success; ("fail",) a failure before any byte.
@pytest.mark.parametrize(
    ("steps", "in_window", "failure_rate", "slow_rate", "streak"),
    [
        pytest.param(
            [("ok", 100.0), ("broke",)], 1, 1.0, 0.0, 1, id="broken-answer-is-one-failure"
        ),
        pytest.param([("ok", 100.0), ("broke",)] * 3, 3, 1.0, 0.0, 1, id="every-answer-broken"),
        pytest.param(
            [("ok", 100.0), ("ok", 100.0), ("broke",)], 2, 0.5, 0.0, 1, id="one-of-two-broken"
        ),
        pytest.param(
            [("ok", 900.0), ("broke",)], 1, 1.0, 0.0, 1, id="a-slow-success-that-broke-is-not-slow"
        ),
        pytest.param([("broke",)], 1, 1.0, 0.0, 1, id="nothing-to-turn-over-adds-a-failure"),
        pytest.param(
            [("fail",), ("ok", 100.0), ("broke",), ("fail",)],
            3,
            1.0,
            0.0,
            2,
            id="streak-still-grows",
        ),
    ],
)
def test_a_stream_that_breaks_after_its_first_token_counts_once_as_a_failure(
    steps: list[tuple[object, ...]],
    in_window: int,
    failure_rate: float,
    slow_rate: float,
    streak: int,
) -> None:
    board = make_board(
        FakeClock(), consecutive_failures=100, min_requests=100, max_events=100, slow_ttft_ms=500.0
    )
    for step in steps:
        if step[0] == "ok":
            board.record_success(K, step[1])  # type: ignore[arg-type]
        else:
            board.record_failure(K, "server", after_success=step[0] == "broke")
    row = board.rows()[0]
    assert (row.requests_in_window, row.failure_rate, row.slow_rate) == (
        in_window,
        failure_rate,
        slow_rate,
    )
    assert row.consecutive_failures == streak


def test_a_success_turned_over_after_it_left_the_window_adds_a_failure() -> None:
    clock = FakeClock()
    board = make_board(clock, window_s=30.0, consecutive_failures=100, min_requests=100)
    board.record_success(K, 100.0)
    clock.now += 31.0  # a long stream: its first token has slid out of the window
    board.record_failure(K, "server", after_success=True)
    row = board.rows()[0]
    assert (row.requests_in_window, row.failure_rate) == (1, 1.0)


@pytest.mark.parametrize(
    ("sent", "expected_streak"),
    [
        pytest.param("before-the-failures", 3, id="stale-success-keeps-the-streak"),
        pytest.param("between-the-failures", 3, id="success-sent-mid-streak-is-stale"),
        pytest.param("after-the-failures", 0, id="fresh-success-resets-the-streak"),
        pytest.param("unmarked", 0, id="success-without-a-mark-resets-as-before"),
    ],
)
def test_only_a_success_sent_after_the_latest_failure_resets_the_streak(
    sent: str, expected_streak: int
) -> None:
    board = make_board(FakeClock(), consecutive_failures=5, min_requests=100, max_events=100)
    board.record_success(K, 100.0)
    marks = {"before-the-failures": board.failure_mark(K)}
    board.record_failure(K, "server")
    marks["between-the-failures"] = board.failure_mark(K)
    board.record_failure(K, "connect")
    board.record_failure(K, "timeout")
    marks["after-the-failures"] = board.failure_mark(K)
    board.record_success(K, 100.0, since=marks.get(sent))
    row = board.rows()[0]
    assert row.consecutive_failures == expected_streak
    assert row.requests_in_window == 5  # a stale success still counts in the window


def test_stale_successes_cannot_hold_a_failing_deployment_closed() -> None:
    # Under concurrency: requests sent before an outage keep answering while new ones fail.
    board = make_board(FakeClock(), consecutive_failures=5, min_requests=1000, max_events=1000)
    for _ in range(50):
        board.record_success(K, 100.0)
    mark = board.failure_mark(K)
    for _ in range(5):
        board.record_failure(K, "connect")
        board.record_success(K, 100.0, since=mark)
    assert board.state(K) is State.OPEN


def test_failure_mark_ignores_client_faults_and_rate_limits() -> None:
    board = make_board(FakeClock(), consecutive_failures=5)
    assert board.failure_mark(K) == 0
    board.record_failure(K, "client")
    board.record_failure(K, "rate_limited", retry_after_s=1.0)
    assert board.failure_mark(K) == 0
    board.record_failure("other", "server")
    assert board.failure_mark(K) == 0 and board.failure_mark("other") == 1


@pytest.mark.parametrize(
    "retry_after_s",
    [
        pytest.param(None, id="no-header"),
        pytest.param(0.0, id="zero"),
        pytest.param(-3.0, id="negative"),
    ],
)
def test_a_rate_limit_without_a_usable_retry_after_is_an_ordinary_failure(
    retry_after_s: float | None,
) -> None:
    board = make_board(FakeClock(), consecutive_failures=2, min_requests=100, max_events=100)
    board.record_failure(K, "rate_limited", retry_after_s=retry_after_s)
    row = board.rows()[0]
    assert (row.state, row.consecutive_failures, row.retry_after_remaining_s) == ("closed", 1, 0.0)
    board.record_failure(K, "rate_limited", retry_after_s=retry_after_s)
    assert board.state(K) is State.OPEN
    assert board.rows()[0].retry_after_remaining_s == 0.0


def test_a_success_that_brings_the_window_to_min_requests_can_trip_it() -> None:
    board = make_board(FakeClock(), consecutive_failures=1000, min_requests=10, failure_rate=0.5)
    for _ in range(9):
        board.record_failure(K, "server")
    assert board.state(K) is State.CLOSED  # nine results: below min_requests
    board.record_success(K, 100.0)
    assert board.state(K) is State.OPEN


def test_a_failure_that_left_the_window_does_not_count_against_a_later_success() -> None:
    clock = FakeClock()
    board = make_board(clock, consecutive_failures=1000, window_s=30.0, min_requests=2)
    board.record_failure(K, "server")
    clock.now += 31.0
    board.record_success(K, 100.0)
    row = board.rows()[0]
    assert (row.state, row.requests_in_window, row.failure_rate) == ("closed", 1, 0.0)


def test_the_window_bound_drops_expired_results_before_live_ones() -> None:
    clock = FakeClock()
    board = make_board(clock, window_s=30.0, max_events=50, min_requests=10)
    for _ in range(40):
        board.record_success(K, 100.0)
    clock.now += 31.0
    for _ in range(30):
        board.record_success(K, 100.0)
    assert board.rows()[0].requests_in_window == 30
    for _ in range(30):
        board.record_success(K, 100.0)
    assert board.rows()[0].requests_in_window == 50


def test_refusing_names_the_open_breakers_and_half_opens_the_elapsed_ones() -> None:
    clock = FakeClock()
    board = make_board(clock, base_open_s=5.0)
    board.record_success("a", 100.0)
    trip(board, "b")
    clock.now += 3.0
    trip(board, "c")
    assert board.refusing(["a", "b", "c", "unknown"]) == {"b", "c"}
    clock.now += 2.0
    assert board.refusing(["a", "b", "c"]) == {"c"}
    assert board.state("b") is State.HALF_OPEN
