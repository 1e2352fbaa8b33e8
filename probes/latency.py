"""The decayed TTFT table: per deployment, a time-decayed mean and p90 of time-to-first-token.

Probes and live requests feed the same statistics; routing reads one number per deployment.

Semantics
---------
*Decay by elapsed time.* Every sample carries weight 1 when it arrives and that weight halves
every ``half_life_s`` seconds of clock time, whether or not other samples arrive. Decay is
applied lazily from the entry's stored last-update time when it is observed or read; there is
no background timer. ``LatencyRow.weight`` is the current total weight of real samples.

*Mean.* The time-decayed mean of real samples: each sample counts in proportion to its current
weight.

*p90.* The 0.9 quantile of the same time-decayed sample distribution, read from a histogram of
321 fixed log-spaced buckets (each 5 % wider than the last, 0.1 ms to 10 min, geometric
interpolation inside a bucket). Decay costs nothing per bucket: instead of shrinking
old mass, each new sample is *inflated* by ``2**((t - t_ref) / half_life)``; only the ratios
between buckets matter for a quantile, and the buckets are rescaled once every ~30 half-lives to
keep the numbers small. A cursor remembers which bucket holds the quantile and usually moves by
at most a bucket or two per sample, so an observation is O(1) amortised and a read is O(1).

*Drift to prior.* A deployment's nominal TTFT (from the catalog) acts as ``prior_weight``
pseudo-samples that never decay. The reported mean and p90 are each
``(w * real + prior_weight * nominal) / (w + prior_weight)``, where ``w`` is the current weight
of real samples, so when traffic and probes stop, the estimate slides back to nominal. (For p90
this blends the two estimates rather than taking the quantile of the mixture: it is O(1) to read
and moves smoothly, which is what routing needs.)

*Estimate.* ``estimate_ms = (1 - high_weight) * mean + high_weight * p90``, so a jittery
deployment does not win on its mean alone. Unknown keys estimate to ``inf``.

*How heavy the prior is.* ``prior_weight`` is in units of fresh samples, but what it competes
with is the weight a deployment's samples settle at, which depends on how often it is measured
relative to the half-life: probed every ``interval`` alone, just before each probe it is
``1 / (2**(interval / half_life) - 1)`` (about 14 at 30 s / 300 s, under 2 at 0.2 s / 0.3 s).
``prior_weight_for`` sizes the prior as a fixed share of that, so the nominal biases a measured
deployment equally little whatever the time constants.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

Source = Literal["probe", "live"]

QUANTILE = 0.9

# Bucket geometry: 5 % steps bound the interpolation error to a few percent, and 0.1 ms keeps
# the simulated upstreams on 127.0.0.1 (sub-millisecond TTFTs) out of the floor bucket.
_MIN_MS = 0.1
_MAX_MS = 600_000.0
_RATIO = 1.05
_LOG_RATIO = math.log(_RATIO)
_N_BUCKETS = math.ceil(math.log(_MAX_MS / _MIN_MS) / _LOG_RATIO) + 1

# Inflated masses are rescaled past 2**30: far from overflow, and old samples are negligible
# (a billionth) relative to new ones by then, so float precision is never the limit.
_RESCALE_HALF_LIVES = 30.0


@dataclass(frozen=True, slots=True)
class LatencyRow:
    """One deployment's line in the table, as reported by ``/v1/router/status``."""

    key: str
    mean_ms: float
    p90_ms: float
    estimate_ms: float
    samples: int  # total ever observed
    weight: float  # current decayed weight of real samples
    age_s: float | None  # since the last sample; None before the first
    source: Source | None  # of the last sample
    nominal_ms: float


def settled_weight(interval_s: float, half_life_s: float) -> float:
    """The real-sample weight of a deployment measured once every ``interval_s`` and nothing
    else, at its lowest (just before a measurement): ``r + r**2 + ... = r / (1 - r)`` with
    ``r = 2**(-interval_s / half_life_s)``."""
    if not (interval_s > 0.0 and half_life_s > 0.0):
        raise ValueError("interval_s and half_life_s must be positive")
    return 1.0 / math.expm1(interval_s / half_life_s * math.log(2.0))


def prior_weight_for(interval_s: float, half_life_s: float, share: float) -> float:
    """The ``prior_weight`` at which a catalog nominal makes up ``share`` of the estimate of a
    deployment probed every ``interval_s`` (at its lightest, just before a probe); live traffic
    only shrinks that share. Once measurements stop, the estimate is halfway back to nominal
    after ``log2((1 - share) / share)`` half-lives (4.2 for a share of 0.05)."""
    if not 0.0 <= share < 1.0:
        raise ValueError(f"share must be within [0, 1), got {share!r}")
    return share / (1.0 - share) * settled_weight(interval_s, half_life_s)


def _bucket(ms: float) -> int:
    if ms <= _MIN_MS:
        return 0
    return min(_N_BUCKETS - 1, int(math.log(ms / _MIN_MS) / _LOG_RATIO))


def _bucket_value(index: int, fraction: float) -> float:
    return _MIN_MS * math.exp((index + fraction) * _LOG_RATIO)


class _Entry:
    """One deployment's statistics; mutated in place on the hot path."""

    __slots__ = (
        "below",
        "cursor",
        "hist",
        "last_live",
        "last_sample",
        "last_source",
        "mean",
        "mix",
        "nominal",
        "p90",
        "samples",
        "t_ref",
        "total",
        "updated",
        "weight",
    )

    def __init__(self, nominal: float, now: float) -> None:
        self.nominal = nominal
        self.weight = 0.0  # decayed weight of real samples as of ``updated``
        self.updated = now
        self.mean = nominal  # real-sample mean; meaningless while weight is 0
        self.p90 = nominal  # real-sample p90, cached at observe time
        self.mix = nominal  # (1 - high_weight) * mean + high_weight * p90 of real samples
        self.samples = 0
        self.last_sample: float | None = None
        self.last_source: Source | None = None
        self.last_live: float | None = None
        self.hist: list[float] = [0.0] * _N_BUCKETS
        self.t_ref = now  # time at which a new sample's inflated mass is 1
        self.total = 0.0  # sum of hist
        self.cursor = 0  # bucket holding the quantile
        self.below = 0.0  # sum of hist[:cursor]


def _rescale(e: _Entry, now: float, half_life_s: float) -> None:
    # 2**-x underflows to 0.0 (never raises) after a very long silence: that simply forgets.
    factor = math.exp2(-(now - e.t_ref) / half_life_s)
    hist = e.hist
    for i, m in enumerate(hist):
        if m:
            hist[i] = m * factor
    e.total = math.fsum(hist)
    e.below = math.fsum(hist[: e.cursor])
    e.t_ref = now


def _add_to_histogram(e: _Entry, ms: float, now: float, half_life_s: float) -> None:
    if (now - e.t_ref) / half_life_s > _RESCALE_HALF_LIVES:
        _rescale(e, now, half_life_s)
    mass = math.exp2((now - e.t_ref) / half_life_s)
    hist = e.hist
    index = _bucket(ms)
    hist[index] += mass
    e.total += mass
    cursor = e.cursor
    below = e.below
    if index < cursor:
        below += mass
    target = QUANTILE * e.total
    # Invariant: below <= target < below + hist[cursor], i.e. the quantile lies in ``cursor``.
    while cursor > 0 and below > target:
        cursor -= 1
        below -= hist[cursor]
    while cursor < _N_BUCKETS - 1 and below + hist[cursor] <= target:
        below += hist[cursor]
        cursor += 1
    below = max(below, 0.0)  # incremental float error must not push the fraction past 1
    e.cursor = cursor
    e.below = below
    in_bucket = hist[cursor]
    fraction = (target - below) / in_bucket if in_bucket > 0.0 else 0.5
    e.p90 = _bucket_value(cursor, min(1.0, max(0.0, fraction)))


class LatencyTable:
    """Decayed TTFT statistics per deployment key. Not thread-safe; one event loop owns it."""

    __slots__ = ("_clock", "_entries", "_half_life_s", "_high_weight", "_prior_weight", "_version")

    def __init__(
        self,
        half_life_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        high_weight: float = 0.5,
        prior_weight: float = 1.0,
    ) -> None:
        if not half_life_s > 0.0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s!r}")
        if not 0.0 <= high_weight <= 1.0:
            raise ValueError(f"high_weight must be within [0, 1], got {high_weight!r}")
        if not prior_weight >= 0.0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
        self._half_life_s = half_life_s
        self._clock = clock
        self._high_weight = high_weight
        self._prior_weight = prior_weight
        self._entries: dict[str, _Entry] = {}
        self._version = 0

    @property
    def half_life_s(self) -> float:
        return self._half_life_s

    @property
    def high_weight(self) -> float:
        return self._high_weight

    @property
    def prior_weight(self) -> float:
        return self._prior_weight

    @property
    def version(self) -> int:
        """Bumps on every observe and every prior change: compare to detect a changed table."""
        return self._version

    def __contains__(self, key: object) -> bool:
        return key in self._entries

    def set_prior(self, key: str, nominal_ms: float) -> None:
        """Register a deployment with its nominal TTFT, or update the nominal of a known one."""
        _check_ms(nominal_ms, "nominal_ms")
        e = self._entries.get(key)
        if e is None:
            self._entries[key] = _Entry(nominal_ms, self._clock())
        elif e.nominal != nominal_ms:
            e.nominal = nominal_ms
        else:
            return
        self._version += 1

    def retain(self, keys: Iterable[str]) -> None:
        """Forget every deployment not in ``keys`` (config reload removed it)."""
        keep = set(keys)
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]
        self._version += 1

    def observe(self, key: str, ttft_ms: float, source: Source) -> None:
        """Feed one TTFT sample. An unknown key is registered with the sample as its nominal."""
        _check_ms(ttft_ms, "ttft_ms")
        now = self._clock()
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry(ttft_ms, now)
        weight = self._decayed_weight(e, now) + 1.0
        e.mean += (ttft_ms - e.mean) / weight
        e.weight = weight
        e.updated = max(now, e.updated)
        _add_to_histogram(e, ttft_ms, now, self._half_life_s)
        e.mix = (1.0 - self._high_weight) * e.mean + self._high_weight * e.p90
        e.samples += 1
        e.last_sample = now
        e.last_source = source
        if source == "live":
            e.last_live = now
        self._version += 1

    def estimate_ms(self, key: str) -> float:
        """The routing number: mean/p90 mix drifted toward nominal. O(1); unknown key -> inf."""
        e = self._entries.get(key)
        if e is None:
            return math.inf
        w = self._decayed_weight(e, self._clock())
        total = w + self._prior_weight
        if total <= 0.0:
            return e.nominal
        return (w * e.mix + self._prior_weight * e.nominal) / total

    def last_live(self, key: str) -> float | None:
        """Clock time of the last live sample (the probe loop backs off while traffic flows)."""
        e = self._entries.get(key)
        return None if e is None else e.last_live

    def row(self, key: str) -> LatencyRow:
        """One deployment's current statistics; KeyError for an unknown key."""
        return self._row(key, self._entries[key], self._clock())

    def rows(self) -> list[LatencyRow]:
        now = self._clock()
        return [self._row(k, self._entries[k], now) for k in sorted(self._entries)]

    def _row(self, key: str, e: _Entry, now: float) -> LatencyRow:
        w = self._decayed_weight(e, now)
        pw = self._prior_weight
        total = w + pw
        if total > 0.0:
            mean = (w * e.mean + pw * e.nominal) / total
            p90 = (w * e.p90 + pw * e.nominal) / total
        else:
            mean = p90 = e.nominal
        hw = self._high_weight
        return LatencyRow(
            key=key,
            mean_ms=mean,
            p90_ms=p90,
            estimate_ms=(1.0 - hw) * mean + hw * p90,
            samples=e.samples,
            weight=w,
            age_s=None if e.last_sample is None else max(0.0, now - e.last_sample),
            source=e.last_source,
            nominal_ms=e.nominal,
        )

    def _decayed_weight(self, e: _Entry, now: float) -> float:
        dt = now - e.updated
        if dt <= 0.0 or e.weight == 0.0:
            return e.weight
        return e.weight * math.exp2(-dt / self._half_life_s)


def _check_ms(value: float, name: str) -> None:
    # A NaN would poison the running mean for good, so refuse it at the door.
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
