"""Limits on hostile input, each with a clear answer: header and body read deadlines (408),
open connections (503), body size (413, aiohttp's ``client_max_size``), JSON nesting depth,
number of messages and request fields that try to steer the upstream (400).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web, web_protocol
from aiohttp.web_request import BaseRequest

from proxy.config import LimitsSettings
from proxy.errors import RouterError, bad_request
from proxy.serve.state import ROUTER

# Fields some gateways honour to pick an upstream or its credentials per request (LiteLLM's
# api_base sent its owner's key to an attacker's host, CVE-2024-6587). Upstreams and keys
# come only from config. Refused rather than dropped: a silent drop lets the client believe
# it chose the endpoint, and forwarding would hand a client's secret to a third party.
ROUTING_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "headers",
        "endpoint_url",
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "aws_region_name",
        "aws_profile_name",
    }
)


async def read_body(request: web.Request, limits: LimitsSettings) -> bytes:
    """The whole body within ``body_timeout_s``; over ``client_max_size`` aiohttp raises 413."""
    try:
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RouterError(
            408,
            f"the request body did not arrive within body_timeout_s ({limits.body_timeout_s:g} s)",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None


def parse_json(raw: bytes, limits: LimitsSettings) -> Any:
    """Parse once with orjson, then hold the nesting to ``max_json_depth``."""
    if not raw:
        raise bad_request("the request body is empty; send a JSON object", None)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg or "ecursion" in exc.msg:  # orjson's own cap: 1024
            raise _too_deep(limits) from None
        # orjson's message names a position, never the document's text.
        raise bad_request(
            f"the request body is not valid JSON: {exc}", None, "invalid_json"
        ) from None
    # A walk over the parsed containers: ~1 us for an autocomplete body, ~0.4 ms for 2048
    # messages; a scan of the raw bytes would cost more on a large single-string document.
    if _deeper_than(data, limits.max_json_depth):
        raise _too_deep(limits)
    return data


def _too_deep(limits: LimitsSettings) -> RouterError:
    return bad_request(
        f"the request body nests deeper than max_json_depth ({limits.max_json_depth})",
        None,
        "json_too_deep",
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """True when containers nest more than ``limit`` levels (``{"a": [1]}`` is 2)."""
    if type(value) is not dict and type(value) is not list:
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) is dict or type(child) is list:
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def screen(body: Any, limits: LimitsSettings) -> Any:
    """Refuse upstream-steering fields and too many messages before anything else looks."""
    if type(body) is not dict:
        return body  # parse_intent names the problem
    if not ROUTING_FIELDS.isdisjoint(body):
        name = sorted(ROUTING_FIELDS.intersection(body))[0]
        raise bad_request(
            f"'{name}' is not accepted: upstream endpoints and credentials come only from "
            "the router's config",
            name,
            "unsupported_parameter",
        )
    messages = body.get("messages")
    if type(messages) is list and len(messages) > limits.max_messages:
        raise bad_request(
            f"'messages' has {len(messages)} entries; max_messages is {limits.max_messages}",
            "messages",
            "too_many_messages",
        )
    return body


async def read_json(request: web.Request, limits: LimitsSettings) -> Any:
    """Read, parse and screen a request body; every refusal is a 4xx naming its limit."""
    return screen(parse_json(await read_body(request, limits), limits), limits)


# --- the connection layer: header deadline and connection cap -------------------------

_TIMEOUT_BODY = RouterError(
    408, "the request headers did not arrive in time (header_timeout_s)", code="request_timeout"
).body()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


OVER_CAPACITY_HEADER_S = 1.0


async def _over_capacity(request: BaseRequest) -> web.StreamResponse:
    err = RouterError(
        503,
        "the router is at its max_connections limit; retry shortly",
        type="server_error",
        code="too_many_connections",
        headers={"Retry-After": "1"},
    )
    resp = web.Response(
        body=err.body(), status=503, content_type="application/json", headers=err.headers
    )
    resp.force_close()
    return resp


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's HTTP protocol plus a header deadline and the connection cap.

    The header timer runs from connection open, and on a kept-alive connection from the
    first byte of the next request, until that request's headers are parsed. When it
    fires while aiohttp still waits for a request, the connection is closed (after a 408
    if part of a request came). Idle kept-alive connections are aiohttp's keepalive's job.
    """

    __slots__ = (
        "_counted",
        "_guard",
        "_header_timeout",
        "_header_timer",
        "_max_connections",
        "_partial",
    )

    def __init__(self, manager: GuardedServer, limits: LimitsSettings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._header_timeout = limits.header_timeout_s
        self._max_connections = limits.max_connections
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Counted here, not when the protocol is made: the loop makes the protocols of a
        # whole burst of accepts before the first connection_made runs.
        guard = self._guard
        if guard.open_connections >= self._max_connections:
            self._request_handler = _over_capacity
            # It only gets a 503; it need not hold a socket for the full header deadline.
            self._header_timeout = min(self._header_timeout, OVER_CAPACITY_HEADER_S)
        guard.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        self._arm()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self._guard.open_connections -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self._request_count
        super().data_received(data)
        if self._request_count != before:
            self._partial = False
            self._disarm()
        elif data and self._waiter is not None:
            # Bytes of a request whose headers are not complete yet.
            self._partial = True
            if self._header_timer is None:
                self._arm()

    def _arm(self) -> None:
        self._header_timer = self._loop.call_later(self._header_timeout, self._header_deadline)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        waiter = self._waiter
        if self.transport is None or waiter is None or waiter.done():
            return  # a request is being handled: not a wait for headers
        if self._partial:
            self.transport.write(REQUEST_TIMEOUT)
        self.force_close()


class GuardedServer(web.Server):
    """Makes ``GuardedHandler`` protocols and counts open connections. Limits are read per
    connection, so a config reload applies to new connections."""

    def __init__(self, base: web.Server, limits: Callable[[], LimitsSettings]) -> None:
        # Server keeps its loop and handler kwargs private; take them from the one the app
        # built, so everything AppRunner set up (debug, access log, cancellation) carries over.
        super().__init__(
            base.request_handler,
            request_factory=base.request_factory,
            handler_cancellation=base.handler_cancellation,
            loop=base._loop,
            **base._kwargs,
        )
        self._limits = limits
        self.open_connections = 0

    def __call__(self) -> GuardedHandler:
        limits = self._limits()
        kwargs = {**self._kwargs, "keepalive_timeout": limits.keepalive_timeout_s}
        return GuardedHandler(self, limits, loop=self._loop, **kwargs)


class GuardedRunner(web.AppRunner):
    """``AppRunner`` serving with ``GuardedServer``; limits come from the router's config."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        app = self.app
        return GuardedServer(base, lambda: app[ROUTER].current.config.limits)
