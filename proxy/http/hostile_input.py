# Over 400 lines: one guard per hostile input (deadlines, connections, size, depth, 100-continue).
"""Limits on hostile input, each with a clear answer: header and body read deadlines (408),
open connections (503; 429 past one address's share), body size (413, aiohttp's
``client_max_size``), JSON nesting depth and number of messages (400). The protocol also
logs a malformed request as one line without its bytes (proxy/http/hygiene.py).
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import resource
from collections.abc import Callable
from typing import Any

import orjson
from aiohttp import web, web_protocol
from aiohttp.http_exceptions import BadHttpMessage, ContentEncodingError, LineTooLong
from aiohttp.web_request import BaseRequest

from proxy.config import LimitsSettings
from proxy.errors import RouterError, bad_request, quote
from proxy.serve.state import ROUTER

from .content_coding import decoded, unsupported_encoding
from .hygiene import BadRequestLog
from .respond import error_response


async def read_body(request: web.Request, limits: LimitsSettings) -> bytes:
    """The whole body within ``body_timeout_s``; over ``client_max_size`` aiohttp raises 413.
    A Content-Length over the limit is refused before a byte of the body is read."""
    limit = request.client_max_size
    if (length := request.content_length) is not None and length > limit:
        raise RouterError(
            413,
            f"the request body is too large (Content-Length {length} is over "
            f"max_body_bytes, {limit} bytes)",
            code="request_too_large",
            headers={"Connection": "close"},
        )
    try:
        if request.content.is_eof():
            # All of it came with the headers (the usual small request): reading it cannot
            # wait, so no deadline timer is armed and cancelled for it (~4 us a request).
            return await request.read()
        async with asyncio.timeout(limits.body_timeout_s):
            return await request.read()
    except TimeoutError:
        raise RouterError(
            408,
            f"the request body did not arrive within body_timeout_s ({limits.body_timeout_s:g} s)",
            code="request_timeout",
            headers={"Connection": "close"},
        ) from None
    except web.RequestPayloadError:
        # aiohttp decodes Content-Encoding and chunked framing as the body is read; a body
        # that is not what its headers say is the client's error (a 400), not ours (a 500).
        raise _unreadable_body(request) from None


def _unreadable_body(request: web.Request) -> RouterError:
    if encoding := request.headers.get("Content-Encoding"):
        return bad_request_closing(
            f"the request body is not valid for its Content-Encoding ({quote(encoding)})",
            "invalid_content_encoding",
        )
    return bad_request_closing(
        "the request body could not be read: its chunked framing is broken", "invalid_body"
    )


def bad_request_closing(message: str, code: str) -> RouterError:
    # Closed: what follows a broken body on this connection cannot be trusted to be a request.
    return RouterError(400, message, code=code, headers={"Connection": "close"})


def parse_json(raw: bytes, limits: LimitsSettings) -> Any:
    """Parse once with orjson, then hold the nesting to ``max_json_depth``."""
    if not raw:
        raise bad_request("the request body is empty; send a JSON object", None)
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        if "depth limit" in exc.msg or "ecursion" in exc.msg:  # orjson's own cap: 1024
            raise _too_deep(limits) from None
        if "UTF-8" in exc.msg and (bad := _not_utf8(raw)) is not None:
            # orjson puts this at "line 1 column 1 (char 0)" wherever the byte is.
            raise bad_request(bad, None, "invalid_json") from None
        # orjson's message names a position, never the document's text.
        raise bad_request(
            f"the request body is not valid JSON: {exc}", None, "invalid_json"
        ) from None
    # Containers cannot nest deeper than the bytes hold opening brackets (a string may hold
    # more, never fewer), so a short body with few brackets needs no walk: two C counts, 3
    # bytecodes where the walk of a one-message chat body runs 169 (0.2 us against 0.56). Past
    # _COUNT_BYTES the counts (0.6 ns a byte) cost more than the walk, which is O(containers):
    # ~0.6 us for an autocomplete body, ~0.4 ms for 2048 messages.
    limit = limits.max_json_depth
    if len(raw) <= _COUNT_BYTES and raw.count(b"[") + raw.count(b"{") <= limit:
        return data
    if _deeper_than(data, limit):
        raise _too_deep(limits)
    return data


def _not_utf8(raw: bytes) -> str | None:
    """Where the body stops being UTF-8, by byte offset (the decoder knows; orjson does not)."""
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return (
            f"the request body is not valid UTF-8: byte 0x{raw[exc.start]:02x} at offset "
            f"{exc.start} ({exc.reason}); JSON must be UTF-8"
        )
    return None


_COUNT_BYTES = 512
_NESTS = frozenset((dict, list))  # the container types orjson gives


def _too_deep(limits: LimitsSettings) -> RouterError:
    return bad_request(
        f"the request body nests deeper than max_json_depth ({limits.max_json_depth})",
        None,
        "json_too_deep",
    )


def _deeper_than(value: Any, limit: int) -> bool:
    """True when containers nest more than ``limit`` levels (``{"a": [1]}`` is 2)."""
    if type(value) not in _NESTS:
        return False
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        for child in node.values() if type(node) is dict else node:
            if type(child) in _NESTS:  # one set test: 9 bytecodes a leaf, not 16
                if depth >= limit:
                    return True
                stack.append((child, depth + 1))
    return False


def screen(body: Any, limits: LimitsSettings) -> Any:
    """Refuse too many messages before anything else looks. (Unknown fields, those that
    would steer an upstream among them, are proxy/decide/fields.py's.)"""
    if type(body) is not dict:
        return body  # parse_intent names the problem
    messages = body.get("messages")
    if type(messages) is list and len(messages) > limits.max_messages:
        raise bad_request(
            f"'messages' has {len(messages)} entries; max_messages is {limits.max_messages}",
            "messages",
            "too_many_messages",
        )
    return body


async def expect_continue(request: web.Request) -> web.StreamResponse | None:
    """``Expect: 100-continue``: the client waits for a go-ahead before sending the body.
    Answer 413 at once (and close) when Content-Length is over the limit; 100 otherwise."""
    expect = request.headers.get("Expect", "")
    if expect.lower() != "100-continue":
        return _closing(
            RouterError(
                417, "the only Expect this server understands is 100-continue", code="expectation"
            )
        )
    limit = request.app[ROUTER].current.config.server.max_body_bytes
    length = request.content_length
    if length is not None and length > limit:
        return _closing(
            RouterError(
                413,
                f"the request body is too large (Content-Length {length} is over "
                f"max_body_bytes, {limit} bytes)",
                code="request_too_large",
            )
        )
    if request.version >= (1, 1):
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0  # the answer proper has not started
    return None


async def read_json(request: web.Request, limits: LimitsSettings) -> Any:
    """Read, parse and screen a request body; every refusal is a 4xx naming its limit."""
    raw = await read_body(request, limits)
    if (encoding := request.headers.get("Content-Encoding")) is not None:
        raw = decoded(raw, encoding, request.client_max_size)
    return screen(parse_json(raw, limits), limits)


# --- the connection layer: header deadline and connection cap -------------------------

_TIMEOUT_BODY = RouterError(
    408, "the request headers did not arrive in time (header_timeout_s)", code="request_timeout"
).body()
REQUEST_TIMEOUT = (
    b"HTTP/1.1 408 Request Timeout\r\nContent-Type: application/json\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(_TIMEOUT_BODY)
) + _TIMEOUT_BODY


OVER_CAPACITY_HEADER_S = 1.0
# Descriptors kept back from client connections: the listening socket, the logs, the usage
# database (db, -wal, -shm), the loop's own, the probes' upstream sockets, and the over-cap
# connections that are accepted only to be told 503.
FD_RESERVE = 64

log = logging.getLogger("model_router")


def fd_connection_cap() -> int | None:
    """How many client connections RLIMIT_NOFILE leaves room for, each with one upstream
    socket beside it; None when the limit is unlimited. Past it a new connection gets the
    over-capacity 503 instead of an accept() failing with EMFILE and an upstream connect
    failing in a way that would count against a healthy provider."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return None
    return max((soft - FD_RESERVE) // 2, 1)


# aiohttp's C parser callbacks that raise LineTooLong for the request line, not a header.
_REQUEST_LINE_CALLBACKS = frozenset({"cb_on_url", "cb_on_status"})


def _too_large(exc: BaseException | None) -> RouterError | None:
    """414 for a request-target past aiohttp's line limit, 431 for a header field past it or
    too many header fields (RFC 9110 15.5.15, RFC 6585 5), where aiohttp says 400."""
    if isinstance(exc, LineTooLong):
        tb, callbacks = exc.__traceback__, set()
        while tb is not None:
            # Cython names them "aiohttp._http_parser.cb_on_url".
            callbacks.add(tb.tb_frame.f_code.co_name.rpartition(".")[2])
            tb = tb.tb_next
        if callbacks & _REQUEST_LINE_CALLBACKS:
            return RouterError(
                414,
                "the request line is too long (over 8190 bytes); the router's paths are short, "
                "so look at what the client puts in the URL",
                code="uri_too_long",
            )
        what = "a request header field is too long (over 8190 bytes)"
    elif isinstance(exc, BadHttpMessage) and "Too many headers" in exc.message:
        what = "the request has too many header fields (over 128)"
    else:
        return None
    return RouterError(431, what, code="request_header_fields_too_large")


def _closing(err: RouterError) -> web.Response:
    resp = error_response(err)
    resp.force_close()
    return resp


async def _over_capacity(request: BaseRequest) -> web.StreamResponse:
    return _closing(
        RouterError(
            503,
            "the router is at its max_connections limit; retry shortly",
            type="server_error",
            code="too_many_connections",
            headers={"Retry-After": "1"},
        )
    )


async def _over_address_cap(request: BaseRequest) -> web.StreamResponse:
    return _closing(
        RouterError(
            429,
            "too many open connections from your address (max_connections_per_address); "
            "close idle ones or retry shortly",
            type="rate_limit_error",
            code="too_many_connections_from_address",
            headers={"Retry-After": "1"},
        )
    )


def peer_of(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    return str(peer[0]) if isinstance(peer, tuple) and peer else "unix"


@functools.cache
def _networks(
    trusted: tuple[str, ...],
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    return tuple(ipaddress.ip_network(net, strict=False) for net in trusted)


def is_trusted(address: str, trusted: tuple[str, ...]) -> bool:
    """True when ``address`` is one of the configured reverse proxies (address or CIDR)."""
    if not trusted:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in _networks(trusted))


class AddressCounts:
    """Open connections per client address, for the per-address cap."""

    __slots__ = ("held",)

    def __init__(self) -> None:
        self.held: dict[str, int] = {}

    def open(self, address: str, cap: int) -> bool:
        """Count a new connection; False when the address already held ``cap``."""
        held = self.held.get(address, 0)
        self.held[address] = held + 1
        return held < cap

    def close(self, address: str) -> None:
        left = self.held[address] - 1
        if left:
            self.held[address] = left
        else:
            del self.held[address]


def client_address(request: web.BaseRequest, trusted: tuple[str, ...]) -> str:
    """The client's address: the peer, or when the peer is a trusted proxy, the rightmost
    X-Forwarded-For entry that is not itself a trusted proxy."""
    peer = request.remote or "?"
    if not is_trusted(peer, trusted):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
    for hop in reversed(hops):
        if hop and not is_trusted(hop, trusted):
            return hop[:64]
    return peer


# How long a connection cut off by the header deadline is read (and dropped) after its 408.
LINGER_S = 0.5


# The item aiohttp's protocol queues for a request it could not parse (private, see below).
_PARSE_ERROR: type | None = getattr(web_protocol, "_ErrInfo", None)
# Where this aiohttp has both, data_received looks at the queue itself before calling
# _fail_body_in_progress (which checks again, and keeps working where they are missing).
_WATCHES_QUEUE = _PARSE_ERROR is not None and "_messages" in getattr(
    web_protocol.RequestHandler, "__slots__", ()
)
# Called by the class, not through super(): the same method, a few bytecodes a packet less.
_PROTOCOL_DATA_RECEIVED = web_protocol.RequestHandler.data_received


class _NoParseError:
    """Stands for _ErrInfo where aiohttp has none: nothing is an instance of it."""


_QUEUED_ERROR: type = _PARSE_ERROR or _NoParseError


class GuardedHandler(web_protocol.RequestHandler):
    """aiohttp's HTTP protocol plus a header deadline and the connection cap.

    The header timer runs from connection open, and on a kept-alive connection from the
    first byte of the next request, until that request's headers are parsed. When it
    fires while aiohttp still waits for a request, the connection is closed (after a 408
    if part of a request came). Idle kept-alive connections are aiohttp's keepalive's job.
    """

    __slots__ = (
        "_address",
        "_counted",
        "_guard",
        "_header_timeout",
        "_header_timer",
        "_limits",
        "_lingering",
        "_max_connections",
        "_partial",
        "_received",
    )

    def __init__(self, manager: GuardedServer, limits: LimitsSettings, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._guard = manager
        self._limits = limits
        self._header_timeout = limits.header_timeout_s
        self._max_connections = manager.connection_cap(limits)
        self._header_timer: asyncio.TimerHandle | None = None
        self._partial = False
        self._lingering = False
        self._counted = False
        self._address: str | None = None  # counted against the per-address cap
        self._received = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Counted here, not when the protocol is made: the loop makes the protocols of a
        # whole burst of accepts before the first connection_made runs.
        guard, limits = self._guard, self._limits
        address = peer_of(transport)
        per_address = guard.by_address
        if guard.open_connections >= self._max_connections:
            self._request_handler = _over_capacity
            # It only gets a 503; it need not hold a socket for the full header deadline.
            self._header_timeout = min(self._header_timeout, OVER_CAPACITY_HEADER_S)
        elif not is_trusted(address, limits.trusted_proxies):
            if not per_address.open(address, limits.per_address):
                self._request_handler = _over_address_cap
                self._header_timeout = min(self._header_timeout, OVER_CAPACITY_HEADER_S)
            self._address = address
        guard.open_connections += 1
        self._counted = True
        super().connection_made(transport)
        # A connection that has not sent a request yet has shown nothing: a shorter deadline.
        self._arm(min(self._header_timeout, limits.first_request_timeout_s))

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        if self._counted:
            self._counted = False
            self._guard.open_connections -= 1
        if (address := self._address) is not None:
            self._address = None
            self._guard.by_address.close(address)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """A request aiohttp could not parse (or a failure outside every handler): one log
        line without the request's bytes, and an answer in OpenAI's shape that quotes none."""
        address = self._address or (peer_of(self.transport) if self.transport else "?")
        self._guard.bad_requests.bad_request(address, exc or f"HTTP {status}", self._received)
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send an error")
        if status >= 500:
            err = RouterError(
                status, "internal error in the router", type="server_error", code="internal_error"
            )
        elif (too_large := _too_large(exc)) is not None:
            err = too_large
        elif isinstance(exc, ContentEncodingError) and "Can not decode" in exc.message:
            # aiohttp refuses a coding it has no decoder for (br, zstd) while parsing the head:
            # "Can not decode content-encoding: brotli (br). Please install `Brotli`".
            named = exc.message.split(": ", 1)[-1].split(".")[0]
            err = unsupported_encoding(named.rpartition("(")[2].rstrip(")") or named)
        else:
            what = type(exc).__name__ if exc is not None else "malformed request"
            err = RouterError(
                status, f"the request is not valid HTTP/1.1 ({what})", code="bad_request"
            )
        return _closing(err)

    def log_exception(self, *args: Any, **kw: Any) -> None:
        # aiohttp's "Unhandled exception" with a traceback that may quote the request.
        exc = kw.get("exc_info")
        what = exc if isinstance(exc, BaseException) else "unhandled error"
        address = self._address or "?"
        self._guard.bad_requests.bad_request(address, what, self._received)

    def data_received(self, data: bytes) -> None:
        if self._lingering:
            return  # after a 408: read and dropped, see _header_deadline
        self._received += len(data)
        before = self._request_count
        _PROTOCOL_DATA_RECEIVED(self, data)
        if self._request_count != before:
            self._partial = False
            if (timer := self._header_timer) is not None:  # _disarm, inline
                timer.cancel()
                self._header_timer = None
            # Only a queued parse error needs the call (~25 bytecodes a request otherwise);
            # where the queue is not a slot of this aiohttp's, the call looks for itself.
            if not _WATCHES_QUEUE or (
                (queued := self._messages) and isinstance(queued[-1][0], _QUEUED_ERROR)
            ):
                self._fail_body_in_progress()
        elif data and self._waiter is not None:
            # Bytes of a request whose headers are not complete yet.
            self._partial = True
            if self._header_timer is None:
                self._arm()

    def _fail_body_in_progress(self) -> None:
        """aiohttp's parser queues a framing error (a bad chunk size) as the next message but
        leaves the body it broke waiting for bytes that will never come: hand that body the
        error, so its handler answers 400 now instead of 408 after ``body_timeout_s``. The
        body is the queued message's before the error when its handler has not started yet
        (headers and bad bytes came together), else the current request's."""
        # Private names of aiohttp 3.14: where another version lacks them, the body waits for
        # body_timeout_s (a 408) as it did before, rather than this hook failing a connection.
        messages = getattr(self, "_messages", None)
        if _PARSE_ERROR is None or not messages or not isinstance(messages[-1][0], _PARSE_ERROR):
            return
        if len(messages) >= 2:
            payload = messages[-2][1]
        else:
            request = getattr(self, "_current_request", None)
            if request is None:
                return
            payload = request.content
        if not payload.is_eof():
            payload.set_exception(web.RequestPayloadError("broken chunked framing"))

    def _arm(self, timeout_s: float | None = None) -> None:
        self._header_timer = self._loop.call_later(
            self._header_timeout if timeout_s is None else timeout_s, self._header_deadline
        )

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_deadline(self) -> None:
        self._header_timer = None
        waiter = self._waiter
        if self.transport is None or waiter is None or waiter.done():
            return  # a request is being handled: not a wait for headers
        if not self._partial:
            self.force_close()
            return
        # Closing a socket with unread input sends a reset, and a reset can reach the client
        # before it has read our 408. So: the 408, then FIN, then read and drop whatever the
        # client still sends for LINGER_S (not the whole of it: a dribbler is why we are here).
        transport = self.transport
        transport.write(REQUEST_TIMEOUT)
        self._lingering = True
        if transport.can_write_eof():
            transport.write_eof()
        self._loop.call_later(LINGER_S, self.force_close)


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
        self.by_address = AddressCounts()
        self.bad_requests = BadRequestLog()
        self.fd_cap = fd_connection_cap()
        self._warned_for: int | None = None

    def connection_cap(self, limits: LimitsSettings) -> int:
        """``max_connections``, lowered to what the descriptor limit can hold."""
        if self.fd_cap is None or self.fd_cap >= limits.max_connections:
            return limits.max_connections
        if self._warned_for != limits.max_connections:
            self._warned_for = limits.max_connections
            log.warning(
                "the open-file limit (RLIMIT_NOFILE %d, systemd LimitNOFILE=) holds %d client "
                "connections with their upstream sockets; max_connections=%d is lowered to it",
                resource.getrlimit(resource.RLIMIT_NOFILE)[0],
                self.fd_cap,
                limits.max_connections,
            )
        return self.fd_cap

    def __call__(self) -> GuardedHandler:
        limits = self._limits()
        # lingering_time 0: a request answered before its body was read (a 413, a 401) has
        # its connection closed instead of the rest of the body read and thrown away.
        kwargs = {
            **self._kwargs,
            "keepalive_timeout": limits.keepalive_timeout_s,
            "lingering_time": 0.0,
        }
        return GuardedHandler(self, limits, loop=self._loop, **kwargs)


class GuardedRunner(web.AppRunner):
    """``AppRunner`` serving with ``GuardedServer``; limits come from the router's config."""

    __slots__ = ()

    async def _make_server(self) -> web.Server:
        base = await super()._make_server()
        app = self.app
        server = GuardedServer(base, lambda: app[ROUTER].current.config.limits)
        server.connection_cap(app[ROUTER].current.config.limits)  # warns now, not at a peak
        return server
