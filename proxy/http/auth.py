"""Client API keys: the ``Authorization: Bearer`` check (an aiohttp middleware) and each key's
limits (allowed tiers and models, requests and tokens per minute, a daily USD budget,
concurrent streams). Keys live in config only as SHA-256 digests; a key never reaches a log.
"""

from __future__ import annotations

import hmac
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Protocol

from aiohttp import web

from proxy.catalog import TIERS, Catalog, Model, Tier
from proxy.config import Config, KeyConfig
from proxy.decide.allowance import Allowance
from proxy.decide.intent import Intent, pinned_param
from proxy.decide.resolve import Resolution
from proxy.decide.tokens import bearer, hash_key
from proxy.errors import RouterError
from proxy.serve.record import RequestRecord
from proxy.serve.state import ROUTER

from .cross_site import BrowserGuard
from .hostile_input import client_address

log = logging.getLogger("model_router.auth")

# Liveness and readiness answer anyone (a load balancer has no key). /metrics is not here:
# it shows traffic and spend, and Prometheus sends a bearer token as easily as a client.
# /status is the status page's HTML and script only, no data: a browser cannot send a bearer
# token when it opens a page, so the page's script sends the admin key with each fetch.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/status"})

# Tokens reserved for the answer when the client does not say max_tokens; the bucket is
# corrected to the real usage when the request ends.
UNSTATED_MAX_TOKENS = 1024


class TokenBucket:
    """``capacity`` tokens, refilled at ``capacity`` per minute. The level may go negative
    when a request turns out to cost more than it reserved; later requests then wait."""

    __slots__ = ("capacity", "level", "rate", "stamp")

    def __init__(self, per_minute: int, now: float) -> None:
        self.capacity = float(per_minute)
        self.rate = per_minute / 60.0
        self.level = self.capacity
        self.stamp = now

    def _refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def wait_s(self, need: float, now: float) -> float:
        """Seconds until ``need`` tokens are there (0: now). ``need`` is capped at capacity
        so one large request can pass once the bucket is full instead of never."""
        self._refill(now)
        short = min(need, self.capacity) - self.level
        return 0.0 if short <= 0 else short / self.rate

    def take(self, n: float) -> None:
        self.level -= n

    def give(self, n: float) -> None:
        self.level = min(self.capacity, self.level + n)


class KeyState:
    """Live counters for one key id; they outlive a config reload that keeps the id."""

    __slots__ = ("config", "requests", "streams", "tokens")

    def __init__(self, config: KeyConfig, now: float) -> None:
        self.config = config
        self.requests = TokenBucket(config.rpm, now) if config.rpm else None
        self.tokens = TokenBucket(config.tpm, now) if config.tpm else None
        self.streams = 0

    def reconfigure(self, config: KeyConfig, now: float) -> None:
        old, self.config = self.config, config
        if old.rpm != config.rpm:
            self.requests = TokenBucket(config.rpm, now) if config.rpm else None
        if old.tpm != config.tpm:
            self.tokens = TokenBucket(config.tpm, now) if config.tpm else None


class SharedLimits(Protocol):
    """Cluster hook (proxy/cluster/): limits counted across instances. Both calls are local
    and synchronous; the sharing itself happens in the background."""

    def took(self, key_id: str, requests: float, tokens: float) -> None:
        """This instance charged a key's buckets (negative tokens: handed back)."""

    def stream_room(self, key_id: str, cap: int) -> int:
        """How many of the key's ``cap`` concurrent streams this instance may hold now."""
        ...


def _limited(message: str, retry_after_s: float, code: str = "rate_limit_exceeded") -> RouterError:
    headers = {"Retry-After": str(max(1, math.ceil(retry_after_s)))}
    if code == "budget_exceeded":
        # Hours away: the SDK's quick retries would only burn requests.
        headers["x-should-retry"] = "false"
    return RouterError(429, message, type="rate_limit_error", code=code, headers=headers)


@dataclass(slots=True)
class Ticket:
    """What one admitted request holds; ``settle`` gives it back and charges real usage."""

    access: Access
    state: KeyState
    reserved_tokens: int
    stream: bool
    settled: bool = False

    def settle(self, outcome: RequestRecord) -> None:
        if self.settled:
            return
        self.settled = True
        st = self.state
        if self.stream:
            st.streams -= 1
        used = outcome.prompt_tokens + outcome.completion_tokens
        if st.tokens is not None:
            back = 0
            if used:
                back = self.reserved_tokens - used
            elif outcome.model is None:
                back = self.reserved_tokens  # nothing was served
            # else served with no usage reported (a broken stream): keep the reservation
            if back:
                st.tokens.give(back)
                if (shared := self.access.shared) is not None:
                    shared.took(st.config.id, 0, -back)


class Principal:
    """The caller of one request: a configured key, or ``None`` when keys are off."""

    __slots__ = ("_access", "_reach", "allow", "allowance", "key", "key_id")

    def __init__(self, key: KeyConfig | None, access: Access) -> None:
        self.key = key
        self.key_id = key.id if key else None
        self._access = access
        # What this key may use, and the routing filter made of it; None: every model.
        self.allowance: Allowance | None = None
        self.allow: Callable[[Model], bool] | None = None
        if key is not None and (key.allowed_tiers or key.allowed_models):
            self.allowance = Allowance(frozenset(key.allowed_tiers), frozenset(key.allowed_models))
            self.allow = self.allowance.allows
        self._reach: tuple[Catalog, tuple[Tier, ...]] | None = None

    def reach(self, catalog: Catalog) -> tuple[Tier, ...]:
        """The tiers this key can use a model in (every tier when it is not limited)."""
        if self.allowance is None:
            return TIERS
        known = self._reach
        if known is None or known[0] is not catalog:  # a reload brings a new catalog
            known = self._reach = (catalog, self.allowance.reach(catalog))
        return known[1]

    def narrow(self, chosen: Resolution, catalog: Catalog) -> Resolution:
        """``chosen`` routed within this key's tiers when the client did not name one it
        may not use; the narrowing joins the notes that lead ``x-router-reason``."""
        if self.allowance is None:
            return chosen
        intent, note = self.allowance.narrow(chosen.intent, self.reach(catalog))
        if not note:
            return chosen
        notes = f"{chosen.notes} {note}" if chosen.notes else note
        return replace(chosen, intent=intent, notes=notes)

    def admit(self, intent: Intent, catalog: Catalog) -> Ticket | None:
        """Refuse what this key may not ask for (403) or may not ask for now (429); reserve
        its share of the limits otherwise. Nothing has gone upstream yet."""
        key = self.key
        if key is None:
            return None
        self._check_models(key, intent, catalog)
        access = self._access
        now = access.clock()
        st = access.state(key, now)
        cap = key.max_concurrent_streams
        shared = access.shared
        room = cap if shared is None or not cap else shared.stream_room(key.id, cap)
        if intent.stream and cap and st.streams >= room:
            raise _limited(
                f"API key {key.id!r} is at its max_concurrent_streams limit ({cap} open "
                "streams); retry when one ends",
                1.0,
            )
        # daily_usd is enforced by the accounting budget (proxy/accounting/daily_budget.py),
        # which reads today's spend back from the usage log so it survives a restart.
        need = intent.prompt_tokens + (intent.max_output_tokens or UNSTATED_MAX_TOKENS)
        waits = []
        if st.requests is not None and (w := st.requests.wait_s(1, now)) > 0:
            waits.append((w, f"rpm limit ({key.rpm} requests per minute)"))
        if st.tokens is not None and (w := st.tokens.wait_s(need, now)) > 0:
            waits.append(
                (w, f"tpm limit ({key.tpm} tokens per minute; this request reserves about {need})")
            )
        if waits:
            wait, what = max(waits)
            raise _limited(
                f"API key {key.id!r} is over its {what}; retry in {math.ceil(wait)} s", wait
            )
        if st.requests is not None:
            st.requests.take(1)
        if st.tokens is not None:
            st.tokens.take(need)
        if intent.stream:
            st.streams += 1
        if shared is not None:
            shared.took(
                key.id, 1 if st.requests is not None else 0, need if st.tokens is not None else 0
            )
        log.debug("admitted key_id=%s stream=%s reserved_tokens=%d", key.id, intent.stream, need)
        return Ticket(access, st, need if st.tokens is not None else 0, intent.stream)

    @staticmethod
    def _check_models(key: KeyConfig, intent: Intent, catalog: Catalog) -> None:
        """Pinned models and a tier the client named are checked before routing, so the
        answer names what was refused instead of silently routing around it. A tier the client
        did not name (a bare auto's standard, a task's) is narrowed later (``narrow``)."""
        for i, name in enumerate(intent.pinned):
            model = catalog.get(name)
            if model is None:
                continue  # routing answers 404 for it
            if (key.allowed_models and model.id not in key.allowed_models) or (
                key.allowed_tiers and model.tier not in key.allowed_tiers
            ):
                raise RouterError(
                    403,
                    f"API key {key.id!r} may not use model {model.id!r} (tier {model.tier}); "
                    f"it may use {_describe(key)}",
                    type="permission_error",
                    param=pinned_param(intent, i),
                    code="model_not_allowed",
                )
        named = intent.named_tier
        if named is not None and key.allowed_tiers and named not in key.allowed_tiers:
            raise RouterError(
                403,
                f"API key {key.id!r} may not use tier {named!r}; it may use {_describe(key)}, "
                f"e.g. model 'auto' or 'auto:{key.allowed_tiers[0]}'",
                type="permission_error",
                param="tier",
                code="tier_not_allowed",
            )


def _describe(key: KeyConfig) -> str:
    parts = []
    if key.allowed_tiers:
        parts.append("tiers " + ", ".join(key.allowed_tiers))
    if key.allowed_models:
        parts.append("models " + ", ".join(key.allowed_models))
    return " and ".join(parts) or "every model"


class Access:
    """Per-app key state. Keys come from the router's current config on each request, so a
    reload that adds or revokes a key takes effect at once; counters survive by key id."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._states: dict[str, KeyState] = {}
        self._principals: dict[KeyConfig, Principal] = {}
        self.anonymous = Principal(None, self)
        self.shared: SharedLimits | None = None
        self._guard: BrowserGuard | None = None
        self._guard_for: Config | None = None

    def browser_guard(self, config: Config) -> BrowserGuard:
        """The cross-site checks for ``config`` (made again after a reload)."""
        if self._guard_for is not config or self._guard is None:
            self._guard, self._guard_for = BrowserGuard(config), config
        return self._guard

    @property
    def states(self) -> Mapping[str, KeyState]:
        """Live counters by key id (the cluster syncs their buckets)."""
        return self._states

    def principal(self, key: KeyConfig) -> Principal:
        found = self._principals.get(key)
        if found is None:
            if len(self._principals) > 4 * 1024:  # reloads leave old KeyConfigs behind
                self._principals.clear()
            found = self._principals[key] = Principal(key, self)
        return found

    def state(self, key: KeyConfig, now: float) -> KeyState:
        st = self._states.get(key.id)
        if st is None:
            st = self._states[key.id] = KeyState(key, now)
        elif st.config is not key:
            st.reconfigure(key, now)
        return st

    def authenticate(self, header: str | None, keys: Sequence[KeyConfig]) -> KeyConfig:
        """The key whose digest matches the bearer token; RouterError 401 otherwise."""
        token = bearer(header)
        if token is None:
            raise _unauthorized(
                "missing_api_key",
                "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
            )
        digest = hash_key(token)
        found = None
        # Every digest is compared (no early exit), each in constant time.
        for key in keys:
            if hmac.compare_digest(digest, key.sha256):
                found = key
        if found is None:
            raise _unauthorized("invalid_api_key", "Incorrect API key provided.")
        return found


def _unauthorized(code: str, message: str) -> RouterError:
    return RouterError(
        401, message, code=code, headers={"WWW-Authenticate": 'Bearer realm="model-router"'}
    )


ACCESS = web.AppKey("access", Access)
PRINCIPAL = web.RequestKey("principal", Principal)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every path but liveness and readiness needs a configured key, when keys are on."""
    access, config = request.app[ACCESS], request.app[ROUTER].current.config
    keys = config.keys
    if not keys:
        # Anyone who connects may spend: a web page in the user's browser may not.
        if (refused := access.browser_guard(config).refusal(request.headers)) is not None:
            _log_refused(request, refused)
            raise refused
        request[PRINCIPAL] = access.anonymous
        return await handler(request)
    if request.path in OPEN_PATHS:
        request[PRINCIPAL] = access.anonymous
        return await handler(request)
    try:
        headers = request.headers.getall("Authorization", [])
        if len(headers) > 1:
            # A single-valued field: a proxy in front may read another one than we would.
            raise _unauthorized(
                "invalid_api_key",
                "More than one Authorization header. Send one: 'Authorization: Bearer <key>'.",
            )
        key = access.authenticate(headers[0] if headers else None, keys)
    except RouterError as err:
        _log_refused(request, err)
        raise
    request[PRINCIPAL] = access.principal(key)
    return await handler(request)


def _log_refused(request: web.Request, err: RouterError) -> None:
    peer = client_address(request, request.app[ROUTER].current.config.limits.trusted_proxies)
    # The route, not the raw path: a path is client bytes and may carry anything.
    log.info("refused %s %s from %s: %s", request.method, route_of(request), peer, err.code)


def route_of(request: web.Request) -> str:
    """The matched route's pattern (``/v1/models``), or ``(no route)``: safe to log."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "(no route)"


def require_admin(request: web.Request) -> None:
    """403 unless the caller's key has ``admin = true`` (anyone may when keys are off: the
    router then serves loopback only)."""
    key = principal(request).key
    if key is not None and not key.admin:
        raise RouterError(
            403,
            f"API key {key.id!r} is not an admin key; the status page's data needs one "
            "(admin = true in its [[keys]] entry)",
            type="permission_error",
            code="admin_key_required",
        )


def principal(request: web.Request) -> Principal:
    """The caller, as the middleware found it (anonymous when keys are off)."""
    found = request.get(PRINCIPAL)
    return found if found is not None else request.app[ACCESS].anonymous
