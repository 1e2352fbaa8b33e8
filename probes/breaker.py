# Over 400 lines: its docstring (48 lines) is the state machine's specification, kept beside
# it, and CLOSED's results have a one-frame fast path beside the general one (closed_success).
"""Circuit breakers, one per deployment: CLOSED -> OPEN -> HALF_OPEN -> CLOSED.

The clock and the jitter source are injected, so every transition is testable without sleeping.

Semantics
---------
*CLOSED -> OPEN* when, counting live and probe results alike, any of these holds:
``consecutive_failures`` health failures in a row; or, once the sliding ``window_s`` holds at
least ``min_requests`` results, the failure share reaches ``failure_rate``; or the share of
*slow* results (successes whose TTFT exceeds the key's threshold) reaches ``slow_rate``.

*OPEN* lasts ``min(max_open_s, base_open_s * 2**(openings - 1))``, scaled by a uniform factor in
``[1 - jitter, 1 + jitter]`` (applied after the cap, so breakers pinned at the cap still
spread out). ``openings`` counts health openings since the last full close and resets when the
breaker closes. Results that arrive while OPEN are ignored (they come from requests that
started earlier), except a rate limit, which can only lengthen the wait.

*Rate limits.* ``kind="rate_limited"`` with ``retry_after_s`` opens at once for exactly that
long (no jitter, capped by ``max_retry_after_s`` so a bogus header cannot park a deployment for
a day) and is not a health failure: it neither grows the backoff nor enters the window. Without
a Retry-After it is an ordinary failure.

*Client faults* (``kind="client"``: the request's own 4xx) never count at all.

*Stale successes.* A success, live or probe, can be given ``since``, the ``failure_mark`` read
when its request was sent. It resets the failure streak only if no health failure was recorded
since: under concurrency, answers to requests sent before an outage keep arriving after it
began, and if they reset the streak a hard-down deployment can take hundreds of requests to
open. It still counts as a success in the window. A stale success that arrives while
HALF_OPEN is ignored: it neither closes the breaker nor frees the live trial's slot.

*Failures after a success.* A stream is judged healthy at its first token (so streams that
were already flowing when an outage began cannot reset the streak). If it breaks later,
``after_success=True`` turns a success in the window (the newest: only the counts matter)
into a failure instead of adding a second result: a broken answer is one failed request, so
a deployment that breaks every stream shows a failure share of 1, not 0.5. It still extends
the streak.

*HALF_OPEN* is entered lazily, by the first call that looks at the key once the OPEN period
has elapsed. Probes test it; live traffic gets one *trial* slot at a time.
The slot is taken by ``allow`` and released by the next live (``probe=False``) ``record_*`` for
the key, by ``release``, or after ``trial_timeout_s`` so a lost request cannot wedge it.
``half_open_successes`` consecutive good results from probes or the trial close the breaker. A
health failure from anyone reopens it with a grown backoff, and so does a slow probe or trial
result: otherwise a deployment that answers, but slowly, would sit half-open and be probed
back to back.

``badness`` orders deployments for the "least bad" choice when every candidate is open:
seconds until the breaker would let traffic through plus the failure share in the window.
"""

from __future__ import annotations

import enum
import random
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from .kinds import CLIENT_FAULTS, RATE_LIMITED

# 2**60 times any sane base_open_s is past every cap; the bound only stops float overflow.
_MAX_EXPONENT = 60


# Transitions remembered per breaker: enough to show an hour of a flapping deployment.
CHANGES_KEPT = 32


class State(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    consecutive_failures: int = 5
    window_s: float = 30.0
    failure_rate: float = 0.5
    min_requests: int = 10
    slow_ttft_ms: float | None = None  # default threshold; per key via BreakerBoard.set_threshold
    slow_rate: float = 0.5
    base_open_s: float = 5.0
    max_open_s: float = 120.0
    jitter: float = 0.2
    half_open_successes: int = 2
    max_retry_after_s: float = 600.0
    trial_timeout_s: float = 60.0
    # Bounds the window's memory at high request rates; the rates then cover the newest events.
    max_events: int = 1000

    def __post_init__(self) -> None:
        problems = []
        if self.consecutive_failures < 1:
            problems.append("consecutive_failures must be >= 1")
        if not self.window_s > 0:
            problems.append("window_s must be > 0")
        if not 0 < self.failure_rate <= 1:
            problems.append("failure_rate must be within (0, 1]")
        if self.min_requests < 1:
            problems.append("min_requests must be >= 1")
        if self.slow_ttft_ms is not None and not self.slow_ttft_ms > 0:
            problems.append("slow_ttft_ms must be > 0 or None")
        if not 0 < self.slow_rate <= 1:
            problems.append("slow_rate must be within (0, 1]")
        if not 0 < self.base_open_s <= self.max_open_s:
            problems.append("need 0 < base_open_s <= max_open_s")
        if not 0 <= self.jitter < 1:
            problems.append("jitter must be within [0, 1)")
        if self.half_open_successes < 1:
            problems.append("half_open_successes must be >= 1")
        if not self.max_retry_after_s > 0:
            problems.append("max_retry_after_s must be > 0")
        if not self.trial_timeout_s > 0:
            problems.append("trial_timeout_s must be > 0")
        if self.max_events < self.min_requests:
            problems.append("max_events must be >= min_requests")
        if problems:
            raise ValueError("invalid BreakerPolicy: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class BreakerRow:
    key: str
    state: str
    consecutive_failures: int
    failure_rate: float  # share of failures among results in the window
    slow_rate: float  # share of slow successes among results in the window
    opened_count: int  # openings ever, rate limits included
    open_remaining_s: float  # 0.0 unless OPEN
    retry_after_remaining_s: float  # 0.0 unless OPEN because of a Retry-After
    requests_in_window: int = 0
    backoff_openings: int = 0  # health openings since the last full close
    slow_ttft_ms: float | None = None


class Breaker:
    """One deployment's state machine. Times are the board's clock readings."""

    __slots__ = (
        "_failures",
        "_slows",
        "changes",
        "consecutive_failures",
        "events",
        "failure_seq",
        "half_open_ok",
        "open_until",
        "opened_count",
        "openings",
        "policy",
        "retry_until",
        "rng",
        "slow_ttft_ms",
        "state",
        "transitions",
        "trial_since",
    )

    def __init__(
        self, policy: BreakerPolicy, rng: random.Random, slow_ttft_ms: float | None = None
    ) -> None:
        self.policy = policy
        self.rng = rng
        self.slow_ttft_ms = slow_ttft_ms
        self.state = State.CLOSED
        self.consecutive_failures = 0
        self.failure_seq = 0  # health failures ever recorded; see "Stale successes"
        self.events: deque[tuple[float, bool, bool]] = deque()  # (time, ok, slow)
        self._failures = 0  # failures in ``events``
        self._slows = 0  # slow successes in ``events``
        self.openings = 0
        self.opened_count = 0
        self.open_until = 0.0
        self.retry_until: float | None = None
        self.half_open_ok = 0
        self.trial_since: float | None = None
        self.transitions = 0
        # The newest transitions as (clock time, state entered), for the status page.
        self.changes: deque[tuple[float, str]] = deque(maxlen=CHANGES_KEPT)

    def poll(self, now: float) -> None:
        """OPEN -> HALF_OPEN once the open period has elapsed."""
        if self.state is State.OPEN and now >= self.open_until:
            self._enter(State.HALF_OPEN, now)
            self.half_open_ok = 0
            self.trial_since = None
            self.retry_until = None

    def allow(self, now: float) -> bool:
        self.poll(now)
        if self.state is State.CLOSED:
            return True
        if self.state is State.OPEN:
            return False
        since = self.trial_since
        if since is None or now - since >= self.policy.trial_timeout_s:
            self.trial_since = now
            return True
        return False

    def release(self) -> None:
        self.trial_since = None

    def adopt_open(self, now: float, seconds: float) -> None:
        """Another instance opened this deployment for ``seconds``: open here as long (or
        keep a longer wait already running). Counts as an opening, so a reopening after the
        next half-open test grows the backoff here as it would there."""
        self.poll(now)
        until = now + seconds
        if self.state is State.OPEN:
            self.open_until = max(self.open_until, until)
            return
        self.openings += 1
        self.opened_count += 1
        self._enter(State.OPEN, now)
        self.open_until = until
        self.retry_until = None
        self.half_open_ok = 0
        self.trial_since = None

    def adopt_close(self, now: float) -> None:
        """Another instance's half-open test closed this deployment."""
        if self.state is not State.CLOSED:
            self._close(now)

    def on_success(
        self, now: float, ttft_ms: float | None, probe: bool, since: int | None = None
    ) -> None:
        self.poll(now)
        if self.state is State.CLOSED:
            self.closed_success(now, ttft_ms, since)
            return
        if self.state is State.HALF_OPEN and since is not None and since != self.failure_seq:
            # Sent before the failures that opened the breaker: it says nothing of the
            # deployment now, and it is not the trial's answer (the trial keeps its slot).
            return
        holds_trial = not probe and self.trial_since is not None
        if not probe:
            self.trial_since = None
        threshold = self.slow_ttft_ms
        slow = ttft_ms is not None and threshold is not None and ttft_ms > threshold
        if self.state is State.HALF_OPEN and (probe or holds_trial):
            if slow:
                self._open(now)
                return
            self.half_open_ok += 1
            if self.half_open_ok >= self.policy.half_open_successes:
                self._close(now)

    def closed_success(self, now: float, ttft_ms: float | None, since: int | None) -> bool:
        """``on_success`` for a CLOSED breaker, the common case, in one frame: nothing to poll
        (only OPEN moves on the clock), no trial slot to free (CLOSED never holds one). True
        when the result opened the breaker.

        The window is pruned only when something reads it: a window with no failure and no
        slow result in it, expired or not, cannot trip on its rates, and every reader
        (``rates``, ``_append``, ``_flip_success``) prunes first, so the same events count.
        A healthy success costs ~45 bytecodes instead of ~170 (``poll``, ``_append``,
        ``prune``, ``_maybe_trip``)."""
        threshold = self.slow_ttft_ms
        slow = ttft_ms is not None and threshold is not None and ttft_ms > threshold
        if since is not None and since != self.failure_seq:
            # Stale (see the module docstring): the streak stands; the general path judges it.
            self._append(now, ok=True, slow=slow)
            self._maybe_trip(now)
            return self.state is State.OPEN
        self.consecutive_failures = 0
        events = self.events
        if len(events) >= self.policy.max_events:
            self.prune(now)
            if len(events) >= self.policy.max_events:
                self._drop_oldest()
        events.append((now, True, slow))
        if slow:
            self._slows += 1
        if self._failures or self._slows:
            self.prune(now)
            p = self.policy
            n = len(events)
            if n >= p.min_requests and (
                self._failures >= p.failure_rate * n or self._slows >= p.slow_rate * n
            ):
                self._open(now)
                return True
        return False

    def on_failure(
        self,
        now: float,
        kind: str,
        retry_after_s: float | None,
        probe: bool,
        after_success: bool = False,
    ) -> None:
        self.poll(now)
        if not probe:
            self.trial_since = None
        if kind in CLIENT_FAULTS:
            return
        if kind == RATE_LIMITED and retry_after_s is not None and retry_after_s > 0:
            self._rate_limit(now, min(retry_after_s, self.policy.max_retry_after_s))
            return
        self.failure_seq += 1
        if self.state is State.CLOSED:
            self.consecutive_failures += 1
            if not (after_success and self._flip_success(now)):
                self._append(now, ok=False, slow=False)
            self._maybe_trip(now)
        elif self.state is State.HALF_OPEN:
            self._open(now)

    def prune(self, now: float) -> None:
        events = self.events
        horizon = now - self.policy.window_s
        while events and events[0][0] <= horizon:
            self._drop_oldest()

    def rates(self, now: float) -> tuple[int, float, float]:
        """(results in window, failure share, slow share)."""
        self.prune(now)
        n = len(self.events)
        if n == 0:
            return 0, 0.0, 0.0
        return n, self._failures / n, self._slows / n

    def open_remaining(self, now: float) -> float:
        self.poll(now)
        return max(0.0, self.open_until - now) if self.state is State.OPEN else 0.0

    def _append(self, now: float, *, ok: bool, slow: bool) -> None:
        self.prune(now)
        if len(self.events) >= self.policy.max_events:
            self._drop_oldest()
        self.events.append((now, ok, slow))
        if not ok:
            self._failures += 1
        if slow:
            self._slows += 1

    def _flip_success(self, now: float) -> bool:
        """Turn the newest success in the window into a failure; False if there is none."""
        self.prune(now)
        events = self.events
        for i in range(len(events) - 1, -1, -1):
            at, ok, slow = events[i]
            if ok:
                events[i] = (at, False, False)
                self._failures += 1
                if slow:
                    self._slows -= 1
                return True
        return False

    def _drop_oldest(self) -> None:
        _, ok, slow = self.events.popleft()
        if not ok:
            self._failures -= 1
        if slow:
            self._slows -= 1

    def _maybe_trip(self, now: float) -> None:
        p = self.policy
        if self.consecutive_failures >= p.consecutive_failures:
            self._open(now)
            return
        n = len(self.events)
        if n >= p.min_requests and (
            self._failures >= p.failure_rate * n or self._slows >= p.slow_rate * n
        ):
            self._open(now)

    def _open(self, now: float) -> None:
        p = self.policy
        self.openings += 1
        self.opened_count += 1
        base = min(p.max_open_s, p.base_open_s * 2.0 ** min(self.openings - 1, _MAX_EXPONENT))
        factor = 1.0 + p.jitter * self.rng.uniform(-1.0, 1.0) if p.jitter else 1.0
        self._enter(State.OPEN, now)
        self.open_until = now + base * factor
        self.retry_until = None
        self.half_open_ok = 0
        self.trial_since = None

    def _rate_limit(self, now: float, seconds: float) -> None:
        until = now + seconds
        if self.state is State.OPEN:
            # Already waiting: a Retry-After can only lengthen the wait, never shorten it.
            if until > self.open_until:
                self.open_until = until
                self.retry_until = until
            return
        self.opened_count += 1
        self._enter(State.OPEN, now)
        self.open_until = until
        self.retry_until = until
        self.half_open_ok = 0
        self.trial_since = None

    def _enter(self, state: State, now: float) -> None:
        # HALF_OPEN -> OPEN re-entry counts too: the board's version must move on every change.
        self.state = state
        self.transitions += 1
        self.changes.append((now, state.value))

    def _close(self, now: float) -> None:
        self._enter(State.CLOSED, now)
        self.openings = 0
        self.consecutive_failures = 0
        # The window that tripped the breaker must not trip it again the moment it closes.
        self.events.clear()
        self._failures = 0
        self._slows = 0
        self.half_open_ok = 0
        self.trial_since = None
        self.retry_until = None


class BreakerBoard:
    """Every deployment's breaker. Keys are created lazily by ``allow``, ``record_*`` and
    ``set_threshold``; read-only calls on an unknown key answer as if it were closed."""

    __slots__ = ("_breakers", "_clock", "_policy", "_rng", "listener", "trial_gate", "version")

    def __init__(
        self,
        policy: BreakerPolicy,
        *,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._breakers: dict[str, Breaker] = {}
        # Bumps on every state transition: compare to detect a changed board. Read-only to
        # callers; a plain attribute, not a property, as routing reads it on every request.
        self.version = 0
        # Cluster hooks (proxy/cluster/). ``listener`` hears (key, state, open seconds) when a
        # result recorded here opens or closes a breaker, not when another instance's
        # decision is adopted; ``trial_gate(key)`` must also say yes before a HALF_OPEN
        # breaker hands out its live trial slot (one instance at a time cluster-wide).
        self.listener: Callable[[str, State, float], None] | None = None
        self.trial_gate: Callable[[str], bool] | None = None

    @property
    def policy(self) -> BreakerPolicy:
        return self._policy

    def set_threshold(self, key: str, slow_ttft_ms: float | None) -> None:
        """Per-key slow-TTFT threshold; None falls back to the policy's default."""
        if slow_ttft_ms is not None and not slow_ttft_ms > 0:
            raise ValueError(f"slow_ttft_ms must be > 0 or None, got {slow_ttft_ms!r}")
        b = self._get(key)
        b.slow_ttft_ms = slow_ttft_ms if slow_ttft_ms is not None else self._policy.slow_ttft_ms

    def retain(self, keys: Iterable[str]) -> None:
        """Forget every deployment not in ``keys`` (config reload removed it)."""
        keep = set(keys)
        for key in [k for k in self._breakers if k not in keep]:
            del self._breakers[key]

    def allow(self, key: str) -> bool:
        """May a live request go? HALF_OPEN admits one trial at a time."""
        b = self._breakers.get(key)
        if b is not None and b.state is State.CLOSED:
            return True  # CLOSED admits all and does not move on the clock: 44 -> 9 bytecodes
        b = self._get(key)
        before = b.transitions
        now = self._clock()
        b.poll(now)
        gate = self.trial_gate
        if b.state is State.HALF_OPEN and gate is not None and not gate(key):
            self._bump(before, b)
            return False
        ok = b.allow(now)
        self._bump(before, b)
        return ok

    def adopt(self, key: str, state: State, open_s: float = 0.0) -> None:
        """Apply another instance's transition (OPEN for ``open_s`` seconds, or CLOSED);
        the listener is not told. Other states are ignored."""
        b = self._get(key)
        before = b.transitions
        if state is State.OPEN and open_s > 0:
            b.adopt_open(self._clock(), open_s)
        elif state is State.CLOSED:
            b.adopt_close(self._clock())
        self._bump(before, b)

    def release(self, key: str) -> None:
        """Give back a HALF_OPEN trial slot whose request ended without an upstream verdict
        (the client went away first)."""
        b = self._breakers.get(key)
        if b is not None:
            b.release()

    def half_open(self, key: str) -> bool:
        """True right after ``allow`` admitted a request as the half-open trial."""
        b = self._breakers.get(key)
        if b is None:
            return False
        if b.state is State.OPEN:
            self._poll(b)
        return b.state is State.HALF_OPEN

    def state(self, key: str) -> State:
        b = self._breakers.get(key)
        if b is None:
            return State.CLOSED
        if b.state is State.OPEN:  # only OPEN moves on the clock (to HALF_OPEN)
            self._poll(b)
        return b.state

    def refusing(self, keys: Iterable[str]) -> set[str]:
        """Those of ``keys`` whose breaker is OPEN: ``state`` of each in one frame (the
        routing snapshot's rebuild asks it of every deployment)."""
        out = set()
        breakers = self._breakers
        for key in keys:
            b = breakers.get(key)
            if b is not None and b.state is State.OPEN:
                self._poll(b)  # OPEN -> HALF_OPEN once the backoff has elapsed
                if b.state is State.OPEN:
                    out.add(key)
        return out

    def failure_mark(self, key: str) -> int:
        """Read when a live request is sent; hand it back as ``record_success(since=...)``."""
        b = self._breakers.get(key)
        return b.failure_seq if b is not None else 0

    def record_success(
        self, key: str, ttft_ms: float | None, *, probe: bool = False, since: int | None = None
    ) -> None:
        b = self._breakers.get(key)
        if b is not None and b.state is State.CLOSED:
            # The common case in one step: a CLOSED breaker's only transition is to OPEN.
            now = self._clock()
            if b.closed_success(now, ttft_ms, since):
                self.version += 1
                if self.listener is not None:
                    self._tell(key, b, now)
            return
        b = self._get(key)
        before = b.transitions
        now = self._clock()
        b.on_success(now, ttft_ms, probe, since)
        self._bump(before, b)
        if b.transitions != before and self.listener is not None:
            self._tell(key, b, now)

    def record_failure(
        self,
        key: str,
        kind: str,
        *,
        retry_after_s: float | None = None,
        probe: bool = False,
        after_success: bool = False,
    ) -> None:
        """``after_success``: the same request was recorded as a success earlier (at its
        first token) and has now failed; see the module docstring."""
        b = self._get(key)
        before = b.transitions
        now = self._clock()
        b.on_failure(now, kind, retry_after_s, probe, after_success)
        self._bump(before, b)
        if b.transitions != before and self.listener is not None:
            self._tell(key, b, now)

    def _tell(self, key: str, b: Breaker, now: float) -> None:
        listener = self.listener
        if listener is None or b.state is State.HALF_OPEN:
            return  # HALF_OPEN follows from the clock on every instance alike
        listener(key, b.state, max(0.0, b.open_until - now) if b.state is State.OPEN else 0.0)

    def badness(self, key: str) -> float:
        """Lower is better: seconds until traffic is let through plus the window failure share."""
        b = self._breakers.get(key)
        if b is None:
            return 0.0
        now = self._clock()
        before = b.transitions
        remaining = b.open_remaining(now)
        self._bump(before, b)
        return remaining + b.rates(now)[1]

    def open_until(self, key: str) -> float | None:
        """Clock time at which an OPEN breaker will half-open; None unless OPEN."""
        b = self._breakers.get(key)
        if b is None:
            return None
        self._poll(b)
        return b.open_until if b.state is State.OPEN else None

    def changes(self, key: str) -> list[tuple[float, str]]:
        """The newest transitions of one breaker, oldest first: (clock time, state entered)."""
        b = self._breakers.get(key)
        if b is None:
            return []
        self._poll(b)
        return list(b.changes)

    def rows(self) -> list[BreakerRow]:
        now = self._clock()
        out = []
        for key in sorted(self._breakers):
            b = self._breakers[key]
            before = b.transitions
            remaining = b.open_remaining(now)
            self._bump(before, b)
            n, failure_rate, slow_rate = b.rates(now)
            retry = b.retry_until
            out.append(
                BreakerRow(
                    key=key,
                    state=b.state.value,
                    consecutive_failures=b.consecutive_failures,
                    failure_rate=failure_rate,
                    slow_rate=slow_rate,
                    opened_count=b.opened_count,
                    open_remaining_s=remaining,
                    retry_after_remaining_s=max(0.0, retry - now) if retry is not None else 0.0,
                    requests_in_window=n,
                    backoff_openings=b.openings,
                    slow_ttft_ms=b.slow_ttft_ms,
                )
            )
        return out

    def _get(self, key: str) -> Breaker:
        b = self._breakers.get(key)
        if b is None:
            b = self._breakers[key] = Breaker(self._policy, self._rng, self._policy.slow_ttft_ms)
        return b

    def _poll(self, b: Breaker) -> None:
        before = b.transitions
        b.poll(self._clock())
        self._bump(before, b)

    def _bump(self, before: int, b: Breaker) -> None:
        self.version += b.transitions - before
