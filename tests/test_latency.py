"""The decayed TTFT table, driven by an injected clock (no sleeping)."""

from __future__ import annotations

import math
import random
from collections.abc import Callable

import pytest

from probes.latency import LatencyTable, prior_weight_for, settled_weight

HALF_LIFE = 300.0


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _weighted_quantile(samples: list[tuple[float, float]], q: float) -> float:
    """Exact quantile of (value, weight) pairs: the reference the histogram is judged by."""
    ordered = sorted(samples)
    total = sum(w for _, w in ordered)
    running = 0.0
    for value, w in ordered:
        running += w
        if running >= q * total:
            return value
    return ordered[-1][0]


@pytest.mark.parametrize(
    ("elapsed_s", "expected_weight"),
    [
        pytest.param(0.0, 1.0, id="fresh"),
        pytest.param(150.0, 2**-0.5, id="half-a-half-life"),
        pytest.param(300.0, 0.5, id="one-half-life"),
        pytest.param(600.0, 0.25, id="two-half-lives"),
        pytest.param(3000.0, 2**-10, id="ten-half-lives"),
    ],
)
def test_a_samples_weight_halves_every_half_life(elapsed_s: float, expected_weight: float) -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock)
    table.observe("k", 100.0, "probe")
    clock.now += elapsed_s
    assert table.row("k").weight == pytest.approx(expected_weight, rel=1e-12)


def test_decay_follows_elapsed_time_not_the_number_of_reads() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock)
    table.observe("k", 100.0, "probe")
    for _ in range(10):
        clock.now += 30.0
        table.estimate_ms("k")
        table.rows()
    assert table.row("k").weight == pytest.approx(0.5, rel=1e-12)


@pytest.mark.parametrize(
    ("gap_s", "expected_mean"),
    [
        # Weights at the read: old sample 2**(-gap/300), new sample 1.
        pytest.param(0.0, 200.0, id="same-instant-plain-average"),
        pytest.param(300.0, (0.5 * 100.0 + 300.0) / 1.5, id="one-half-life-apart"),
        pytest.param(900.0, (0.125 * 100.0 + 300.0) / 1.125, id="three-half-lives-apart"),
    ],
)
def test_mean_weights_older_samples_by_their_age(gap_s: float, expected_mean: float) -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0)
    table.observe("k", 100.0, "probe")
    clock.now += gap_s
    table.observe("k", 300.0, "probe")
    assert table.row("k").mean_ms == pytest.approx(expected_mean, rel=1e-9)


P90_Z = 1.2815515655446004  # standard normal 0.9 quantile


@pytest.mark.parametrize(
    ("draw", "true_p90"),
    [
        pytest.param(
            lambda r: r.lognormvariate(math.log(200.0), 0.5),
            200.0 * math.exp(0.5 * P90_Z),
            id="lognormal-200ms",
        ),
        pytest.param(
            lambda r: 50.0 + r.expovariate(1 / 100.0),
            50.0 + 100.0 * math.log(10.0),
            id="shifted-exponential",
        ),
        pytest.param(lambda r: r.uniform(100.0, 300.0), 280.0, id="uniform-100-300"),
        pytest.param(
            lambda r: (900.0 if r.random() < 0.15 else 100.0) * r.uniform(0.95, 1.05),
            # P(X <= x) = 0.85 + 0.15 * (x/900 - 0.95) / 0.1 = 0.9 at x = 900 * (0.95 + 1/30)
            900.0 * (0.95 + 1 / 30),
            id="bimodal-with-slow-tail",
        ),
    ],
)
def test_p90_estimate_is_within_two_percent_of_a_known_distribution(
    draw: Callable[[random.Random], float], true_p90: float
) -> None:
    clock = FakeClock()
    # No prior and no decay to speak of, so the reading is the estimator alone.
    table = LatencyTable(1e9, clock=clock, prior_weight=0.0)
    rng = random.Random(7)
    for _ in range(20_000):
        clock.now += 0.01
        table.observe("k", draw(rng), "live")
    assert table.row("k").p90_ms == pytest.approx(true_p90, rel=0.02)


def test_p90_matches_the_exact_time_weighted_quantile_of_the_samples() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0)
    rng = random.Random(3)
    seen: list[tuple[float, float]] = []  # (value, time)
    for i in range(3000):
        clock.now += 1.0
        # Latency creeps upward, so old and new samples really differ and weighting matters.
        value = rng.lognormvariate(math.log(100.0 + i / 10), 0.4)
        seen.append((value, clock.now))
        table.observe("k", value, "probe")
    weighted = [(v, 2 ** (-(clock.now - t) / HALF_LIFE)) for v, t in seen]
    unweighted = _weighted_quantile([(v, 1.0) for v, _ in seen], 0.9)
    exact = _weighted_quantile(weighted, 0.9)
    assert exact > unweighted * 1.2  # the check below could not tell decay from no decay otherwise
    assert table.row("k").p90_ms == pytest.approx(exact, rel=0.03)


def test_p90_forgets_an_old_regime_after_a_few_half_lives() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0)
    rng = random.Random(11)
    for _ in range(600):
        clock.now += 1.0
        table.observe("k", rng.uniform(900.0, 1100.0), "probe")
    for _ in range(3000):  # ten half-lives of a faster regime
        clock.now += 1.0
        table.observe("k", rng.uniform(100.0, 200.0), "probe")
    assert table.row("k").p90_ms == pytest.approx(190.0, rel=0.03)


@pytest.mark.parametrize(
    ("silence_s", "expected"),
    [
        # Ten samples at 1000 ms against one nominal pseudo-sample at 200 ms.
        pytest.param(0.0, (10 * 1000.0 + 200.0) / 11, id="fresh-samples-dominate"),
        pytest.param(300.0, (5 * 1000.0 + 200.0) / 6, id="one-half-life-later"),
        pytest.param(1500.0, (10 / 32 * 1000.0 + 200.0) / (10 / 32 + 1), id="five-half-lives"),
        pytest.param(30_000.0, 200.0, id="back-to-nominal"),
    ],
)
def test_estimate_drifts_back_to_nominal_as_samples_age(silence_s: float, expected: float) -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, high_weight=0.0, prior_weight=1.0)
    table.set_prior("k", 200.0)
    for _ in range(10):
        table.observe("k", 1000.0, "live")
    clock.now += silence_s
    assert table.estimate_ms("k") == pytest.approx(expected, rel=1e-9)


def test_p90_drifts_to_nominal_too() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, high_weight=1.0)
    table.set_prior("k", 200.0)
    for _ in range(10):
        table.observe("k", 1000.0, "live")
    assert table.row("k").p90_ms > 900.0
    clock.now += 100 * HALF_LIFE
    row = table.row("k")
    assert row.p90_ms == pytest.approx(200.0, rel=1e-9)
    assert row.estimate_ms == pytest.approx(200.0, rel=1e-9)


def test_registered_deployment_without_samples_estimates_its_nominal() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    table.set_prior("k", 350.0)
    row = table.row("k")
    assert (row.estimate_ms, row.samples, row.age_s, row.source) == (350.0, 0, None, None)


def test_unknown_deployment_estimates_infinity() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    assert table.estimate_ms("nowhere") == math.inf
    assert table.last_live("nowhere") is None


def test_observing_an_unknown_key_registers_it_with_the_sample_as_nominal() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    table.observe("new", 420.0, "probe")
    row = table.row("new")
    assert row.nominal_ms == 420.0
    assert row.estimate_ms == pytest.approx(420.0, rel=0.03)


def test_live_and_probe_samples_feed_the_same_statistics() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0)
    table.observe("k", 100.0, "probe")
    assert table.last_live("k") is None
    clock.now += 5.0
    table.observe("k", 300.0, "live")
    row = table.row("k")
    w_old = 2 ** (-5.0 / HALF_LIFE)
    assert row.mean_ms == pytest.approx((w_old * 100.0 + 300.0) / (w_old + 1.0), rel=1e-9)
    assert (row.samples, row.source) == (2, "live")
    assert table.last_live("k") == clock.now
    clock.now += 7.0
    table.observe("k", 150.0, "probe")
    row = table.row("k")
    assert (row.samples, row.source, row.age_s) == (3, "probe", 0.0)
    assert table.last_live("k") == clock.now - 7.0


def _jittery_and_steady(high_weight: float) -> tuple[float, float]:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, high_weight=high_weight, prior_weight=0.0)
    for i in range(100):
        table.observe("steady", 200.0, "live")
        # Mean 190 ms, but 15 % of requests take 700 ms.
        table.observe("jittery", 700.0 if i % 100 < 15 else 100.0, "live")
    return table.estimate_ms("steady"), table.estimate_ms("jittery")


@pytest.mark.parametrize(
    ("high_weight", "jittery_wins"),
    [
        pytest.param(0.0, True, id="mean-only-favours-the-jittery-model"),
        pytest.param(0.5, False, id="default-mix-favours-the-steady-model"),
        pytest.param(1.0, False, id="p90-only-favours-the-steady-model"),
    ],
)
def test_estimate_mixes_mean_and_p90_so_jitter_costs(
    high_weight: float, jittery_wins: bool
) -> None:
    steady, jittery = _jittery_and_steady(high_weight)
    assert (jittery < steady) is jittery_wins


@pytest.mark.parametrize("high_weight", [0.0, 0.25, 0.5, 1.0])
def test_estimate_is_the_weighted_mix_of_mean_and_p90(high_weight: float) -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, high_weight=high_weight)
    table.set_prior("k", 300.0)
    rng = random.Random(5)
    for _ in range(200):
        clock.now += 1.0
        table.observe("k", rng.uniform(50.0, 500.0), "probe")
    clock.now += 120.0
    row = table.row("k")
    assert row.p90_ms > row.mean_ms
    expected = (1 - high_weight) * row.mean_ms + high_weight * row.p90_ms
    assert row.estimate_ms == pytest.approx(expected, rel=1e-12)
    assert table.estimate_ms("k") == pytest.approx(expected, rel=1e-12)


def test_version_bumps_on_every_observation() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    table.set_prior("k", 100.0)
    v0 = table.version
    table.observe("k", 100.0, "probe")
    table.observe("k", 100.0, "live")
    assert table.version == v0 + 2
    table.estimate_ms("k")
    table.rows()
    assert table.version == v0 + 2


def test_set_prior_is_idempotent_and_updates_the_nominal() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    table.set_prior("k", 100.0)
    table.observe("k", 500.0, "probe")
    v = table.version
    table.set_prior("k", 100.0)
    assert table.version == v
    assert table.row("k").samples == 1
    table.set_prior("k", 250.0)
    assert table.row("k").nominal_ms == 250.0
    assert table.row("k").samples == 1


def test_retain_forgets_removed_deployments() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    for key in ("a", "b", "c"):
        table.set_prior(key, 100.0)
    table.retain(["a", "c"])
    assert [r.key for r in table.rows()] == ["a", "c"]


def test_a_sample_after_a_very_long_silence_is_taken_at_face_value() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0)
    for _ in range(50):
        table.observe("k", 5000.0, "probe")
    clock.now += 1e8  # hundreds of thousands of half-lives: the inflation must not overflow
    table.observe("k", 80.0, "probe")
    row = table.row("k")
    assert row.mean_ms == pytest.approx(80.0, rel=1e-9)
    assert row.p90_ms == pytest.approx(80.0, rel=0.05)


def test_sub_millisecond_samples_keep_their_resolution() -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock(), prior_weight=0.0)
    for _ in range(20):
        table.observe("local", 0.4, "live")
    assert table.row("local").p90_ms == pytest.approx(0.4, rel=0.05)


@pytest.mark.parametrize(
    "bad",
    [
        pytest.param(math.nan, id="nan"),
        pytest.param(-1.0, id="negative"),
        pytest.param(math.inf, id="infinite"),
    ],
)
def test_rejects_samples_that_would_poison_the_mean(bad: float) -> None:
    table = LatencyTable(HALF_LIFE, clock=FakeClock())
    with pytest.raises(ValueError, match="ttft_ms"):
        table.observe("k", bad, "probe")
    assert "k" not in table


def test_rows_are_sorted_by_key_and_report_sample_age() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock)
    table.observe("b", 100.0, "probe")
    clock.now += 4.0
    table.observe("a", 100.0, "live")
    clock.now += 1.0
    rows = table.rows()
    assert [(r.key, r.age_s) for r in rows] == [("a", 1.0), ("b", 5.0)]


def test_p90_stays_accurate_across_the_periodic_rescale() -> None:
    clock = FakeClock()
    table = LatencyTable(100.0, clock=clock, prior_weight=0.0)
    rng = random.Random(13)
    seen: list[tuple[float, float]] = []
    for _ in range(8000):  # 80 half-lives: the inflated masses are rescaled twice
        clock.now += 1.0
        value = rng.uniform(100.0, 300.0)
        seen.append((value, clock.now))
        table.observe("k", value, "probe")
    exact = _weighted_quantile([(v, 2 ** (-(clock.now - t) / 100.0)) for v, t in seen], 0.9)
    assert table.row("k").p90_ms == pytest.approx(exact, rel=0.02)
    assert table.row("k").weight == pytest.approx(1 / (1 - 2 ** (-1 / 100.0)), rel=1e-6)


@pytest.mark.parametrize(
    ("interval_s", "half_life_s", "expected"),
    [
        pytest.param(300.0, 300.0, 1.0, id="one-half-life-apart"),
        pytest.param(600.0, 300.0, 1 / 3, id="two-half-lives-apart"),
        pytest.param(30.0, 300.0, 1 / (2**0.1 - 1), id="defaults"),
    ],
)
def test_settled_weight_is_the_geometric_sum_of_earlier_probes(
    interval_s: float, half_life_s: float, expected: float
) -> None:
    assert settled_weight(interval_s, half_life_s) == pytest.approx(expected, rel=1e-12)


def test_settled_weight_matches_a_table_fed_at_that_interval() -> None:
    clock = FakeClock()
    table = LatencyTable(0.3, clock=clock)
    for _ in range(200):
        table.observe("k", 80.0, "probe")
        clock.now += 0.2
    assert table.row("k").weight == pytest.approx(settled_weight(0.2, 0.3), rel=1e-9)


@pytest.mark.parametrize(
    ("interval_s", "half_life_s"),
    [
        pytest.param(30.0, 300.0, id="production"),
        pytest.param(0.2, 0.3, id="test-speed"),
        pytest.param(1.0, 0.5, id="half-life-shorter-than-interval"),
    ],
)
def test_prior_sized_for_the_schedule_is_the_same_share_of_a_probed_estimate(
    interval_s: float, half_life_s: float
) -> None:
    clock = FakeClock()
    prior = prior_weight_for(interval_s, half_life_s, 0.05)
    table = LatencyTable(half_life_s, clock=clock, high_weight=0.0, prior_weight=prior)
    table.set_prior("k", 1100.0)
    for _ in range(500):
        table.observe("k", 100.0, "probe")
        clock.now += interval_s
    # Just before the next probe: 95 % measured, 5 % nominal, whatever the time constants.
    assert table.estimate_ms("k") == pytest.approx(0.95 * 100.0 + 0.05 * 1100.0, rel=1e-9)


def test_prior_share_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="share"):
        prior_weight_for(30.0, 300.0, 1.0)


def _regime_table(shift_samples: int, clock: FakeClock) -> LatencyTable:
    table = LatencyTable(
        HALF_LIFE, clock=clock, high_weight=0.5, prior_weight=0.0, shift_samples=shift_samples
    )
    for _ in range(100):  # a long, steady 220 ms history, one probe every 30 s
        clock.now += 30.0
        table.observe("k", 220.0, "probe")
    return table


@pytest.mark.parametrize("k", [1, 2, 3])
def test_a_faster_regime_is_adopted_after_k_samples_in_a_row(k: int) -> None:
    clock = FakeClock()
    table = _regime_table(k, clock)
    for _ in range(k - 1):
        clock.now += 30.0
        table.observe("k", 60.0, "probe")
    assert table.estimate_ms("k") > 150.0  # the old regime's p90 still holds it up
    clock.now += 30.0
    table.observe("k", 60.0, "probe")
    row = table.row("k")
    assert row.shifts == 1
    assert row.estimate_ms == pytest.approx(60.0, rel=0.03)
    assert row.weight == pytest.approx(sum(2 ** (-30.0 * i / HALF_LIFE) for i in range(k)))


def test_without_shift_samples_a_faster_regime_waits_for_decay() -> None:
    clock = FakeClock()
    table = _regime_table(0, clock)
    for _ in range(5):
        clock.now += 30.0
        table.observe("k", 60.0, "probe")
    assert table.estimate_ms("k") > 150.0
    assert table.row("k").shifts == 0


def test_a_sample_back_at_the_old_level_breaks_the_run() -> None:
    clock = FakeClock()
    table = _regime_table(2, clock)
    for value in (60.0, 220.0, 60.0, 200.0, 60.0):
        clock.now += 30.0
        table.observe("k", value, "probe")
    assert table.row("k").shifts == 0


def test_the_floor_is_the_one_before_the_run_began() -> None:
    """Two probes against a light history: the first fast sample alone pulls the p10 down, so
    comparing the second with the moved p10 would never see a run."""
    clock = FakeClock()
    table = LatencyTable(0.5, clock=clock, prior_weight=0.0, shift_samples=2)
    for _ in range(20):
        clock.now += 0.3
        table.observe("k", 220.0, "probe")
    for _ in range(2):
        clock.now += 0.3
        table.observe("k", 60.0, "probe")
    assert table.row("k").shifts == 1


def test_a_slower_regime_is_adopted_after_two_slow_probes() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, prior_weight=0.0, shift_samples=2)
    for _ in range(100):
        clock.now += 30.0
        table.observe("k", 80.0, "probe")
    clock.now += 30.0
    table.observe("k", 400.0, "probe")
    assert table.row("k").shifts == 0
    clock.now += 30.0
    table.observe("k", 400.0, "probe")
    row = table.row("k")
    assert row.shifts == 1
    assert row.mean_ms == pytest.approx(400.0)


@pytest.mark.parametrize(
    ("every_s", "slow_for_s"),
    [
        pytest.param(0.05, 0.5, id="busy-ten-samples-in-half-a-second"),
        pytest.param(2.0, 18.0, id="trickle-a-run-spanning-15-s"),
    ],
)
def test_live_traffic_adopts_a_slower_regime_after_ten_samples_or_the_span(
    every_s: float, slow_for_s: float
) -> None:
    """Twenty live samples a second build a weight of thousands: without the regime test the
    p90 would need a tenth of that to be slow before it moved."""
    clock = FakeClock()
    table = LatencyTable(
        HALF_LIFE, clock=clock, prior_weight=0.0, shift_samples=2, shift_span_s=15.0
    )
    for _ in range(int(600 / every_s)):
        clock.now += every_s
        table.observe("k", 80.0, "live")
    slow_for = 0.0
    while table.row("k").shifts == 0:
        clock.now += every_s
        slow_for += every_s
        table.observe("k", 400.0, "live")
    assert slow_for == pytest.approx(slow_for_s)
    assert table.estimate_ms("k") == pytest.approx(400.0, rel=0.03)


@pytest.mark.parametrize(
    "draw",
    [
        pytest.param(
            lambda r: (700.0 if r.random() < 0.15 else 100.0) * r.uniform(0.95, 1.05),
            id="bimodal-15-percent-slow",
        ),
        pytest.param(
            lambda r: r.lognormvariate(math.log(200.0), math.sqrt(math.log(1.09))),
            id="lognormal-30-percent-spread",
        ),
    ],
)
def test_a_busy_deployment_never_trips_the_regime_test_by_chance(
    draw: Callable[[random.Random], float],
) -> None:
    clock = FakeClock()
    table = LatencyTable(
        HALF_LIFE, clock=clock, prior_weight=0.0, shift_samples=2, shift_span_s=1.0
    )
    rng = random.Random(2)
    for _ in range(50_000):  # 20 a second
        clock.now += 0.05
        table.observe("k", draw(rng), "live")
    assert table.row("k").shifts == 0


def test_jitter_keeps_costing_with_the_regime_test_on() -> None:
    clock = FakeClock()
    table = LatencyTable(
        HALF_LIFE, clock=clock, prior_weight=0.0, shift_samples=2, shift_span_s=1.0
    )
    rng = random.Random(2)
    for _ in range(20_000):
        clock.now += 0.05
        slow = rng.random() < 0.15
        table.observe("jittery", (700.0 if slow else 100.0) * rng.uniform(0.95, 1.05), "live")
        table.observe("steady", 200.0 * rng.uniform(0.95, 1.05), "live")
    assert table.estimate_ms("jittery") > table.estimate_ms("steady")


def test_noise_on_a_probed_only_deployment_rarely_trips_the_regime_test() -> None:
    """One probe every 30 s, 30 % lognormal spread: a probe lands 50 % beyond the band 0.4 %
    of the time, so two in a row are rare (each restart may set off one more)."""
    clock = FakeClock()
    table = LatencyTable(
        HALF_LIFE, clock=clock, prior_weight=0.0, shift_samples=2, shift_span_s=15.0
    )
    rng = random.Random(4)
    sigma = math.sqrt(math.log(1 + 0.3**2))
    for _ in range(20_000):
        clock.now += 30.0
        table.observe("k", rng.lognormvariate(math.log(200.0), sigma), "probe")
    assert table.row("k").shifts <= 20


def _recovery_probes(measured_weight: float, seed: int, false_alarm: float = 0.0) -> int:
    """Probes after a recovery until a deployment whose catalog nominal (300 ms) sits above its
    real 150 ms wins back from a steady 180 ms rival; 1 s probes, 10 s half-life, as Health
    sizes the prior."""
    clock = FakeClock()
    interval, half_life = 1.0, 10.0
    table = LatencyTable(
        half_life,
        clock=clock,
        prior_weight=prior_weight_for(interval, half_life, 0.05),
        shift_samples=2,
        shift_span_s=interval / 2,
        measured_weight=measured_weight,
        false_alarm=false_alarm,
    )
    table.set_prior("a", 300.0)
    table.set_prior("b", 180.0)
    rng = random.Random(seed)

    def probe_round(a_ms: float) -> None:
        clock.now += interval
        table.observe("a", a_ms * rng.lognormvariate(0.0, 0.1), "probe")
        table.observe("b", 180.0 * rng.lognormvariate(0.0, 0.1), "probe")

    for _ in range(60):
        probe_round(150.0)
    for _ in range(30):
        probe_round(600.0)
    assert table.estimate_ms("a") > table.estimate_ms("b")
    for n in range(1, 30):
        probe_round(150.0)
        if table.estimate_ms("a") < table.estimate_ms("b"):
            return n
    raise AssertionError("never won back")


@pytest.mark.parametrize("seed", range(5))
def test_a_recovered_deployment_wins_back_on_the_probe_that_confirms_it(seed: int) -> None:
    """Two probes make the regime restart; with the restarted history counted as measured, the
    nominal no longer holds the deployment back for several probes more."""
    settled = settled_weight(1.0, 10.0)
    assert _recovery_probes(settled, seed) == 2


def test_without_measured_weight_the_nominal_holds_a_recovered_deployment_back() -> None:
    """The root cause the measured weight removes: ~2 samples after the restart against a prior
    sized for a settled history."""
    assert max(_recovery_probes(0.0, seed) for seed in range(5)) >= 3


def test_measured_weight_lets_a_stale_entry_drift_to_nominal_like_a_settled_one() -> None:
    clock = FakeClock()
    table = LatencyTable(10.0, clock=clock, prior_weight=1.0, measured_weight=14.0)
    table.set_prior("k", 1000.0)
    table.observe("k", 100.0, "probe")
    # One sample, measured just now: it counts as 14 against the prior's 1.
    assert table.row("k").mean_ms == pytest.approx((14 * 100.0 + 1000.0) / 15, rel=1e-9)
    clock.now += 40.0  # four half-lives: 14 / 16
    w = 14.0 / 16
    assert table.row("k").mean_ms == pytest.approx((w * 100.0 + 1000.0) / (w + 1), rel=1e-9)
    assert table.row("k").weight == pytest.approx(1.0 / 16)  # the real weight is reported


def test_unsettled_is_true_only_while_a_run_beyond_the_band_is_open() -> None:
    clock = FakeClock()
    table = _regime_table(2, clock)
    assert not table.unsettled("k")
    clock.now += 30.0
    table.observe("k", 60.0, "probe")
    assert table.unsettled("k")
    clock.now += 30.0
    table.observe("k", 60.0, "probe")  # the run became a restart
    assert not table.unsettled("k")
    assert not table.unsettled("unknown")


def test_two_jittery_deployments_do_not_flap_with_measured_weight_on() -> None:
    """100 ms and 130 ms, 30 % lognormal spread each, probed every second: the faster one holds
    prefer=fast nearly all the time and the lead changes hands rarely."""
    clock = FakeClock()
    interval, half_life = 1.0, 10.0
    table = LatencyTable(
        half_life,
        clock=clock,
        prior_weight=prior_weight_for(interval, half_life, 0.05),
        shift_samples=2,
        shift_span_s=interval / 2,
        measured_weight=settled_weight(interval, half_life),
    )
    rng = random.Random(7)
    sigma = math.sqrt(math.log(1 + 0.3**2))
    leader, changes, ahead = "", 0, 0
    for _ in range(5_000):
        clock.now += interval
        table.observe("fast", rng.lognormvariate(math.log(100.0), sigma), "probe")
        table.observe("slow", rng.lognormvariate(math.log(130.0), sigma), "probe")
        now = "fast" if table.estimate_ms("fast") < table.estimate_ms("slow") else "slow"
        changes += now != leader
        ahead += now == "fast"
        leader = now
    assert ahead / 5_000 > 0.9
    assert changes < 100


# Suspicion: routing follows a run beyond the band before it is confirmed, once the
# deployment's own history makes noise an unlikely cause (probes/latency.py, "Suspicion").
FALSE_ALARM = 1e-4


def _shipped_table(clock: FakeClock, false_alarm: float = FALSE_ALARM) -> LatencyTable:
    """As Health builds it for 1 s probes and a 10 s half-life."""
    interval, half_life = 1.0, 10.0
    return LatencyTable(
        half_life,
        clock=clock,
        prior_weight=prior_weight_for(interval, half_life, 0.05),
        shift_samples=2,
        shift_span_s=interval / 2,
        measured_weight=settled_weight(interval, half_life),
        false_alarm=false_alarm,
    )


def _busy_then_slow(clock: FakeClock, table: LatencyTable) -> None:
    """Deployment "a" serves 20 live requests a second at 80 ms, "b" is probed at 150 ms; then
    two of a's answers arrive together at 400 ms (two clients, one moment: no span at all)."""
    _busy(clock, table)
    clock.now += 0.4
    table.observe("a", 400.0, "live")
    assert table.estimate_ms("a") < table.estimate_ms("b")  # one slow answer is not enough
    table.observe("a", 401.0, "live")


def test_a_busy_deployment_that_slows_loses_on_two_answers_that_arrive_together() -> None:
    clock = FakeClock()
    table = _shipped_table(clock)
    _busy_then_slow(clock, table)
    assert table.suspected("a")
    assert table.estimate_ms("a") > table.estimate_ms("b")
    row = table.row("a")
    assert (row.shifts, row.suspicions, row.suspected) == (0, 1, True)
    clock.now += 0.45  # the probe the loop sends at once comes back slow: confirmed
    table.observe("a", 398.0, "probe")
    row = table.row("a")
    assert (row.shifts, row.suspected) == (1, False)
    assert row.estimate_ms > table.estimate_ms("b")


def test_a_suspicion_that_a_probe_contradicts_keeps_the_history() -> None:
    clock = FakeClock()
    table = _shipped_table(clock)
    _busy_then_slow(clock, table)
    before = table.row("a")
    clock.now += 0.1
    table.observe("a", 81.0, "probe")
    assert table.suspected("a")  # one answer back inside the band may be a hiccup
    clock.now += 0.1
    table.observe("a", 79.0, "probe")
    row = table.row("a")
    assert (row.shifts, row.suspected) == (0, False)
    assert row.estimate_ms < table.estimate_ms("b")
    kept = before.weight * 2 ** (-0.2 / 10.0) + 2 ** (-0.1 / 10.0) + 1.0
    assert row.weight == pytest.approx(kept, rel=1e-9)  # nothing was forgotten


def test_one_hiccup_does_not_undo_a_recovery_that_routing_followed() -> None:
    """A 220 ms deployment answers a probe in 60 ms and routing follows; the next answer, on a
    loaded box, takes 156 ms (back inside the old band), the rest 60 ms again: the run goes on,
    is confirmed, and the deployment stays ahead of a steady 150 ms rival."""
    clock = FakeClock()
    table = _shipped_table(clock)
    table.set_prior("c", 330.0)
    table.set_prior("b", 225.0)
    for _ in range(30):
        clock.now += 1.0
        table.observe("c", 220.0, "probe")
        table.observe("b", 150.0, "probe")
    for ms, source in [(60.0, "probe"), (156.0, "live"), (65.0, "live"), (62.0, "live")]:
        clock.now += 0.1
        table.observe("c", ms, source)  # type: ignore[arg-type]
        assert table.estimate_ms("c") < table.estimate_ms("b")
    clock.now += 0.1
    table.observe("c", 61.0, "probe")  # the confirming probe, sent after the run began
    assert table.row("c").shifts == 1
    assert table.estimate_ms("c") < 100.0


def test_without_suspicion_two_answers_that_arrive_together_change_nothing() -> None:
    clock = FakeClock()
    table = _shipped_table(clock, false_alarm=0.0)
    _busy_then_slow(clock, table)
    assert not table.suspected("a")
    assert table.estimate_ms("a") < table.estimate_ms("b")


@pytest.mark.parametrize("seed", range(5))
def test_with_suspicion_a_recovered_deployment_wins_back_on_its_first_fast_probe(
    seed: int,
) -> None:
    """Nothing in its history lies that far below its band, so the first probe that does counts
    at once; the second, half an interval later, confirms it."""
    assert _recovery_probes(settled_weight(1.0, 10.0), seed, FALSE_ALARM) == 1


@pytest.mark.parametrize(
    ("tail", "slow_ms", "need"),
    [
        pytest.param(0.0, 500.0, 2, id="steady-two-in-a-row"),
        # A 10 % tail 5x slower: 0.1**4 = 1e-4, for a run where the tail lies.
        pytest.param(0.1, 500.0, 4, id="ten-percent-tail-four-in-a-row-at-the-tail"),
        # Far beyond anything the tail has shown: judged at its own level ("How far out").
        pytest.param(0.1, 2_000.0, 2, id="ten-percent-tail-two-in-a-row-far-beyond-it"),
    ],
)
def test_a_deployment_with_a_slow_tail_needs_a_longer_run_to_be_suspected(
    tail: float, slow_ms: float, need: int
) -> None:
    clock = FakeClock()
    table = _shipped_table(clock)
    rng = random.Random(5)
    for _ in range(2_000):
        clock.now += 0.05
        slow = 5.0 if rng.random() < tail else 1.0
        table.observe("a", 100.0 * slow * rng.uniform(0.97, 1.03), "live")
    # A normal answer closes any open run; the p90 must sit in the fast mode for the tail to
    # lie beyond the band.
    table.observe("a", 100.0, "live")
    while table.row("a").p90_ms > 200.0:
        clock.now += 0.05
        table.observe("a", 100.0, "live")
    for _ in range(need):
        assert not table.suspected("a")
        table.observe("a", slow_ms, "live")  # all at one instant: only suspicion can act
        assert table.row("a").shifts == 0
    assert table.suspected("a")


def _leader_changes(seed: int, false_alarm: float, steps: int = 20_000) -> int:
    """A deployment with a 10 % tail 5x slower and 10 % lognormal jitter on every answer, next
    to a steady 400 ms rival: the leader takes 20 live requests a second, the other is probed
    every second (the leader every four), and a suspected or unsettled key half a second after
    its last probe, as the probe loop does. Returns how often the leader changed hands."""
    clock = FakeClock()
    table = _shipped_table(clock, false_alarm)
    table.set_prior("tail", 150.0)
    table.set_prior("steady", 400.0)
    rng = random.Random(seed)

    def draw(key: str) -> float:
        base = 400.0 if key == "steady" else 500.0 if rng.random() < 0.1 else 100.0
        return base * rng.lognormvariate(0.0, 0.1)

    last_probe = {"tail": clock.now, "steady": clock.now}
    leader, changes = "tail", 0
    for _ in range(steps):
        clock.now += 0.05
        now = min(("tail", "steady"), key=table.estimate_ms)
        changes += now != leader
        leader = now
        table.observe(leader, draw(leader), "live")
        for key in ("tail", "steady"):
            due = 4.0 if key == leader else 1.0
            if table.suspected(key) or (key != leader and table.unsettled(key)):
                due = 0.5
            if clock.now - last_probe[key] >= due:
                last_probe[key] = clock.now
                table.observe(key, draw(key), "probe")
    return changes


def test_a_ten_percent_slow_tail_with_jitter_does_not_flap() -> None:
    """60,000 answers (50 minutes of 20 a second) over three seeds: suspicion may misjudge the
    tail deployment about 1e-4 of the time, and each misjudgment is two changes of leader. The
    same deployments with the threshold at two in a row whatever the tail (false_alarm 0.5)
    flap dozens of times per seed, so the count is not vacuous."""
    calm = sum(_leader_changes(seed, FALSE_ALARM) for seed in range(3))
    assert calm <= 12
    assert sum(_leader_changes(seed, 0.5) for seed in range(3)) > 60


def _busy(clock: FakeClock, table: LatencyTable) -> None:
    """ "a" serves 20 live requests a second at 80 ms (its run needs two), "b" is probed at 150."""
    table.set_prior("a", 120.0)
    table.set_prior("b", 225.0)
    rng = random.Random(3)
    for i in range(600):
        clock.now += 0.05
        table.observe("a", 80.0 * rng.uniform(0.97, 1.03), "live")
        if i % 20 == 0:
            table.observe("b", 150.0 * rng.uniform(0.97, 1.03), "probe")


def test_a_request_still_waiting_past_the_band_counts_toward_suspecting_a_slowdown() -> None:
    """Two clients' requests went out 100 ms apart: when the first answers in 400 ms, the second
    has waited 300 ms, far past the band, and is already a slow sample; routing leaves "a" then,
    not on the second answer (meanwhile the first client's next request would go to "a")."""
    clock = FakeClock()
    table = _shipped_table(clock)
    _busy(clock, table)
    first = table.sending("a")
    clock.now += 0.1
    second = table.sending("a")
    clock.now += 0.3
    table.answered("a", first)
    table.observe("a", 400.0, "live")
    assert table.suspected("a")
    assert table.estimate_ms("a") > table.estimate_ms("b")
    assert table.row("a").shifts == 0  # waiting suspects; only answers confirm
    clock.now += 0.1
    table.answered("a", second)
    table.observe("a", 400.0, "live")
    assert table.waiting("a") == 0
    assert table.suspected("a")


@pytest.mark.parametrize(
    ("sent_before_s", "answered"),
    [
        pytest.param(0.05, False, id="waiting-less-than-the-band"),
        pytest.param(0.3, True, id="answered-already"),
    ],
)
def test_a_request_counts_as_slow_only_while_it_waits_past_the_band(
    sent_before_s: float, answered: bool
) -> None:
    clock = FakeClock()
    table = _shipped_table(clock)
    _busy(clock, table)
    other = table.sending("a")
    clock.now += sent_before_s
    if answered:
        table.answered("a", other)
    table.observe("a", 400.0, "live")
    assert not table.suspected("a")
    assert table.estimate_ms("a") < table.estimate_ms("b")


def test_waiting_requests_do_not_make_a_normal_answer_suspicious() -> None:
    clock = FakeClock()
    table = _shipped_table(clock)
    _busy(clock, table)
    for _ in range(5):
        table.sending("a")
    clock.now += 1.0
    table.observe("a", 81.0, "live")
    assert not table.suspected("a") and not table.unsettled("a")


def test_estimates_reads_every_key_as_estimate_ms_does() -> None:
    clock = FakeClock()
    table = LatencyTable(HALF_LIFE, clock=clock, measured_weight=3.0, shift_samples=2)
    table.set_prior("quiet", 250.0)
    for i in range(40):
        table.observe("busy", 80.0 + i % 7, "live")
        clock.now += 1.0
    table.observe("busy", 900.0, "probe")  # a run beyond the band
    clock.now += 45.0
    keys = ["busy", "quiet", "unknown"]
    assert table.estimates(keys) == {k: table.estimate_ms(k) for k in keys}
    assert table.estimates(keys)["unknown"] == math.inf
    assert table.estimates(keys)["quiet"] == 250.0
    assert table.estimates(["busy"])["busy"] == pytest.approx(table.row("busy").estimate_ms)
