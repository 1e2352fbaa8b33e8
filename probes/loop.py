# Over 400 lines: the scheduler, its specification (docstring) and its settings with their reasons.
"""The probe loop: one tiny streaming request per deployment on a jittered schedule.

It keeps the latency table fed when live traffic is thin, and it is what tests a HALF_OPEN
breaker before live traffic returns. It is handed a "send one probe" callable; it owns the
schedule, its own concurrency cap, and the daily probe budget.

Scheduling, per key, evaluated on every wake-up:
- CLOSED: due ``interval_s * u`` after its last probe (``u`` drawn from ``1 ± jitter`` after
  each probe), stretched by ``live_interval_factor`` while the key has had a live sample in the
  last ``live_quiet_s`` seconds (live requests already measure it). Otherwise, while the table
  holds an unconfirmed run of samples beyond the key's band (``LatencyTable.unsettled``), it is due
  again ``shift_span_s`` (or ``interval_s * jitter``, if longer) after its last probe: one probe
  that saw a deployment recover or slow down is confirmed at once, so the change is adopted
  within about one interval instead of two, and an outlier costs one extra probe. A key whose
  run routing already follows (``LatencyTable.suspected``) is due then, and as long after its
  last live sample, even though it counts as having live traffic: that traffic has gone
  elsewhere, so nothing else will settle the run. A probe whose own answer makes routing follow
  an unconfirmed run (a deployment that recovered) is followed by one more at once. A newly
  added key is first probed within ``interval_s * jitter`` so the table is seeded soon
  after start-up.
- Re-measured at once when a deployment with live traffic turns slow (its run above the band
  is suspected or adopted, ``LatencyTable.slowdown_listener``): its traffic is about to go to
  a runner-up, ranked on rows up to an interval old, and one that recovered while nobody sent
  it traffic would otherwise be found only at its next scheduled probe. So the keys that could
  take over are probed now: those whose latest regime change was a slowdown from a level below
  the slowed key's estimate (``LatencyTable.slowed_from``), and those not measured for an
  interval whose estimate is below it. Bounded: a key is hurried at most once per interval,
  at most ``concurrency`` keys per interval across all slowdowns (many leaders falling together
  cost no more), within the concurrency cap, and only while today's spend is within its share
  of the day so far (they must not spend what the paced schedule needs); the request that fed the
  slow sample only starts the probes, it never waits for them.
- OPEN: not probed; due when its breaker's open period ends.
- HALF_OPEN: probed at once, then every ``half_open_gap_s`` until the breaker decides.
The loop sleeps until the earliest due time, never longer than ``max_sleep_s`` so that
``set_keys`` and breaker changes are picked up promptly, and while a probe is in flight never
longer than the shortest gap after which it could be due again.

Spend: each probe sent adds ``cost_per_probe[key]`` (0 when absent) to today's total; the day
is the UTC calendar day of ``wall_clock``. A probe that would take the total past
``max_daily_spend_usd`` is skipped (and counted) until the next UTC midnight. The cap is a
backstop: ``paced_interval_s`` picks an interval whose full day of probing fits under it, so
probing slows down instead of stopping at mid-morning.

A probe that times out feeds ``timeout_s`` to the table as a (censored) sample, as a live
request that misses its deadline does: a deployment that stops answering must not keep its
old, fast estimate while its breaker counts up.
"""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from .breaker import BreakerBoard, State
from .deadline import Deadline
from .latency import LatencyTable

log = logging.getLogger(__name__)

SendProbe = Callable[[str], Awaitable[float]]
Sleep = Callable[[float], Awaitable[None]]

_DAY_S = 86_400.0
# How often a probe's timeout is checked (and a pause of the process noticed).
_TIMEOUT_CHECK_S = 0.25
# A floor on each sleep so float rounding at a due time can never spin the loop.
_MIN_SLEEP_S = 0.001


class ProbeFailed(Exception):
    """A probe got a definite failure; ``kind`` is one of the provider failure classes.

    Named as the serving layer's contract has it (not ``...Error``): it is a verdict the send
    callable reports, not a fault in the loop."""

    def __init__(self, kind: str, retry_after_s: float | None = None, message: str = "") -> None:
        super().__init__(message or kind)
        self.kind = kind
        self.retry_after_s = retry_after_s


def paced_interval_s(
    cost_per_round_usd: float, interval_s: float, max_daily_spend_usd: float, headroom: float = 0.9
) -> float:
    """``interval_s``, or longer if probing every deployment that often all day would spend more
    than ``headroom`` of the daily cap (the rest is left for half-open probing, which does not
    wait for the interval). A cap of 0 is left to the per-probe check: nothing is spent."""
    if not (interval_s > 0 and cost_per_round_usd >= 0 and max_daily_spend_usd >= 0):
        raise ValueError("interval_s must be > 0; cost and cap must be >= 0")
    if cost_per_round_usd == 0 or max_daily_spend_usd == 0:
        return interval_s
    rounds_per_day = headroom * max_daily_spend_usd / cost_per_round_usd
    return max(interval_s, _DAY_S / rounds_per_day)


class ProbeSettingsError(ValueError):
    """Invalid ProbeSettings; ``problems`` holds (field, what it must be) for each one, so a
    config loader can name its own keys."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        super().__init__("invalid ProbeSettings: " + "; ".join(f"{k} {m}" for k, m in problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class ProbeSettings:
    """The measuring layer's settings: the ``[probes]`` config table is this dataclass, filled
    and validated here. The last three are the latency table's (``LatencyTable``), set
    beside the probes that feed it; the loop itself does not read them."""

    enabled: bool = True
    # 30 s keeps a 300 s half-life table fed with ~14 samples' weight per deployment even with
    # no traffic, and a slowdown shows within two probes. At max_tokens=1 a probe costs
    # ~$1e-6-2e-4; the whole bundled catalog on every provider is ~$4/day at 30 s, so the app
    # stretches the interval (paced_interval_s) to stay within max_daily_spend_usd.
    interval_s: float = 30.0
    # Spreads probes so 60+ deployments are not hit in the same instant every round.
    jitter: float = 0.2
    # Probes run beside live traffic and never share its queues; 4 at a time bounds a
    # probe burst after a restart to a handful of connections per provider.
    concurrency: int = 4
    # A key with a live sample this recent is probed every interval_s * live_interval_factor:
    # its own traffic already measures it. One interval: two requests a minute count, and a
    # deployment that routing has just left (it got slow) is back on the normal schedule
    # within 30 s, so its recovery is seen.
    live_quiet_s: float = 30.0
    live_interval_factor: float = 4.0
    # $30/month at most, whatever the catalog; see interval_s for how it is kept.
    max_daily_spend_usd: float = 1.0
    # A probe with no first token by then is a failure (and a censored 10 s TTFT sample).
    timeout_s: float = 10.0
    # A HALF_OPEN breaker's deployment is probed this often until the breaker decides.
    half_open_gap_s: float = 1.0
    # The longest the loop sleeps, so new keys and breaker changes are seen this promptly.
    max_sleep_s: float = 1.0
    # Latency shifts by the hour; 5 minutes forgets a bad spell quickly but not from one probe.
    # A slowdown outranks a 2x slower rival after 1-2 samples (the p90 sees it); a deployment
    # that got faster is caught by shift_samples below, or else after ~3.3 half-lives.
    half_life_s: float = 300.0
    # prefer=fast ranks by (1 - p90_weight) * mean + p90_weight * p90 of the decayed TTFT, so a
    # deployment that is fast on average but slow on over one request in ten does not win.
    p90_weight: float = 0.5
    # This many samples in a row 50 % beyond a deployment's p10-p90 band, over at least half a
    # probe interval, mean it moved: its history is dropped so a deployment that got faster
    # wins within two probes (not after its old slow tail decays, ~3.3 half-lives) and a busy
    # one that got slower loses within ten requests or half an interval (not once a tenth of
    # its live weight is slow). Noise seldom does this; see probes/latency.py. 0 turns it off.
    shift_samples: int = 2

    def __post_init__(self) -> None:
        rules = (
            ("interval_s", self.interval_s > 0, "must be > 0"),
            ("jitter", 0 <= self.jitter < 1, "must be within [0, 1)"),
            ("concurrency", self.concurrency >= 1, "must be at least 1"),
            ("live_quiet_s", self.live_quiet_s >= 0, "must not be negative"),
            ("live_interval_factor", self.live_interval_factor >= 1, "must be at least 1"),
            ("max_daily_spend_usd", self.max_daily_spend_usd >= 0, "must not be negative"),
            ("timeout_s", self.timeout_s > 0, "must be > 0"),
            ("half_open_gap_s", self.half_open_gap_s > 0, "must be > 0"),
            ("max_sleep_s", self.max_sleep_s > 0, "must be > 0"),
            ("half_life_s", self.half_life_s > 0, "must be > 0"),
            ("p90_weight", 0 <= self.p90_weight <= 1, "must be within [0, 1]"),
            ("shift_samples", self.shift_samples >= 0, "must not be negative"),
        )
        problems = [(key, limit) for key, ok, limit in rules if not ok]
        if problems:
            raise ProbeSettingsError(problems)


@dataclass(frozen=True, slots=True)
class ProbeStats:
    sent: int
    failed: int
    spend_today_usd: float
    spend_cap_usd: float
    skipped_for_budget: int
    last_run: Mapping[str, float]  # key -> wall-clock time (epoch s) the last probe was sent
    in_flight: int = 0  # launched and unfinished, including probes queued on the cap
    hurried: int = 0  # probes launched out of turn because a key with traffic turned slow


class _Schedule:
    __slots__ = ("first_due", "hurried", "in_flight", "last_probe", "stretch")

    def __init__(self, first_due: float, stretch: float) -> None:
        self.first_due = first_due
        self.last_probe: float | None = None  # clock time the last probe finished
        self.stretch = stretch  # this round's 1 ± jitter factor
        self.in_flight = False
        self.hurried: float | None = None  # clock time it was last probed out of turn


class ProbeLoop:
    """Probes every key given in ``cost_per_probe`` (and later ``set_keys``)."""

    def __init__(
        self,
        settings: ProbeSettings,
        send: SendProbe,
        table: LatencyTable,
        board: BreakerBoard,
        *,
        cost_per_probe: Mapping[str, float],
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self._settings = settings
        self._send = send
        self._table = table
        self._board = board
        self._clock = clock
        self._wall_clock = wall_clock
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        # Private to the loop: probes never queue behind, or hold up, live requests.
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._keys: dict[str, _Schedule] = {}
        self._costs: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._sent = 0
        self._failed = 0
        self._skipped = 0
        self._spend = 0.0
        self._day = self._utc_day()
        self._cap_logged_day: int | None = None
        self._last_run: dict[str, float] = {}
        self._hurried = 0
        # Out-of-turn probes launched in the current window of one interval (see _hurry).
        self._hurry_window = -math.inf
        self._hurry_count = 0
        # Cluster hook (proxy/cluster/): a key is probed here only while ``gate(key)`` says
        # so, i.e. while this instance holds the key's probe lease.
        self.gate: Callable[[str], bool] | None = None
        self.set_keys(cost_per_probe.keys(), cost_per_probe)

    @property
    def settings(self) -> ProbeSettings:
        return self._settings

    def set_keys(self, keys: Iterable[str], cost_per_probe: Mapping[str, float]) -> None:
        """Replace the probed deployments (config reload). Known keys keep their schedule."""
        wanted = list(dict.fromkeys(keys))
        now = self._clock()
        spread = self._settings.interval_s * self._settings.jitter
        fresh = {}
        for key in wanted:
            sched = self._keys.get(key)
            if sched is None:
                sched = _Schedule(now + self._rng.uniform(0.0, spread), self._draw_stretch())
            fresh[key] = sched
        self._keys = fresh
        self._costs = {k: float(cost_per_probe.get(k, 0.0)) for k in wanted}
        for key, cost in self._costs.items():
            if not (0.0 <= cost < math.inf):
                raise ValueError(f"cost_per_probe[{key!r}] must be finite and >= 0, got {cost!r}")

    def adopt(self, previous: ProbeLoop) -> None:
        """Carry on from ``previous`` (a config reload built this loop to replace it): its
        counters, today's spend and, for keys both probe, when each was last probed. Without
        this every reload would reset the daily cap and re-probe every deployment at once.
        ``previous`` must be stopped first: its probes in flight are not carried over."""
        self._sent, self._failed, self._skipped, self._hurried = (
            previous._sent,
            previous._failed,
            previous._skipped,
            previous._hurried,
        )
        if previous._day == self._day:
            self._spend = previous._spend
            self._cap_logged_day = previous._cap_logged_day
        self._last_run.update(previous._last_run)
        for key, sched in self._keys.items():
            old = previous._keys.get(key)
            if old is not None:
                sched.first_due, sched.last_probe = old.first_due, old.last_probe
                sched.stretch = old.stretch

    async def run(self) -> None:
        """Probe forever. Returns at once when disabled; otherwise ends only by cancellation,
        which also cancels the probes in flight."""
        if not self._settings.enabled:
            return
        # Only a running loop answers slowdowns; the table outlives it (config reloads).
        self._table.slowdown_listener = self._hurry
        try:
            while True:
                try:
                    delay = self._tick()
                except Exception:
                    # A bug in one round must not end probing (and with it, breaker recovery).
                    log.exception("probe loop round failed")
                    delay = self._settings.max_sleep_s
                await self._sleep(delay)
        finally:
            if self._table.slowdown_listener == self._hurry:
                self._table.slowdown_listener = None
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    async def probe_once(self, key: str) -> None:
        """Send one probe to ``key`` (within the concurrency cap and the budget) and feed the
        result to the table (``source="probe"``) and the breaker board (``probe=True``)."""
        try:
            async with self._semaphore:
                for _ in range(2):
                    if not self._charge(key):
                        return
                    self._sent += 1
                    self._last_run[key] = self._wall_clock()
                    await self._measure(key)
                    # Routing follows this answer before it is confirmed: confirm it now.
                    if not self._table.suspected(key):
                        break
        finally:
            sched = self._keys.get(key)
            if sched is not None:
                sched.last_probe = self._clock()
                sched.stretch = self._draw_stretch()

    def stats(self) -> ProbeStats:
        self._roll_day()
        return ProbeStats(
            sent=self._sent,
            failed=self._failed,
            spend_today_usd=self._spend,
            spend_cap_usd=self._settings.max_daily_spend_usd,
            skipped_for_budget=self._skipped,
            last_run=MappingProxyType(dict(self._last_run)),
            in_flight=sum(1 for s in self._keys.values() if s.in_flight),
            hurried=self._hurried,
        )

    def _hurry(self, slowed: str) -> None:
        """``slowed`` has just turned slow (the table's slowdown listener): probe now the keys
        that could take its traffic, if it carries any (see the module docstring)."""
        try:
            self._hurry_rivals(slowed)
        except Exception:
            # Called from the table on a request's path: a bug here must not fail the request.
            log.exception("hurrying probes after %s slowed failed", slowed)

    def _hurry_rivals(self, slowed: str) -> None:
        s = self._settings
        now = self._clock()
        live = self._table.last_live(slowed)
        if live is None or now - live > s.live_quiet_s:
            return  # probes alone saw it slow: no traffic is about to move
        if not self._on_pace():
            return  # the scheduled probes need what is left of today's budget
        if now - self._hurry_window >= s.interval_s:
            self._hurry_window, self._hurry_count = now, 0
        room = s.concurrency - self._hurry_count
        if room <= 0:
            return
        bar = self._table.estimate_ms(slowed)
        table, gate = self._table, self.gate
        rivals: list[tuple[float, str]] = []
        for key, sched in self._keys.items():
            if key == slowed or sched.in_flight or sched.last_probe is None:
                continue  # being measured, or not yet seeded (it is due soon anyway)
            if table.suspected(key):
                continue  # its confirming probe is due within the confirming gap anyway
            if sched.hurried is not None and now - sched.hurried < s.interval_s:
                continue
            if gate is not None and not gate(key):
                continue
            if self._board.state(key) is not State.CLOSED:
                continue  # an open breaker refuses traffic; a half-open one is probed already
            level = table.slowed_from(key)
            if level is None:
                age = table.age_s(key)
                if age is not None and age <= s.interval_s:
                    continue  # measured lately: its row is as good as a probe now
                level = table.estimate_ms(key)
            if level < bar:
                rivals.append((level, key))
        # The most promising first: what each would win back, or its estimate if stale.
        for _, key in sorted(rivals)[:room]:
            self._keys[key].hurried = now
            self._hurry_count += 1
            self._hurried += 1
            self._launch(key)

    async def _measure(self, key: str) -> None:
        # A probe sent before an outage can answer after its first failures: like a live
        # request's, its success must not reset a streak that began while it was in flight.
        mark = self._board.failure_mark(key)
        timeout_s = self._settings.timeout_s
        # A Deadline, not asyncio.timeout: time the process was stopped does not count.
        at = asyncio.get_running_loop().time() + timeout_s
        try:
            async with Deadline(at, min(timeout_s, _TIMEOUT_CHECK_S)):
                ttft_ms = await self._send(key)
        except TimeoutError:
            self._table.observe(key, timeout_s * 1000.0, "probe")
            self._fail(key, "timeout", None)
        except ProbeFailed as exc:
            if exc.kind == "timeout":
                self._table.observe(key, self._settings.timeout_s * 1000.0, "probe")
            self._fail(key, exc.kind, exc.retry_after_s)
        except OSError:
            self._fail(key, "connect", None)
        except Exception as exc:
            # str() only: reprs of some client errors carry request headers (credentials).
            log.warning("probe to %s raised %s: %s", key, type(exc).__name__, exc)
            self._fail(key, "server", None)
        else:
            if not (0.0 <= ttft_ms < math.inf):
                self._fail(key, "protocol", None)
                return
            self._table.observe(key, ttft_ms, "probe")
            self._board.record_success(key, ttft_ms, probe=True, since=mark)

    def _fail(self, key: str, kind: str, retry_after_s: float | None) -> None:
        self._failed += 1
        self._board.record_failure(key, kind, retry_after_s=retry_after_s, probe=True)

    def _tick(self) -> float:
        """Launch every due probe; return how long to sleep."""
        now = self._clock()
        s = self._settings
        earliest = now + s.max_sleep_s
        due: list[tuple[float, str]] = []
        busy = False
        gate = self.gate
        for key, sched in self._keys.items():
            if sched.in_flight:
                busy = True
                continue
            if gate is not None and not gate(key):
                continue  # another instance probes it; the gate is re-read every wake-up
            at = self._due(key, sched, now)
            if at <= now:
                due.append((at, key))
            else:
                earliest = min(earliest, at)
        for _, key in sorted(due):
            self._launch(key)
        if busy or due:
            # A probe in flight is next due no sooner than this after it ends (the confirming
            # probe of a run beyond the band soonest), so waking this often never misses it,
            # whereas sleeping the full max_sleep_s would stretch short intervals to it.
            soonest = min(s.interval_s * (1 - s.jitter), s.half_open_gap_s)
            if self._table.shift_samples:
                soonest = min(soonest, self._confirm_gap())
            earliest = min(earliest, now + soonest)
        return max(_MIN_SLEEP_S, earliest - now)

    def _due(self, key: str, sched: _Schedule, now: float) -> float:
        state = self._board.state(key)
        if state is State.OPEN:
            until = self._board.open_until(key)
            return now if until is None else until
        last = sched.last_probe
        if state is State.HALF_OPEN:
            return now if last is None else last + self._settings.half_open_gap_s
        if last is None:
            return sched.first_due
        s = self._settings
        interval = s.interval_s * sched.stretch
        confirm = last + self._confirm_gap()
        live = self._table.last_live(key)
        if self._table.suspected(key):
            # Routing already follows the run, so live traffic has left this key: once it has
            # been quiet for the confirming gap too, only a probe will confirm or clear the run.
            # (Traffic pinned to it keeps answering and settles the run by itself.)
            return confirm if live is None else max(confirm, live + self._confirm_gap())
        if live is not None and now - live <= s.live_quiet_s:
            # Its own traffic measures it, and confirms a run beyond its band too.
            return last + interval * s.live_interval_factor
        if self._table.unsettled(key):
            return confirm
        return last + interval

    def _confirm_gap(self) -> float:
        """After a probe, how soon the next one confirms or clears a run beyond the band."""
        s = self._settings
        return max(self._table.shift_span_s, s.interval_s * s.jitter, _MIN_SLEEP_S)

    def _launch(self, key: str) -> None:
        sched = self._keys[key]
        sched.in_flight = True

        async def probe() -> None:
            try:
                await self.probe_once(key)
            except Exception:
                log.exception("probe of %s failed inside the loop", key)
            finally:
                sched.in_flight = False

        task = asyncio.create_task(probe(), name=f"probe:{key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _charge(self, key: str) -> bool:
        """Book the probe's cost against today's budget; False (and counted) if it won't fit."""
        self._roll_day()
        cost = self._costs.get(key, 0.0)
        cap = self._settings.max_daily_spend_usd
        # The epsilon absorbs float sums like 0.1 + 0.2 so a cap of exact multiples is reachable.
        if self._spend + cost > cap + 1e-12:
            self._skipped += 1
            if self._cap_logged_day != self._day:
                self._cap_logged_day = self._day
                log.warning(
                    "probe budget of $%.4f for today (UTC) is spent; probing pauses until midnight",
                    cap,
                )
            return False
        self._spend += cost
        return True

    def _on_pace(self) -> bool:
        """Today's spend is within its share of the day so far. Out-of-turn probes come on
        top of the paced schedule (``paced_interval_s``): spent ahead of the day, they would
        stop every probe at the cap before midnight."""
        self._roll_day()
        elapsed = self._wall_clock() / _DAY_S - self._day
        return self._spend <= self._settings.max_daily_spend_usd * elapsed + 1e-12

    def _roll_day(self) -> None:
        day = self._utc_day()
        if day != self._day:
            self._day = day
            self._spend = 0.0

    def _utc_day(self) -> int:
        # Epoch seconds are UTC and POSIX days are exactly 86 400 s, so this flips at UTC midnight.
        return math.floor(self._wall_clock() / _DAY_S)

    def _draw_stretch(self) -> float:
        j = self._settings.jitter
        return 1.0 + self._rng.uniform(-j, j) if j else 1.0
