# Over 400 lines: one member's whole Redis protocol (heartbeats, events, leases, sync) kept
# together while it settles; the leases are the first part to move into a module of their own.
"""One instance's membership of the cluster: heartbeats, the event channel (latency samples
and breaker transitions), probe and half-open trial leases, and the quota sync.

Every hook it installs (``LatencyTable.listener``, ``BreakerBoard.listener`` and
``trial_gate``, ``ProbeLoop.gate``, ``Access.shared``, ``Budget.elsewhere``) answers from
local memory; the Redis work happens in three background tasks:

- *heartbeat* (every ``heartbeat_s``): ping (which brings Redis back up after an outage),
  register this instance, count the live ones, renew or take probe leases;
- *events*: a pub/sub subscription on ``P:events``; remote samples are folded into the local
  table and remote breaker openings and closings adopted;
- *flush* (every ``sync_interval_s``, or at once when kicked): publish the batch of samples
  and transitions, take wanted trial leases, sync the quota.

Redis keys (``P`` = key_prefix): ``P:instances`` (sorted set of heartbeats), ``P:events``
(channel), ``P:breaker:<deployment>`` (an opening, expiring when it ends, read back after an
outage), ``P:probe:<deployment>`` and ``P:trial:<deployment>`` (leases), and quota's keys.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from typing import Any

import orjson
from redis.asyncio.client import PubSub

from probes.breaker import State
from probes.latency import Source
from proxy.accounting.daily_budget import Budget
from proxy.config import ClusterSettings
from proxy.http.auth import Access
from proxy.serve.state import Router

from .link import FAILURES, Link, script
from .quota import Quota

log = logging.getLogger("model_router.cluster")

# Renew our leases, then take free ones up to ARGV[3] more; answers 1 per key held.
LEASES = """
local out = {}
local budget = tonumber(ARGV[3])
for i, k in ipairs(KEYS) do
  local v = redis.call('GET', k)
  if v == ARGV[1] then
    redis.call('PEXPIRE', k, ARGV[2]); out[i] = 1
  else
    out[i] = 0
  end
end
for i, k in ipairs(KEYS) do
  if out[i] == 0 and budget > 0 and redis.call('SET', k, ARGV[1], 'NX', 'PX', ARGV[2]) then
    out[i] = 1; budget = budget - 1
  end
end
return out
"""

# Register this instance on Redis's clock (boxes' clocks may disagree), drop those silent for
# ARGV[2] ms, answer the live ones.
HEARTBEAT = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - tonumber(ARGV[2]))
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 10)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""

# Delete a lease only if we hold it.
RELEASE = """
for i, k in ipairs(KEYS) do
  if redis.call('GET', k) == ARGV[1] then redis.call('DEL', k) end
end
return 0
"""

# Samples waiting to be published are dropped past this (Redis slow): they are hints.
MAX_BATCH = 10_000
# The transitions another instance's message may carry.
_ADOPTED = frozenset({State.OPEN.value, State.CLOSED.value})
# The shortest gap between two sync rounds (see Cluster._flush).
MIN_ROUND_GAP_S = 0.002
# A half-open trial lease lasts this long at most; it is dropped when the breaker decides.
TRIAL_LEASE_S = 10.0


class Cluster:
    def __init__(self, settings: ClusterSettings, origin: str) -> None:
        self.settings = settings
        self.prefix = settings.key_prefix
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.link = Link(settings)
        self.link.on_up = self._on_up
        self.instances = 1
        self._live: frozenset[str] = frozenset()
        self._router: Router | None = None
        self._keys: list[str] = []
        self._deployments: list[str] = []
        self._leases: set[str] = set()
        self._trials: dict[str, float] = {}  # deployment -> monotonic expiry of our lease
        self._trials_wanted: set[str] = set()
        self._trials_drop: set[str] = set()
        self._samples: list[tuple[str, float, str]] = []
        self._breakers: list[tuple[str, str, float]] = []
        self._kick = asyncio.Event()
        self._resync = False
        self._tasks: list[asyncio.Task[None]] = []
        self.received = 0
        self.published = 0
        self.quota = Quota(
            self.link,
            self.prefix,
            self.id,
            origin,
            lambda: self.instances,
            lambda: self._live,
            self._kick.set,
        )
        self._leases_script = script(self.link, LEASES)
        self._heartbeat_script = script(self.link, HEARTBEAT)
        self._release_script = script(self.link, RELEASE)

    # --- wiring -------------------------------------------------------------------------

    def attach(self, router: Router) -> None:
        """Install the hooks on a router's health and probe loop (again after a reload)."""
        self._router = router
        health = router.health
        health.table.listener = self._sample
        health.board.listener = self._transition
        health.board.trial_gate = self._trial_gate
        self._deployments = [d.key for d in router.catalog.deployments()]
        self._keys = []  # the probed ones: leases are taken for these
        if router.probe_loop is not None:
            router.probe_loop.gate = self._probe_gate
            self._keys = list(self._deployments)

    def attach_accounting(self, access: Access, budget: Budget) -> None:
        self.quota.access = access
        self.quota.budget = budget
        access.shared = self.quota
        budget.elsewhere = self.quota.elsewhere

    async def start(self) -> None:
        """First contact (bounded by op_timeout_s, so an unreachable Redis delays the start
        by that at most), then the background tasks."""
        if await self.link.ping():
            await self._heartbeat_once()
        self._tasks = [
            asyncio.create_task(self._heartbeat(), name="cluster-heartbeat"),
            asyncio.create_task(self._events(), name="cluster-events"),
            asyncio.create_task(self._flush(), name="cluster-flush"),
        ]

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        # Bounded: a task that swallowed its cancellation must not hold up the shutdown.
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=2 * self.settings.op_timeout_s + 1)
            for task in stuck:
                log.warning("cluster: %s did not stop; leaving it", task.get_name())
        if self.link.up:
            # Leave cleanly: another instance takes our leases at its next heartbeat.
            held = [self._lease_key("probe", k) for k in self._leases]
            held += [self._lease_key("trial", k) for k in self._trials]
            pipe = self.link.client.pipeline(transaction=False)
            pipe.zrem(f"{self.prefix}:instances", self.id)
            await self.link.call(pipe.execute())
            if held:
                await self.link.call(self._release_script(held, [self.id]))
        await self.link.close()

    # --- hooks (the request path: local only) ---------------------------------------------

    def _sample(self, key: str, ttft_ms: float, source: Source) -> None:
        if self.link.up and len(self._samples) < MAX_BATCH:
            self._samples.append((key, round(ttft_ms, 3), source))

    def _transition(self, key: str, state: State, open_s: float) -> None:
        if self._trials.pop(key, None) is not None:
            self._trials_drop.add(key)
        if self.link.up:
            self._breakers.append((key, state.value, open_s))
            self._kick.set()

    def _trial_gate(self, key: str) -> bool:
        if not self.link.up:
            return True
        until = self._trials.get(key)
        if until is not None and until > time.monotonic():
            return True
        self._trials_wanted.add(key)
        self._kick.set()
        return False

    def _probe_gate(self, key: str) -> bool:
        return not self.link.up or key in self._leases

    # --- background ---------------------------------------------------------------------

    def _on_up(self) -> None:
        self._resync = True
        self._kick.set()

    async def _heartbeat(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_s)
            try:
                if await self.link.ping():
                    await self._heartbeat_once()
                else:
                    self._went_down()
            except Exception:
                log.exception("cluster heartbeat failed")

    async def _heartbeat_once(self) -> None:
        ttl_ms = int(self.settings.heartbeat_s * 3000)
        members = await self.link.call(
            self._heartbeat_script([f"{self.prefix}:instances"], [self.id, ttl_ms])
        )
        if members is None:
            self._went_down()
            return
        self._live = frozenset(m.decode() for m in members)
        self.instances = max(1, len(self._live))
        await self._renew_leases()

    async def _renew_leases(self) -> None:
        keys = self._keys
        if not keys:
            return
        # Take at most a fair share of the free leases, so probing spreads over instances.
        fair = -(-len(keys) // self.instances)
        budget = max(0, fair - len(self._leases & set(keys)))
        ms = int(self.settings.probe_lease_s * 1000)
        held = await self.link.call(
            self._leases_script([self._lease_key("probe", k) for k in keys], [self.id, ms, budget])
        )
        if held is None:
            self._went_down()
            return
        mine = [k for k, h in zip(keys, held, strict=True) if h]
        # More than a fair share (an instance joined): hand the surplus back; the newcomer
        # takes it at its next heartbeat.
        surplus = mine[fair:] if len(self._live) > 1 else []
        if surplus:
            await self.link.call(
                self._release_script([self._lease_key("probe", k) for k in surplus], [self.id])
            )
        self._leases = set(mine[:fair]) if surplus else set(mine)

    def _went_down(self) -> None:
        self._leases.clear()
        self._trials.clear()
        self._samples.clear()
        self._breakers.clear()
        self.quota.went_down()

    async def _events(self) -> None:
        channel = f"{self.prefix}:events"
        while True:
            pubsub: PubSub | None = None
            try:
                if not self.link.up:
                    await asyncio.sleep(self.settings.heartbeat_s)
                    continue
                pubsub = self.link.client.pubsub(ignore_subscribe_messages=True)
                async with asyncio.timeout(self.settings.op_timeout_s):
                    await pubsub.subscribe(channel)
                while self.link.up:
                    msg = await pubsub.get_message(timeout=self.settings.heartbeat_s)
                    if msg is not None and msg.get("type") == "message":
                        self._apply(msg["data"])
            except asyncio.CancelledError:
                raise
            except FAILURES as exc:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise asyncio.CancelledError from exc
                self.link.fail(exc)
                self._went_down()
            except Exception:
                log.exception("cluster event listener failed")
                await asyncio.sleep(self.settings.heartbeat_s)
            finally:
                if pubsub is not None:
                    with contextlib.suppress(*FAILURES):
                        await pubsub.aclose()

    def _apply(self, raw: bytes) -> None:
        try:
            event = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return
        if not isinstance(event, dict) or event.get("from") == self.id:
            return
        router = self._router
        if router is None:
            return
        self.received += 1
        table, board = router.health.table, router.health.board
        for key, ms, source in event.get("s", ()):
            if source in ("probe", "live") and isinstance(ms, int | float) and ms >= 0:
                table.fold(key, float(ms), source)
        for key, state, open_s in event.get("b", ()):
            if key in table and state in _ADOPTED and isinstance(open_s, int | float):
                board.adopt(key, State(state), float(open_s))

    async def _flush(self) -> None:
        # Under heavy traffic every request kicks; rounds then run at most every 2 ms, so
        # the sync costs the event loop a bounded share however busy the instance is.
        min_gap = min(self.settings.sync_interval_s, MIN_ROUND_GAP_S)
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.sync_interval_s):
                    await self._kick.wait()
            self._kick.clear()
            if not self.link.up:
                self.quota.hold_share()
                continue
            began = time.monotonic()
            try:
                if self._resync:
                    self._resync = False
                    await self._reconverge()
                await self._publish()
                await self._take_trials()
                await self.quota.sync()
            except Exception:
                log.exception("cluster sync failed")
            await asyncio.sleep(max(0.0, began + min_gap - time.monotonic()))

    async def _publish(self) -> None:
        samples, breakers = self._samples, self._breakers
        if not samples and not breakers:
            return
        self._samples, self._breakers = [], []
        pipe = self.link.client.pipeline(transaction=False)
        body: dict[str, Any] = {"from": self.id, "s": samples, "b": breakers}
        pipe.publish(f"{self.prefix}:events", orjson.dumps(body))
        for key, state, open_s in breakers:
            # Remembered in Redis too, so an instance that was cut off catches up.
            name = f"{self.prefix}:breaker:{key}"
            if state == State.OPEN.value and open_s > 0:
                pipe.set(name, "open", px=max(1, int(open_s * 1000)))
            else:
                pipe.delete(name)
        if await self.link.call(pipe.execute()) is None:
            self._went_down()
        else:
            self.published += 1

    async def _take_trials(self) -> None:
        drop, self._trials_drop = self._trials_drop, set()
        if drop:
            await self.link.call(
                self._release_script([self._lease_key("trial", k) for k in drop], [self.id])
            )
        wanted, self._trials_wanted = self._trials_wanted, set()
        ms = int(TRIAL_LEASE_S * 1000)
        for key in wanted:
            got = await self.link.call(
                self.link.client.set(self._lease_key("trial", key), self.id, nx=True, px=ms)
            )
            if got:
                self._trials[key] = time.monotonic() + TRIAL_LEASE_S

    async def _reconverge(self) -> None:
        """After an outage (or at first contact): adopt the openings Redis remembers, tell
        Redis ours, and rejoin (heartbeat, leases)."""
        router = self._router
        await self._heartbeat_once()
        if router is None:
            return
        board = router.health.board
        names = [f"{self.prefix}:breaker:{k}" for k in self._deployments]
        pipe = self.link.client.pipeline(transaction=False)
        for name in names:
            pipe.pttl(name)
        ttls = await self.link.call(pipe.execute())
        if ttls is None:
            return
        for key, ttl in zip(self._deployments, ttls, strict=True):
            if ttl > 0:
                board.adopt(key, State.OPEN, ttl / 1000)
        for row in board.rows():
            if row.state == State.OPEN.value and row.open_remaining_s > 0:
                self._breakers.append((row.key, row.state, row.open_remaining_s))

    def _lease_key(self, kind: str, key: str) -> str:
        return f"{self.prefix}:{kind}:{key}"

    # --- what the instance says about itself ------------------------------------------------

    def status(self) -> dict[str, Any]:
        up = self.link.up
        return {
            "redis_url": self.link.url,
            "redis": "up" if up else "down",
            "redis_down_reason": None if up else self.link.down_reason,
            "state": "shared" if up else "local",
            "instance": self.id,
            "instances": self.instances,
            "probe_leases": sorted(self._leases) if up else None,
            "events_published": self.published,
            "events_received": self.received,
            **self.quota.status(),
        }
