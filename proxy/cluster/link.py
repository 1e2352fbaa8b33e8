"""The Redis connection with a circuit of its own: every call is bounded by ``op_timeout_s``,
a failure marks Redis down (one log line), and a ping per heartbeat brings it back up.

Nothing here is awaited on a request's path: the callers are background tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import AuthenticationError, RedisError

from proxy.config import ClusterSettings, mask_url

log = logging.getLogger("model_router.cluster")

T = TypeVar("T")

# What a failed call can raise: redis-py's own tree, socket errors and our own timeout.
FAILURES = (RedisError, OSError, TimeoutError)


class Link:
    __slots__ = ("_secret", "client", "down_reason", "on_up", "settings", "since", "up", "url")

    def __init__(self, settings: ClusterSettings) -> None:
        self.settings = settings
        self.url = mask_url(settings.redis_url)
        try:
            self._secret = unquote(urlsplit(settings.redis_url).password or "")
        except ValueError:
            self._secret = ""
        self.client = build_client(settings.redis_url, settings.op_timeout_s)
        self.up = False
        self.since = time.monotonic()
        self.down_reason = "not connected yet"
        # Called (not awaited) when Redis comes back after being down or at first contact.
        self.on_up: Callable[[], None] | None = None

    async def call(self, op: Awaitable[T]) -> T | None:
        """Run one Redis operation; None (and Redis marked down) if it fails or is slow."""
        try:
            async with asyncio.timeout(self.settings.op_timeout_s):
                return await op
        except FAILURES as exc:
            _reraise_cancel(exc)
            self.fail(exc)
            return None

    async def ping(self) -> bool:
        """The heartbeat's check; brings the link up when Redis answers."""
        try:
            async with asyncio.timeout(self.settings.op_timeout_s):
                await self.client.ping()
        except FAILURES as exc:
            _reraise_cancel(exc)
            self.fail(exc)
            return False
        if not self.up:
            self.up = True
            self.since = time.monotonic()
            self.down_reason = ""
            log.info("cluster: connected to Redis at %s; sharing state", self.url)
            if self.on_up is not None:
                self.on_up()
        return True

    def fail(self, exc: BaseException) -> None:
        reason = self.describe(exc)
        if self.up or self.down_reason == "not connected yet":
            hint = (
                " (check the user name and password in redis_url)"
                if isinstance(exc, AuthenticationError)
                or "WRONGPASS" in str(exc)
                or "NOAUTH" in str(exc)
                else ""
            )
            log.warning(
                "cluster: Redis at %s is unavailable: %s%s; running on local state "
                "(limits at this instance's share) until it answers again",
                self.url,
                reason,
                hint,
            )
        if self.up:
            self.since = time.monotonic()
        self.up = False
        self.down_reason = reason

    def describe(self, exc: BaseException) -> str:
        text = str(exc) or "timed out"
        if self._secret:
            text = text.replace(self._secret, "***")
        return f"{type(exc).__name__}: {text}"[:300]

    async def close(self) -> None:
        with contextlib.suppress(*FAILURES):
            await self.client.aclose()


def build_client(url: str, timeout: float) -> redis.Redis:
    """The client for ``url``; no I/O (redis-py connects on the first command)."""
    # No retries inside redis-py: a call that fails is answered by local state at once,
    # and the heartbeat decides when Redis is back.
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=0,
    )


def url_problem(url: str) -> str | None:
    """What redis-py cannot use in ``url`` (an option in its query it does not take or cannot
    parse), found by building the client and one connection object as the router would,
    without connecting; None when it can. Never contains the URL's password."""
    try:
        # Instantiates the connection class with the URL's options (redis-py's own check).
        make: Callable[[], object] = build_client(url, 1.0).connection_pool.make_connection
        make()
    except (ValueError, TypeError, RedisError) as exc:
        text = str(exc)
        with contextlib.suppress(ValueError):
            if secret := unquote(urlsplit(url).password or ""):
                text = text.replace(secret, "***")
        return f"{mask_url(url)!r}: redis-py cannot use it ({text})"
    return None


def _reraise_cancel(exc: BaseException) -> None:
    """redis-py can turn a cancellation that lands mid-command into a connection error; the
    task is still being cancelled, so let it end instead of carrying on as "Redis down"."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError from exc


def script(link: Link, source: str) -> Callable[..., Awaitable[Any]]:
    """A Lua script run by EVALSHA (loaded on first use)."""
    registered = link.client.register_script(source)

    def run(keys: list[str], args: list[Any]) -> Awaitable[Any]:
        return registered(keys=keys, args=args)

    return run
