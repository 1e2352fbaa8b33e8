# Over 400 lines: its docstring (~75 lines) is the estimator's specification, kept beside it.
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

*Regime change.* Decay alone adapts slowly where it matters most. A deployment that got faster
waits until its old slow samples hold under 10 % of the weight (about 3.3 half-lives) before
its p90 lets it win; a busy deployment that got slower carries the weight of thousands of live
samples, and its p90 moves only when a tenth of that weight is new. So with
``shift_samples = k`` (0, the default here, turns it off) a *run* of samples that all fall
beyond the entry's band, below its p10 / (1 + ``shift_margin``) or above its p90 x (1 +
``shift_margin``) as they stood when the run began, at least ``k`` long and either spanning
``shift_span_s`` or ``_BUSY_RUN`` (10) long, means the deployment has moved: the entry forgets
everything before the run (its newest ``_RUN_KEEP`` samples become the whole history). Noise
seldom trips it: with a 30 % lognormal spread one sample in 250 lands beyond the band, so two
in a row are rare (4 restarts in 20,000 probes in the tests). A busy deployment's short run
must reach ten, which jitter never does by chance. A probed-only jittery deployment (15 % 7x
slower) trips on two slow probes in a row, 1 % of probes, and two normal ones restart it
back; over a long run its estimate sat below a steady 200 ms deployment's 30 % of the time
instead of 26 % (mean 190 ms, 15 % of samples at 700 ms).

*Suspicion.* Until it is confirmed a run changes nothing, so a busy deployment whose clients'
first slow answers arrive together keeps its traffic for another round of slow answers. With
``false_alarm = a`` (0, the default here, turns it off) routing follows a run before it is
confirmed once it is ``k`` long, ``k`` the fewest samples at which noise alone would make such a
run with chance ``a`` or less: ``q**k <= a``, where ``q`` is the deployment's own rate of samples
beyond that edge of its band, its decayed history's share there with half a sample's doubt,
``(share * w + 0.5) / (w + 1)`` (``k`` is fixed when the run begins and never below
``shift_samples``). A steady busy deployment needs two in a row; one whose p90 sits below a 10 %
slow tail needs four (0.1**4). A faster run needs one sample when no part of the history lies
that far below the band: TTFT noise is queueing and retries, which only add. While suspected,
the run is read alone, as its mean and p90, and the history is kept; two samples in a row back
inside the band end it (one would let a single hiccup undo a recovery: the run's fast samples,
now history, drag the p10 down so that no later run is beyond it). The probe loop probes a
suspected deployment at once (``suspected``), so a false alarm costs about one probe's round
trip of traffic on the runner-up, and a probe sent after a suspected run began (its sample's
time minus its TTFT is past the run's start) confirms it whatever the span: probes of one
deployment never overlap, so it is a separate look, which is all the span asks of live answers.

*How far out.* ``k`` is fixed at the band's edge when a run begins, but a run may lie much
further out: a busy 60 ms deployment whose loaded box puts 1 % of its answers past 1.5x its
p90 needs three in a row there, yet nothing in its history comes near 500 ms. So a run short
of ``k`` is also judged at its own least extreme sample: the same rule, with the history's
share beyond that level (its bucket counted, the run's own earlier samples not). For
independent samples, the chance that ``k`` of them all lie beyond a level whose share ``q``
has ``q**k <= a`` is ``a`` whether the level is fixed or is the least extreme of the ``k``;
the test is taken only while the run is ``shift_samples`` long or shorter, and with half of
``false_alarm``, so the two tests together keep about the rate of one. A deployment with a
real 10 % tail at 5x still needs four answers at the tail's level, and two far beyond it.

*Waiting.* A live request still without its first token is a sample already known to lie
beyond anything shorter than its wait. When a slow sample arrives and its run is short of
``k``, the requests to that deployment (``sending`` / ``answered``) that have waited past the
run's bound count towards ``k`` (judged at the least extreme of the run and their waits):
two clients whose requests went out a moment apart no longer need the later one's answer
before the earlier one's next request leaves the deployment. They count for suspicion only;
a regime change is confirmed by answers.

*How heavy the prior is.* ``prior_weight`` is in units of fresh samples, but what it competes
with is the weight a deployment's samples settle at, which depends on how often it is measured
relative to the half-life: probed every ``interval`` alone, just before each probe it is
``1 / (2**(interval / half_life) - 1)`` (about 14 at 30 s / 300 s, under 2 at 0.2 s / 0.3 s).
``prior_weight_for`` sizes the prior as a fixed share of that, so the nominal biases a measured
deployment equally little whatever the time constants.

*Measured is measured.* A regime restart leaves about two samples' weight, and a new deployment
has one, while the prior keeps the weight sized against a settled history: the nominal would
then hold a quarter or more of the estimate, and a deployment that recovered from a slowdown
(its samples now below a nominal set above them) would stay behind a steady rival for three or
four more probes after the restart that proved it fast. So with ``measured_weight = W`` (0, the
default here, turns it off) the weight that competes with the prior is at least ``W`` decayed by
the age of the newest sample: a deployment measured a moment ago counts as measured however few
samples its history holds, and one that stops being measured drifts to nominal exactly as a
settled one does (``Health`` passes the settled weight of its probe interval).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

Source = Literal["probe", "live"]

QUANTILE = 0.9
LOW_QUANTILE = 0.1

# Bucket geometry: 5 % steps bound the interpolation error to a few percent, and 0.1 ms keeps
# the simulated upstreams on 127.0.0.1 (sub-millisecond TTFTs) out of the floor bucket.
_MIN_MS = 0.1
_MAX_MS = 600_000.0
_RATIO = 1.05
_LOG_RATIO = math.log(_RATIO)
_N_BUCKETS = math.ceil(math.log(_MAX_MS / _MIN_MS) / _LOG_RATIO) + 1
_TOP = _N_BUCKETS - 1

# A run this long is a regime change however short its span: ten samples in a row beyond the
# band is what a deployment sending many requests a second shows within a second of moving,
# and what noise that stays inside the band even 92 % of the time shows once in 10**11 samples.
_BUSY_RUN = 10

# A regime restart keeps this many of the run's newest samples as the new history: plenty to
# place a mean and a p90, and the bound on a run's memory however busy the deployment.
_RUN_KEEP = 32

# The share of ``false_alarm`` a run judged at its own level may use (see "How far out"): it is
# judged so at most twice (at its first answer with requests waiting, and at its second), so
# each time takes half. Simulated, a 10 % slow tail with jitter then changes leader exactly as
# often as with the band's edge alone (26 times in 200,000 answers over ten seeds; 48 with the
# whole rate at every answer of a run).
_LEVEL_ALARM = 0.5

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
    shifts: int = 0  # regime changes adopted (see "Regime change" above)
    suspicions: int = 0  # runs that routing followed before they were confirmed ("Suspicion")
    suspected: bool = False  # one is open now: the estimate is the run's, not the history's
    probe_samples: int = 0  # of ``samples``, those fed by probes (the rest are live)


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
    return min(_TOP, int(math.log(ms / _MIN_MS) / _LOG_RATIO))


class _Entry:
    """One deployment's statistics; mutated in place on the hot path."""

    __slots__ = (
        "below",
        "cursor",
        "hist",
        "last_live",
        "last_sample",
        "last_source",
        "lo_below",
        "lo_cursor",
        "mean",
        "mix",
        "nominal",
        "p10",
        "p90",
        "probe_samples",
        "run",
        "run_bound",
        "run_count",
        "run_dir",
        "run_from",
        "run_mean",
        "run_need",
        "run_p90",
        "run_start",
        "run_strike",
        "samples",
        "shift_dir",
        "shifts",
        "slowed_from",
        "suspicions",
        "t_ref",
        "total",
        "updated",
        "waiting",
        "weight",
    )

    def __init__(self, nominal: float, now: float) -> None:
        self.nominal = nominal
        self.weight = 0.0  # decayed weight of real samples as of ``updated``
        self.updated = now
        self.mean = nominal  # real-sample mean; meaningless while weight is 0
        self.p90 = nominal  # real-sample p90, cached at observe time
        self.p10 = nominal  # real-sample p10, likewise (the faster-regime test reads it)
        self.mix = nominal  # (1 - high_weight) * mean + high_weight * p90 of real samples
        self.samples = 0
        self.probe_samples = 0
        self.last_sample: float | None = None
        self.last_source: Source | None = None
        self.last_live: float | None = None
        self.hist: list[float] = [0.0] * _N_BUCKETS
        self.t_ref = now  # time at which a new sample's inflated mass is 1
        self.total = 0.0  # sum of hist
        self.cursor = 0  # bucket holding the p90
        self.below = 0.0  # sum of hist[:cursor]
        self.lo_cursor = 0  # bucket holding the p10
        self.lo_below = 0.0  # sum of hist[:lo_cursor]
        # The current run of samples beyond the band: its newest (time, ms), its direction
        # (-1 faster, +1 slower, 0 none), the band edge it must stay beyond, start and length.
        self.run: list[tuple[float, float]] = []
        self.run_dir = 0
        self.run_bound = 0.0
        self.run_start = 0.0
        self.run_count = 0
        self.run_from = nominal  # the real samples' mix when the run began
        # Run length at which the run is suspected to be a new regime (set when it begins;
        # 0: never), and the run's own mean and p90, which routing reads while it is suspected
        # (NaN while it is not).
        self.run_need = 0
        self.run_mean = math.nan
        self.run_p90 = math.nan
        self.run_strike = False  # a suspected run has just had one sample back inside the band
        self.shifts = 0  # regime changes adopted
        self.suspicions = 0  # runs that reached run_need
        # The latest regime change's direction (+1 slower, -1 faster, 0 none yet) and, after a
        # slowdown, the estimate (real samples' mix) the deployment held before it.
        self.shift_dir = 0
        self.slowed_from = math.nan
        # Live requests sent and not yet answered: ticket -> clock time sent (see "Waiting").
        self.waiting: dict[int, float] = {}


def _rescale(e: _Entry, now: float, half_life_s: float) -> None:
    # 2**-x underflows to 0.0 (never raises) after a very long silence: that simply forgets.
    factor = math.exp2(-(now - e.t_ref) / half_life_s)
    hist = e.hist
    for i, m in enumerate(hist):
        if m:
            hist[i] = m * factor
    e.total = math.fsum(hist)
    e.below = math.fsum(hist[: e.cursor])
    e.lo_below = math.fsum(hist[: e.lo_cursor])
    e.t_ref = now


def _seek(
    hist: list[float], cursor: int, below: float, q: float, total: float
) -> tuple[int, float, float]:
    """Move a quantile cursor to the bucket holding ``q * total``; returns (cursor, below,
    interpolated value). Usually a step or two from where it was."""
    target = q * total
    # Invariant: below <= target < below + hist[cursor], i.e. the quantile lies in ``cursor``.
    while cursor > 0 and below > target:
        cursor -= 1
        below -= hist[cursor]
    while cursor < _TOP and below + hist[cursor] <= target:
        below += hist[cursor]
        cursor += 1
    below = max(below, 0.0)  # incremental float error must not push the fraction past 1
    in_bucket = hist[cursor]
    fraction = min(1.0, max(0.0, (target - below) / in_bucket if in_bucket > 0.0 else 0.5))
    # The bucket's value inline, not a call: twice per sample, ~10 bytecodes each.
    return cursor, below, _MIN_MS * math.exp((cursor + fraction) * _LOG_RATIO)


def _add_to_histogram(e: _Entry, ms: float, now: float, half_life_s: float) -> None:
    age = (now - e.t_ref) / half_life_s
    if age > _RESCALE_HALF_LIVES:
        _rescale(e, now, half_life_s)
        age = (now - e.t_ref) / half_life_s
    mass = math.exp2(age)
    index = _bucket(ms)
    if e.total == 0.0:
        # An empty histogram (a first sample): both quantiles lie in this sample's bucket, where
        # the cursors' walk over the empty buckets would end (it adds only zeros to ``below``).
        e.cursor = e.lo_cursor = index
        e.below = e.lo_below = 0.0
    e.hist[index] += mass
    e.total += mass
    if index < e.cursor:
        e.below += mass
    if index < e.lo_cursor:
        e.lo_below += mass
    e.cursor, e.below, e.p90 = _seek(e.hist, e.cursor, e.below, QUANTILE, e.total)
    e.lo_cursor, e.lo_below, e.p10 = _seek(e.hist, e.lo_cursor, e.lo_below, LOW_QUANTILE, e.total)


def _restart(e: _Entry, run: list[tuple[float, float]], now: float, half_life_s: float) -> None:
    """Forget everything but ``run``: the deployment has moved to a new regime."""
    e.hist = [0.0] * _N_BUCKETS
    e.t_ref = now
    weight = 0.0
    weighted = 0.0
    for t, ms in run:
        mass = math.exp2((t - now) / half_life_s)
        e.hist[_bucket(ms)] += mass
        weight += mass
        weighted += mass * ms
    e.total = weight
    e.weight = weight
    e.mean = weighted / weight
    e.cursor, e.below, e.p90 = _seek(e.hist, 0, 0.0, QUANTILE, weight)
    e.lo_cursor, e.lo_below, e.p10 = _seek(e.hist, 0, 0.0, LOW_QUANTILE, weight)
    e.shifts += 1


def _end_run(e: _Entry) -> None:
    e.run, e.run_dir, e.run_count = [], 0, 0
    e.run_mean = e.run_p90 = math.nan
    e.run_strike = False


def _share_beyond(e: _Entry, bound: float, direction: int) -> float:
    """The share of the decayed history beyond ``bound`` (above it for ``direction`` > 0, below
    it otherwise), counting whole buckets only: a few buckets' walk from the quantile cursor."""
    if e.total <= 0.0:
        return 0.0
    hist = e.hist
    b = _bucket(bound)
    if direction > 0:
        c = e.cursor
        above = e.total - e.below - math.fsum(hist[c : b + 1])
        mass = above if b >= c else math.fsum(hist[b + 1 :])
    else:
        c = e.lo_cursor
        mass = e.lo_below - math.fsum(hist[b:c]) if b <= c else math.fsum(hist[:b])
    return min(1.0, max(0.0, mass / e.total))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class LatencyTable:
    """Decayed TTFT statistics per deployment key. Not thread-safe; one event loop owns it."""

    __slots__ = (
        "_clock",
        "_entries",
        "_false_alarm",
        "_half_life_s",
        "_high_weight",
        "_measured_weight",
        "_prior_weight",
        "_shift_margin",
        "_shift_samples",
        "_shift_span_s",
        "_tickets",
        "listener",
        "regime_version",
        "slowdown_listener",
        "version",
    )

    def __init__(
        self,
        half_life_s: float = 300.0,
        *,
        clock: Callable[[], float] = time.monotonic,
        high_weight: float = 0.5,
        prior_weight: float = 1.0,
        shift_samples: int = 0,
        shift_margin: float = 0.5,
        shift_span_s: float = 0.0,
        measured_weight: float = 0.0,
        false_alarm: float = 0.0,
    ) -> None:
        if not half_life_s > 0.0:
            raise ValueError(f"half_life_s must be positive, got {half_life_s!r}")
        if not 0.0 <= high_weight <= 1.0:
            raise ValueError(f"high_weight must be within [0, 1], got {high_weight!r}")
        if not prior_weight >= 0.0:
            raise ValueError(f"prior_weight must be >= 0, got {prior_weight!r}")
        if shift_samples < 0:
            raise ValueError(f"shift_samples must be >= 0, got {shift_samples!r}")
        if not shift_margin >= 0.0:
            raise ValueError(f"shift_margin must be >= 0, got {shift_margin!r}")
        if not shift_span_s >= 0.0:
            raise ValueError(f"shift_span_s must be >= 0, got {shift_span_s!r}")
        if not 0.0 <= measured_weight < math.inf:
            raise ValueError(f"measured_weight must be finite and >= 0, got {measured_weight!r}")
        if not 0.0 <= false_alarm < 1.0:
            raise ValueError(f"false_alarm must be within [0, 1), got {false_alarm!r}")
        self._half_life_s = half_life_s
        self._clock = clock
        self._high_weight = high_weight
        self._prior_weight = prior_weight
        self._shift_samples = shift_samples
        self._shift_margin = shift_margin
        self._shift_span_s = shift_span_s
        self._measured_weight = measured_weight
        self._false_alarm = false_alarm
        self._entries: dict[str, _Entry] = {}
        self._tickets = 0
        # Read-only to callers; plain attributes, not properties, as routing reads them on
        # every request. ``version`` bumps on every observe and every prior change: compare to
        # detect a changed table. ``regime_version`` bumps when a run becomes suspected, stops
        # being suspected or restarts a history: a change routing should see at once, not
        # within its usual cache age.
        self.version = 0
        self.regime_version = 0
        # Told of every sample fed through ``observe`` (not ``fold``): the hook by which a
        # cluster shares this instance's samples with the others.
        self.listener: Callable[[str, float, Source], None] | None = None
        # Told, after the sample is in, when a deployment's latency regime turns slower (a run
        # above its band becomes suspected, or is adopted unsuspected): the probe loop's cue
        # to re-measure the deployments that may take its traffic (probes/loop.py).
        self.slowdown_listener: Callable[[str], None] | None = None

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
    def shift_samples(self) -> int:
        return self._shift_samples

    @property
    def shift_span_s(self) -> float:
        return self._shift_span_s

    @property
    def measured_weight(self) -> float:
        return self._measured_weight

    @property
    def false_alarm(self) -> float:
        return self._false_alarm

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
        self.version += 1

    def retain(self, keys: Iterable[str]) -> None:
        """Forget every deployment not in ``keys`` (config reload removed it)."""
        keep = set(keys)
        for key in [k for k in self._entries if k not in keep]:
            del self._entries[key]
        self.version += 1

    def observe(self, key: str, ttft_ms: float, source: Source) -> None:
        """Feed one TTFT sample. An unknown key is registered with the sample as its nominal."""
        self._observe(key, ttft_ms, source)
        if self.listener is not None:
            self.listener(key, ttft_ms, source)

    def fold(self, key: str, ttft_ms: float, source: Source) -> None:
        """Feed a sample another instance measured: as ``observe``, but the listener is not
        told (it came from there) and a key this table does not know is ignored."""
        if key in self._entries:
            self._observe(key, ttft_ms, source)

    def _observe(self, key: str, ttft_ms: float, source: Source) -> None:
        _check_ms(ttft_ms, "ttft_ms")
        now = self._clock()
        e = self._entries.get(key)
        if e is None:
            e = self._entries[key] = _Entry(ttft_ms, now)
        was_suspected = not math.isnan(e.run_mean)
        restart = self._extend_run(e, ttft_ms, now, source)
        # Routing leaves it for slowness now: a run beyond the top of its band has just become
        # suspected, or has been confirmed without ever being suspected.
        slowed = e.run_dir > 0 and not was_suspected and (restart or not math.isnan(e.run_mean))
        weight = self._decayed_weight(e, now) + 1.0
        e.mean += (ttft_ms - e.mean) / weight
        e.weight = weight
        e.updated = max(now, e.updated)
        _add_to_histogram(e, ttft_ms, now, self._half_life_s)
        if restart:
            e.shift_dir = e.run_dir
            e.slowed_from = e.run_from if e.run_dir > 0 else math.nan
            _restart(e, e.run, now, self._half_life_s)
            _end_run(e)
        if restart or was_suspected != (not math.isnan(e.run_mean)):
            self.regime_version += 1
        e.mix = (1.0 - self._high_weight) * e.mean + self._high_weight * e.p90
        e.samples += 1
        e.last_sample = now
        e.last_source = source
        if source == "live":
            e.last_live = now
        else:
            e.probe_samples += 1
        self.version += 1
        if slowed and self.slowdown_listener is not None:
            self.slowdown_listener(key)

    def _extend_run(self, e: _Entry, ttft_ms: float, now: float, source: Source) -> bool:
        """Track the run of samples beyond the band; True when it amounts to a new regime."""
        if not self._shift_samples or e.weight == 0.0:
            return False
        if e.run_dir:
            beyond = ttft_ms < e.run_bound if e.run_dir < 0 else ttft_ms > e.run_bound
            if beyond:
                e.run_strike = False
            elif not math.isnan(e.run_mean) and not e.run_strike:
                # Routing has followed this run, so the next answers come from it: one answer
                # back inside the band (a hiccup on a loaded box) does not yet clear it; two do.
                e.run_strike = True
                return False
            else:
                _end_run(e)
        if not e.run_dir:
            low = e.p10 / (1.0 + self._shift_margin)
            high = e.p90 * (1.0 + self._shift_margin)
            if low <= ttft_ms <= high:
                return False
            e.run_dir, e.run_bound = (-1, low) if ttft_ms < low else (1, high)
            e.run_start = now
            e.run_from = e.mix
            e.run_need = self._suspect_need(e, e.run_bound, e.run_dir, now)
        e.run.append((now, ttft_ms))
        if len(e.run) > _RUN_KEEP:
            del e.run[0]
        e.run_count += 1
        # A probe sent after a suspected run began is a later, separate look, which is what the
        # span asks of live answers (several may share one unlucky moment).
        later = (
            source == "probe"
            and not math.isnan(e.run_mean)
            and now - ttft_ms / 1000.0 >= e.run_start
        )
        if e.run_count >= self._shift_samples and (
            e.run_count >= _BUSY_RUN or now - e.run_start >= self._shift_span_s or later
        ):
            return True
        if e.run_need and (e.run_count >= e.run_need or self._suspects(e, now)):
            if math.isnan(e.run_mean):
                e.suspicions += 1
            values = [ms for _, ms in e.run]
            e.run_mean = math.fsum(values) / len(values)
            e.run_p90 = _quantile(values, QUANTILE)
        return False

    def _suspects(self, e: _Entry, now: float) -> bool:
        """A run still short of ``run_need`` (its need at the band's edge) is suspected all the
        same when it lies further out than that edge, judged at its own least extreme sample
        (see "How far out"), or when the live requests still waiting past the edge make up the
        difference, judged at the least extreme of both (see "Waiting")."""
        if not math.isnan(e.run_mean):
            return False
        ages: list[float] = []
        if e.run_dir > 0 and e.waiting:
            since = now - e.run_bound / 1000.0
            ages = [(now - sent) * 1000.0 for sent in e.waiting.values() if sent < since]
            if e.run_count + len(ages) >= e.run_need:
                return True
        if e.run_count > self._shift_samples:
            return False  # judged at its level only while it is as short as a suspect can be
        values = [ms for _, ms in e.run]
        level = min(values) if e.run_dir > 0 else max(values)
        if e.run_count >= self._level_need(e, level, now):
            return True
        if not ages:
            return False
        return e.run_count + len(ages) >= self._level_need(e, min(level, *ages), now)

    def _level_need(self, e: _Entry, level: float, now: float) -> int:
        """``_suspect_need`` at ``level`` instead of the band's edge, not counting the run's own
        earlier samples (already in the history) as the history's."""
        # One bucket further in, so that the level's own bucket counts as beyond it.
        edge = level / _RATIO if e.run_dir > 0 else level * _RATIO
        top = _bucket(edge)
        own = 0.0
        for t, ms in e.run[:-1]:
            b = _bucket(ms)
            if (b > top) if e.run_dir > 0 else (b < top):
                own += math.exp2(-(now - t) / self._half_life_s)
        return self._suspect_need(e, edge, e.run_dir, now, own, _LEVEL_ALARM)

    def _suspect_need(
        self,
        e: _Entry,
        bound: float,
        direction: int,
        now: float,
        own: float = 0.0,
        scale: float = 1.0,
    ) -> int:
        """How many samples in a row beyond ``bound`` make a run suspected (see "Suspicion"):
        the fewest ``k`` at which this deployment's own history (less ``own``, the weight of
        the run's samples in it) puts the chance of such a run by noise at ``false_alarm``
        (times ``scale``) or less; 0 when suspicion is off."""
        if not self._false_alarm:
            return 0
        w = self._decayed_weight(e, now)
        beyond = max(0.0, _share_beyond(e, bound, direction) * w - own)
        if direction < 0 and beyond < 1e-9 * max(w, 1.0):
            # Nothing in the history lies this far below: TTFT noise is queueing, which only
            # ever adds, so one sample this fast is followed (see "Suspicion").
            return 1
        # Half a sample's worth of doubt: a history of w samples with none beyond cannot show
        # a rate below about 1 / (2 w).
        q = (beyond + 0.5) / (w + 1.0)
        k = math.ceil(math.log(self._false_alarm * scale) / math.log(q) - 1e-9)
        return max(self._shift_samples, k, 1)

    def suspected(self, key: str) -> bool:
        """True while routing follows an unconfirmed run of ``key`` (see "Suspicion"): the
        probe loop confirms or clears it at once, even for a deployment with live traffic."""
        e = self._entries.get(key)
        return e is not None and not math.isnan(e.run_mean)

    def unsettled(self, key: str) -> bool:
        """True while the newest samples of ``key`` are a run beyond its band that has not yet
        amounted to a regime change: the probe loop confirms such a run early instead of a whole
        interval later."""
        e = self._entries.get(key)
        return e is not None and e.run_dir != 0

    def sending(self, key: str) -> int:
        """A live request to ``key`` is being sent now; returns the ticket to hand back to
        ``answered`` when it has its first token or has ended without one. While it waits it
        counts toward suspecting a slow run (see "Waiting"); a key not in the table is not
        tracked."""
        e = self._entries.get(key)
        if e is None:
            return -1
        self._tickets += 1
        e.waiting[self._tickets] = self._clock()
        return self._tickets

    def answered(self, key: str, ticket: int) -> None:
        """The request ``ticket`` stopped waiting. Call it before feeding its sample, if any."""
        e = self._entries.get(key)
        if e is not None:
            e.waiting.pop(ticket, None)

    def waiting(self, key: str) -> int:
        """How many live requests to ``key`` are waiting for their first token."""
        e = self._entries.get(key)
        return 0 if e is None else len(e.waiting)

    def slowed_from(self, key: str) -> float | None:
        """The estimate ``key``'s real samples gave before its latency turned slower, while its
        latest regime change (adopted, or suspected now) is a slowdown; else None. A deployment
        that slowed may since have recovered unseen: this is what it would win back."""
        e = self._entries.get(key)
        if e is None:
            return None
        if e.run_dir > 0 and not math.isnan(e.run_mean):
            return e.run_from
        if e.run_dir < 0 and not math.isnan(e.run_mean):
            return None  # suspected faster: it is being re-measured already
        return e.slowed_from if e.shift_dir > 0 else None

    def age_s(self, key: str) -> float | None:
        """Seconds since ``key``'s last sample; None for an unknown key or before any."""
        e = self._entries.get(key)
        if e is None or e.last_sample is None:
            return None
        return max(0.0, self._clock() - e.last_sample)

    def estimate_ms(self, key: str) -> float:
        """The routing number: mean/p90 mix drifted toward nominal. O(1); unknown key -> inf."""
        return self.estimates((key,))[key]

    def estimates(self, keys: Iterable[str]) -> dict[str, float]:
        """``estimate_ms`` of every key at one clock reading. One frame for all of them, with
        ``_blend_weight`` and ``_decayed_weight`` written out (the same arithmetic in the same
        order): the routing snapshot's rebuild reads every deployment, and this costs it about
        half the bytecodes of a call per key."""
        now = self._clock()
        entries = self._entries
        half_life = self._half_life_s
        measured = self._measured_weight
        pw = self._prior_weight
        hw = self._high_weight
        exp2, isnan = math.exp2, math.isnan
        out: dict[str, float] = {}
        for key in keys:
            e = entries.get(key)
            if e is None:
                out[key] = math.inf
                continue
            w = e.weight
            dt = now - e.updated
            if not (dt <= 0.0 or w == 0.0):
                w = w * exp2(-dt / half_life)
            if measured and e.last_sample is not None:
                w = max(w, measured * exp2(-max(0.0, now - e.last_sample) / half_life))
            total = w + pw
            if total <= 0.0:
                out[key] = e.nominal
                continue
            mix = e.mix if isnan(e.run_mean) else (1.0 - hw) * e.run_mean + hw * e.run_p90
            out[key] = (w * mix + pw * e.nominal) / total
        return out

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
        wb = self._blend_weight(e, now)
        pw = self._prior_weight
        total = wb + pw
        suspected = not math.isnan(e.run_mean)
        real_mean, real_p90 = (e.run_mean, e.run_p90) if suspected else (e.mean, e.p90)
        if total > 0.0:
            mean = (wb * real_mean + pw * e.nominal) / total
            p90 = (wb * real_p90 + pw * e.nominal) / total
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
            shifts=e.shifts,
            probe_samples=e.probe_samples,
            suspicions=e.suspicions,
            suspected=suspected,
        )

    def _blend_weight(self, e: _Entry, now: float) -> float:
        """The real samples' weight against the prior: their decayed weight, or at least
        ``measured_weight`` decayed by the age of the newest sample (see "Measured is
        measured")."""
        w = self._decayed_weight(e, now)
        if not self._measured_weight or e.last_sample is None:
            return w
        age = max(0.0, now - e.last_sample)
        return max(w, self._measured_weight * math.exp2(-age / self._half_life_s))

    def _decayed_weight(self, e: _Entry, now: float) -> float:
        dt = now - e.updated
        if dt <= 0.0 or e.weight == 0.0:
            return e.weight
        return e.weight * math.exp2(-dt / self._half_life_s)


def _check_ms(value: float, name: str) -> None:
    # A NaN would poison the running mean for good, so refuse it at the door.
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
