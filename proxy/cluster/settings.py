"""The ``[cluster]`` table and the Redis URL: parsed, checked and masked without redis-py."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import SplitResult, urlsplit

from aiohttp import web

SCHEMES = ("redis", "rediss", "unix")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    # Empty: no cluster; every instance and worker runs on its own state.
    redis_url: str = ""
    # Every key and channel name starts with this, so several routers can share one Redis.
    key_prefix: str = "model-router"
    # How often each instance pushes its counters and pulls the others' (limits, budgets).
    sync_interval_s: float = 0.1
    # A probe lease lasts this long; its holder renews it at a third of it, and another
    # instance takes a lease over within one lease after its holder dies.
    probe_lease_s: float = 15.0
    # Heartbeat period; an instance silent for three of them no longer counts.
    heartbeat_s: float = 1.0
    # Each Redis call gives up after this; the instance then runs on local state.
    op_timeout_s: float = 0.5

    @property
    def enabled(self) -> bool:
        return bool(self.redis_url)


class RedisUrlError(ValueError):
    pass


def mask_url(url: str) -> str:
    """The URL with any password (and user name) replaced by ``***``: what logs and status
    show. An unparseable URL is masked entirely past its scheme."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
    except ValueError:
        return url.split(":", 1)[0] + "://***"
    if "@" not in netloc:
        return url
    host = netloc.rsplit("@", 1)[1]
    return SplitResult(parts.scheme, f"***@{host}", parts.path, parts.query, "").geturl()


def check_url(url: str) -> None:
    """Raise RedisUrlError naming what is wrong; the message never contains a secret."""
    shown = mask_url(url)
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise RedisUrlError(f"{shown!r} is not a valid URL ({exc})") from None
    if parts.scheme not in SCHEMES:
        raise RedisUrlError(
            f"{shown!r}: the scheme must be one of {', '.join(s + '://' for s in SCHEMES)}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise RedisUrlError(f"{shown!r}: a unix:// URL needs a socket path")
        return
    if not parts.hostname:
        raise RedisUrlError(f"{shown!r}: no host")
    if port == 0:
        raise RedisUrlError(f"{shown!r}: port 0")
    db = parts.path.lstrip("/")
    if db and not db.isdigit():
        raise RedisUrlError(f"{shown!r}: the path must be a database number, got {db!r}")


class ClusterView(Protocol):
    """What the serving layer sees of a cluster member (proxy/cluster/node.py's Cluster),
    without importing redis-py."""

    def status(self) -> dict[str, Any]: ...

    def attach_accounting(self, access: Any, budget: Any) -> None: ...


CLUSTER: web.AppKey[ClusterView] = web.AppKey("cluster")
