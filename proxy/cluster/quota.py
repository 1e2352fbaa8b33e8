"""Per-key rpm/tpm buckets, concurrent streams and daily budgets counted across instances.

Every request is decided on local numbers. The background sync (``Quota.sync``, every
``sync_interval_s`` and at once after a charge) pushes what this instance charged into Redis
and reads back the cluster's level, so a local bucket is a view of the cluster's bucket that is
stale by one sync at most: instances together overshoot a limit by at most what they admit in
one sync round, and never wait on Redis to decide.

Redis down: each bucket shrinks to this instance's share (``1 / instances``, the last count
the heartbeats gave) of the cluster limit, streams likewise, and the budget assumes every other
instance spends as much as this one since Redis went away. The next sync after Redis returns
puts the cluster's numbers back.

Keys (``P`` = key_prefix): ``P:rl:<key id>:<rpm|tpm>`` a hash (level, stamp) per bucket;
``P:streams:<key id>`` a hash of open streams per instance; ``P:spend:<UTC day>`` a hash of
each instance's own absolute spend today (``<origin>`` and ``<origin>|<key id>``), which an
instance rewrites whole, so a Redis that restarted empty is refilled by the next sync.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from proxy.accounting.daily_budget import Budget, day_of
from proxy.http.auth import Access, KeyState, TokenBucket

from .link import Link, script

if TYPE_CHECKING:
    from redis.asyncio.client import Pipeline

# Refill, charge (a negative charge hands tokens back, never past capacity), answer the level.
# Redis's own clock, so instances with skewed clocks agree on the refill.
TAKE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local cap = tonumber(ARGV[1])
local rate = tonumber(ARGV[2])
local v = redis.call('HMGET', KEYS[1], 'level', 'stamp')
local level = tonumber(v[1]) or cap
local stamp = tonumber(v[2]) or now
level = math.min(cap, math.min(cap, level + math.max(0, now - stamp) * rate) - tonumber(ARGV[3]))
redis.call('HSET', KEYS[1], 'level', tostring(level), 'stamp', tostring(now))
redis.call('EXPIRE', KEYS[1], math.ceil(cap / rate) + 60)
return tostring(level)
"""

SPEND_TTL_S = 2 * 86_400
# A bucket this instance did not charge since its last sync is read back at most this often
# (not every round): an idle key costs Redis one script run a second, not ten. Its own charge
# still syncs it at once, so the view it admits on is at most this stale for what the other
# instances charged.
IDLE_REFRESH_S = 1.0


class Quota:
    """Implements ``auth.SharedLimits`` and ``Budget.elsewhere`` for one instance."""

    def __init__(
        self,
        link: Link,
        prefix: str,
        instance: str,
        origin: str,
        instances: Callable[[], int],
        live: Callable[[], frozenset[str]],
        kick: Callable[[], None],
    ) -> None:
        self._link = link
        self._prefix = prefix
        self._instance = instance
        self._origin = origin
        self._instances = instances
        self._live = live
        self._kick = kick
        self._take = script(link, TAKE)
        self.access: Access | None = None
        self.budget: Budget | None = None
        self._pending: dict[tuple[str, str], float] = {}
        # When each bucket last took Redis's level (monotonic), for the idle refresh.
        self._synced_at: dict[tuple[str, str], float] = {}
        self._sent: dict[tuple[str, str], float] = {}
        self._streams_elsewhere: dict[str, int] = {}
        self._streams_pushed: dict[str, int] = {}
        # The stream counts' and spend's last full sync, and the spend fields written since.
        self._counts_at = -math.inf
        self._spend_key = ""
        self._spend_written: dict[str, str] = {}
        # Budgets: the others' spend at the last sync, and this instance's own when Redis
        # went away (for the share while it is gone).
        self._others: dict[str | None, float] = {}
        self._own_at_down: dict[str | None, float] | None = None
        self._day = -1
        self.local_only = True

    # --- the request path: local and synchronous ------------------------------------

    def took(self, key_id: str, requests: float, tokens: float) -> None:
        if requests:
            k = (key_id, "rpm")
            self._pending[k] = self._pending.get(k, 0.0) + requests
        if tokens:
            k = (key_id, "tpm")
            self._pending[k] = self._pending.get(k, 0.0) + tokens
        self._kick()

    def stream_room(self, key_id: str, cap: int) -> int:
        if self.local_only:
            return max(1, cap // max(1, self._instances()))
        return cap - self._streams_elsewhere.get(key_id, 0)

    def elsewhere(self, key_id: str | None) -> float:
        others = self._others.get(key_id, 0.0)
        if self._own_at_down is None or self.budget is None:
            return others
        # Redis is away: assume each other instance spends what this one has since.
        own = self.budget.spent if key_id is None else self.budget.by_key.get(key_id, 0.0)
        since = max(0.0, own - self._own_at_down.get(key_id, 0.0))
        return others + since * max(0, self._instances() - 1)

    # --- Redis up and down ---------------------------------------------------------------

    def went_down(self) -> None:
        """Shrink every shared bucket to this instance's share; freeze the budget view."""
        if self.local_only:
            return
        self.local_only = True
        n = max(1, self._instances())
        if self.access is not None:
            for st in self.access.states.values():
                for bucket, limit in ((st.requests, st.config.rpm), (st.tokens, st.config.tpm)):
                    if bucket is not None:
                        _resize(bucket, limit / n, time.monotonic())
                        bucket.level = min(bucket.level, bucket.capacity)
        if self.budget is not None:
            own: dict[str | None, float] = {None: self.budget.spent}
            own.update(self.budget.by_key)
            self._own_at_down = own
        self._pending.clear()

    def hold_share(self) -> None:
        """While Redis is away: buckets created since (a key's first request) get this
        instance's share too, and every bucket follows a changed instance count."""
        if self.access is None:
            return
        n = max(1, self._instances())
        now = time.monotonic()
        for st in self.access.states.values():
            for bucket, limit in ((st.requests, st.config.rpm), (st.tokens, st.config.tpm)):
                if bucket is not None and bucket.capacity != limit / n:
                    _resize(bucket, limit / n, now)
                    bucket.level = min(bucket.level, bucket.capacity)

    # --- the background sync ---------------------------------------------------------------

    async def sync(self) -> None:
        """One round: buckets, streams and budgets, in one pipeline and one script call per
        bucket charged. Marks the link down (and this quota local) if Redis fails."""
        access, budget = self.access, self.budget
        if access is None:
            return
        states = {kid: st for kid, st in access.states.items() if _limited(st)}
        # Charged since the last round, never synced, or due for its idle refresh; all of
        # them when coming back from local state (the buckets take the cluster's size again).
        due = time.monotonic() - IDLE_REFRESH_S
        charges = [
            (kid, kind, st)
            for kid, st in states.items()
            for kind in ("rpm", "tpm")
            if (st.requests if kind == "rpm" else st.tokens) is not None
            and (
                self.local_only
                or (kid, kind) in self._pending
                or self._synced_at.get((kid, kind), -math.inf) <= due
            )
        ]
        levels = await self._sync_buckets(charges)
        if levels is None:
            self.went_down()
            return
        ok = await self._link.call(self._sync_counts(states, budget))
        if not ok:
            self.went_down()
            return
        now = time.monotonic()
        for (kid, kind, st), level in zip(charges, levels, strict=True):
            bucket = st.requests if kind == "rpm" else st.tokens
            if bucket is None or level is None:
                continue
            limit = st.config.rpm if kind == "rpm" else st.config.tpm
            _resize(bucket, float(limit), now)
            # What this instance charged while the answer was on its way is not in it yet.
            bucket.level = float(level) - self._pending.get((kid, kind), 0.0)
            self._synced_at[(kid, kind)] = now
        self.local_only = False
        self._own_at_down = None

    async def _sync_buckets(
        self, charges: list[tuple[str, str, KeyState]]
    ) -> list[float | None] | None:
        out: list[float | None] = []
        for kid, kind, st in charges:
            limit = st.config.rpm if kind == "rpm" else st.config.tpm
            key = (kid, kind)
            charge = self._pending.pop(key, 0.0)
            if self.local_only:
                charge = 0.0  # spent against the local share; Redis refilled meanwhile
            level = await self._link.call(
                self._take([f"{self._prefix}:rl:{kid}:{kind}"], [limit, limit / 60.0, repr(charge)])
            )
            if level is None:
                return None
            out.append(float(level))
        return out

    async def _sync_counts(self, states: Mapping[str, KeyState], budget: Budget | None) -> bool:
        pipe: Pipeline = self._link.client.pipeline(transaction=False)
        now = time.monotonic()
        # Like the buckets: a key whose open-stream count here changed, or due for its idle
        # refresh (every key when coming back from local state).
        full = self.local_only or now - self._counts_at >= IDLE_REFRESH_S
        stream_keys = [
            kid
            for kid, st in states.items()
            if st.config.max_concurrent_streams
            and (full or self._streams_pushed.get(kid) != st.streams)
        ]
        for kid in stream_keys:
            pipe.hset(f"{self._prefix}:streams:{kid}", self._instance, states[kid].streams)
            pipe.expire(f"{self._prefix}:streams:{kid}", 3600)
            pipe.hgetall(f"{self._prefix}:streams:{kid}")
        spend_key = None
        written: dict[Any, Any] = {}
        if budget is not None:
            spend_key = f"{self._prefix}:spend:{day_of(time.time())}"
            own: dict[Any, Any] = {self._origin: repr(budget.spent)}
            own |= {f"{self._origin}|{k}": repr(v) for k, v in budget.by_key.items()}
            # Only what changed; the whole of it on the idle refresh (a Redis that restarted
            # empty, or a new day, is refilled by it).
            if full or spend_key != self._spend_key:
                written = own
            else:
                written = {k: v for k, v in own.items() if self._spend_written.get(k) != v}
            if written:
                pipe.hset(spend_key, mapping=written)
            pipe.expire(spend_key, SPEND_TTL_S)
            pipe.hgetall(spend_key)
        replies = await pipe.execute()
        if full:
            self._counts_at = now
        for kid in stream_keys:
            self._streams_pushed[kid] = states[kid].streams
        if spend_key is not None:
            if spend_key != self._spend_key:
                self._spend_written = {}
            self._spend_key = spend_key
            self._spend_written |= written
        live = set(self._live())
        for i, kid in enumerate(stream_keys):
            counts: dict[bytes, bytes] = replies[3 * i + 2]
            self._streams_elsewhere[kid] = sum(
                int(v)
                for k, v in counts.items()
                if k.decode() != self._instance and k.decode() in live
            )
        if spend_key is not None:
            others: dict[str | None, float] = {}
            for raw, value in replies[-1].items():
                origin, _, kid = raw.decode().partition("|")
                if origin == self._origin:
                    continue
                slot = kid or None
                others[slot] = others.get(slot, 0.0) + float(value)
            self._others = others
        return True

    def status(self) -> dict[str, Any]:
        return {
            "shared": not self.local_only,
            "limits": "cluster-wide" if not self.local_only else "this instance's share",
            "instances_assumed": max(1, self._instances()),
        }


def _limited(st: KeyState) -> bool:
    c = st.config
    return bool(c.rpm or c.tpm or c.max_concurrent_streams)


def _resize(bucket: TokenBucket, capacity: float, now: float) -> None:
    bucket._refill(now)
    bucket.capacity = capacity
    bucket.rate = capacity / 60.0
