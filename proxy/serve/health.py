"""Deployment health as the serving layer uses it: the latency table and breakers behind one
object that records outcomes and hands routing a cached snapshot.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from probes.breaker import BreakerBoard, BreakerPolicy
from probes.kinds import CLIENT_FAULTS
from probes.latency import LatencyTable, Source, prior_weight_for, settled_weight
from proxy.catalog import Catalog
from proxy.decide.routing import Snapshot

# TTFT changes reach routing at most this late; breaker transitions, and a deployment's latency
# regime suspected, cleared or adopted (probes/latency.py), reach it at once.
SNAPSHOT_MAX_AGE_S = 0.05
# The catalog nominal's share of a probed deployment's estimate: enough to rank deployments
# before their first sample and to pull a stale one back (halfway after ~4 half-lives), small
# next to measurements: a nominal 2x the measured TTFT lifts a probed estimate by at most 5 %.
PRIOR_SHARE = 0.05
# The chance per sample that noise alone makes routing follow a run beyond a deployment's band
# before a probe confirms it (see "Suspicion" in probes/latency.py): a deployment answering
# 20 requests a second is misjudged for one probe's round trip about every 8 minutes at most.
FALSE_ALARM = 1e-4


class Health:
    __slots__ = (
        "_board_v",
        "_built_at",
        "_catalog",
        "_clock",
        "_keys",
        "_regime_v",
        "_snap",
        "_table_v",
        "allow",
        "board",
        "failures",
        "half_open",
        "mark",
        "release",
        "table",
    )

    # The board's own bound methods, one frame less per request (7 bytecodes each).
    # allow(key): may a live request go (HALF_OPEN admits one trial at a time)?
    allow: Callable[[str], bool]
    # half_open(key): True right after ``allow`` admitted a request as the half-open trial.
    half_open: Callable[[str], bool]
    # mark(key): taken when a live request is sent; passed back to ``success`` as ``since``.
    mark: Callable[[str], int]
    # release(key): give back a half-open trial slot whose request ended without a verdict.
    release: Callable[[str], None]

    def __init__(
        self,
        catalog: Catalog,
        table: LatencyTable,
        board: BreakerBoard,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.table = table
        self.board = board
        self.allow = board.allow
        self.half_open = board.half_open
        self.mark = board.failure_mark
        self.release = board.release
        self._clock = clock
        self._catalog = catalog
        self._snap = Snapshot.nominal(catalog)
        self._built_at = -1e18
        self._table_v = self._board_v = self._regime_v = -1
        # Failed attempts per deployment ever, live and probe, client faults excluded: the
        # status page's error counts (proxy/status/history.py reads it every sample).
        self.failures: dict[str, int] = {}
        self.set_catalog(catalog)

    @classmethod
    def create(
        cls,
        catalog: Catalog,
        half_life_s: float,
        policy: BreakerPolicy | None = None,
        *,
        p90_weight: float = 0.5,
        probe_interval_s: float | None = None,
        shift_samples: int = 0,
    ) -> Health:
        """``probe_interval_s`` sizes the nominal prior against what probing at that interval
        feeds the table (see ``prior_weight_for``; None keeps one pseudo-sample), and a regime
        change must span half of it, so two probes in a row make one but a busy deployment
        needs a sustained change, not two unlucky requests. A deployment measured within the
        last interval counts as settled against the prior however few samples it holds (a
        regime restart leaves two), so a recovered one wins back as fast as a slow one loses."""
        prior = (
            1.0
            if probe_interval_s is None
            else prior_weight_for(probe_interval_s, half_life_s, PRIOR_SHARE)
        )
        measured = (
            0.0 if probe_interval_s is None else settled_weight(probe_interval_s, half_life_s)
        )
        table = LatencyTable(
            half_life_s,
            high_weight=p90_weight,
            prior_weight=prior,
            shift_samples=shift_samples,
            shift_span_s=0.0 if probe_interval_s is None else probe_interval_s / 2,
            measured_weight=measured,
            false_alarm=FALSE_ALARM if shift_samples else 0.0,
        )
        return cls(catalog, table, BreakerBoard(policy or BreakerPolicy()))

    def set_catalog(self, catalog: Catalog) -> None:
        """Plan over ``catalog`` from now on (a reload calls it as it swaps the Router)."""
        self._catalog = catalog
        self._keys = [d.key for d in catalog.deployments()]  # the catalog is immutable
        for d in catalog.deployments():
            self.table.set_prior(d.key, d.nominal_ttft_ms)
        self._built_at = -1e18

    def snapshot(self) -> Snapshot:
        now = self._clock()
        age = now - self._built_at
        # Younger than SNAPSHOT_MAX_AGE_S, only a transition or a regime change makes it stale,
        # so the common case reads two versions, not three (53 -> 25 bytecodes a request).
        if age < SNAPSHOT_MAX_AGE_S:
            if self.board.version == self._board_v and self.table.regime_version == self._regime_v:
                return self._snap
        elif (
            age < 1.0
            and self.table.version == self._table_v
            and self.board.version == self._board_v
            and self.table.regime_version == self._regime_v
        ):
            return self._snap
        keys = self._keys
        ttft = self.table.estimates(keys)
        # This also moves OPEN -> HALF_OPEN when the backoff has elapsed.
        refusing = self.board.refusing(keys)
        badness = {k: self.board.badness(k) for k in refusing}
        self._snap = Snapshot.build(self._catalog, ttft, refusing, badness)
        self._built_at = now
        self._table_v = self.table.version
        self._board_v = self.board.version
        self._regime_v = self.table.regime_version
        return self._snap

    def success(
        self, key: str, ttft_ms: float | None, source: Source = "live", since: int | None = None
    ) -> None:
        if ttft_ms is not None:
            self.table.observe(key, ttft_ms, source)
        self.board.record_success(key, ttft_ms, probe=source == "probe", since=since)

    def failure(
        self,
        key: str,
        kind: str,
        *,
        retry_after_s: float | None = None,
        waited_ms: float | None = None,
        source: Source = "live",
        after_success: bool = False,
    ) -> None:
        if kind not in CLIENT_FAULTS:
            self.failures[key] = self.failures.get(key, 0) + 1
        if kind == "timeout" and waited_ms is not None:
            # A deadline hit is a censored TTFT: at least this slow. Feeding it keeps a
            # hanging deployment from looking fast on its old samples.
            self.table.observe(key, waited_ms, source)
        self.board.record_failure(
            key,
            kind,
            retry_after_s=retry_after_s,
            probe=source == "probe",
            after_success=after_success,
        )
