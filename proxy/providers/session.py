# Over 400 lines: the connection, the response and the pool are one state machine, kept
# together; a third of it is docstrings.
"""The upstream HTTP/1.1 session: pooled keep-alive connections to the providers' APIs, one
request at a time per connection, responses parsed by llhttp (``httptools``, as uvicorn
parses its requests).

Why not aiohttp's client: a pooled request through ``ClientSession`` runs ~2,400 Python
bytecodes (the request and response objects, header multidicts, cookies, tracing hooks,
timers, the payload stream), more than the whole router spends deciding, relaying and
accounting for it (``benchmarks/opcodes.py``). This one sends the pre-encoded request head in
one write and wakes the caller once, with the answer usually complete: ~550 bytecodes.

What the provider APIs do not need is left out: redirects, cookies, proxies, compression
(no ``Accept-Encoding`` is sent, so answers come as they are), pipelining and HTTP/2.
A request that fails is not retried here: dispatch decides that, and a POST is not
idempotent.

Failures are ``SessionError`` subclasses, mapped to failure kinds by ``http_errors``:
``ConnectError`` (no connection: DNS, refused, TLS; ``ConnectTimeoutError`` past the connect
timeout), ``DisconnectedError`` (closed before the response head), ``PayloadError`` (broken
mid-body) and ``BadResponseError`` (not an HTTP/1.1 response we can read).
"""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Protocol, cast
from urllib.parse import urlsplit

import httptools

from .base import Sent

# What every upstream request says it is from.
USER_AGENT = "model-router/0.1"
# The response head (status line and headers) may not exceed this: aiohttp's client allowed
# 8 KiB per line; a provider's head is well under 2 KiB.
MAX_HEAD = 64 * 1024
# A stream's unread bytes past this pause reading from the upstream (TCP backpressure) until
# the relay catches up; aiohttp's client paused at 64 KiB as well.
HIGH_WATER = 64 * 1024
# Parsed URLs, per (method, url, TLS setting): URLs come from the config, so this stays small.
MAX_TARGETS = 1024


class SessionError(Exception):
    """The request got no complete answer over the transport."""


class ConnectError(SessionError):
    """No connection could be opened (DNS, refused, unreachable, TLS)."""

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(f"could not connect to {host}:{port}: {reason}")
        self.host = host
        self.port = port


class ConnectTimeoutError(ConnectError, TimeoutError):
    """Opening the connection took longer than the connect timeout."""


class DisconnectedError(SessionError):
    """The upstream closed the connection before the response head."""


class PayloadError(SessionError):
    """The connection broke, or the body was malformed, after the response head."""


class BadResponseError(SessionError):
    """Not an HTTP/1.1 response this session can read (malformed, or its head too long)."""


class Observer(Protocol):
    """Told about every request but a ``HEAD`` and every connection closed instead of pooled
    (the warmer, ``proxy/serve/warm.py``). A ``HEAD`` is the warmer's own keep-alive, never
    traffic: reporting it would call the warmer back from inside its own request."""

    def saw(self, origin: str, method: str) -> None: ...

    def lost(self, origin: str) -> None: ...


def encode_headers(headers: Mapping[str, str]) -> bytes:
    """Request headers as sent; a CR, LF or other control character in a name or value (a
    config typo or an attack through an environment variable) is refused rather than allowed
    to split the request."""
    out = []
    for name, value in headers.items():
        line = f"{name}: {value}"
        # CR, LF, NUL and the other controls (tab is allowed in a value).
        if ":" in name or not name or any(c < " " and c != "\t" for c in line) or "\x7f" in line:
            raise ValueError(f"header {name!r} has a character a header may not contain")
        out.append(line)
    return "".join(f"{line}\r\n" for line in out).encode("latin-1")


def origin_of(url: str) -> str:
    """``scheme://host[:port]`` with the default port left out, as the warmer names origins."""
    parts = _Parts(url)
    return f"{parts.scheme}://{parts.netloc}"


class _Parts:
    """A URL as sent: scheme, host and port to connect to, the path with its query, and the
    netloc as written in ``Host`` and origins (IPv6 in brackets, a name in IDNA, the port
    only when not the scheme's default)."""

    __slots__ = ("host", "netloc", "path", "port", "scheme")

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        scheme = self.scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        default = 443 if scheme == "https" else 80
        host = self.host = parts.hostname
        port = self.port = parts.port or default
        path = parts.path or "/"
        self.path = f"{path}?{parts.query}" if parts.query else path
        netloc = f"[{host}]" if ":" in host else host.encode("idna").decode("ascii")
        self.netloc = netloc if port == default else f"{netloc}:{port}"


def _keeps_alive(version: str, headers: Mapping[str, str]) -> bool:
    """HTTP/1.1 keeps the connection unless it says close; 1.0 only if it says keep-alive.
    (For a HEAD's answer: llhttp, not told the request was a HEAD, takes one without a length
    for a body read to the close.)"""
    tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
    return "close" not in tokens if version == "1.1" else "keep-alive" in tokens


class _Target:
    """One (method, URL, TLS) as sent: the pool key and the request line with its Host."""

    __slots__ = ("head", "host", "key", "origin", "port", "tls")

    def __init__(self, method: str, url: str, parts: _Parts, tls: ssl.SSLContext | None) -> None:
        host, port, path = parts.host, parts.port, parts.path
        self.host, self.port, self.tls = host, port, tls
        self.key = (host, port, tls)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        line = f"{method} {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
        if not line.isascii() or " " in path:
            raise ValueError(f"not a URL that can be sent as it is: {url!r}")
        self.head = line.encode("ascii")


class Response:
    """One upstream response: its status and head at once, its body as it arrives.

    ``release()`` hands a fully read answer's connection back to the pool (anything else is
    closed); ``close()`` closes it. One of them must be called once the caller is done.
    """

    __slots__ = (
        "_chunks",
        "_conn",
        "_done",
        "_error",
        "_headers",
        "_limit",
        "_raw",
        "_size",
        "_waiter",
        "status",
    )

    def __init__(self, conn: _Connection, status: int, raw: list[tuple[bytes, bytes]]) -> None:
        self._conn: _Connection | None = conn
        self.status = status
        self._raw = raw
        self._headers: dict[str, str] | None = None
        self._chunks: list[bytes] = []
        self._size = 0
        self._done = False  # the whole body has arrived
        self._error: SessionError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._limit = HIGH_WATER  # unread bytes past this pause the upstream

    @property
    def headers(self) -> dict[str, str]:
        """Header names in lower case; a repeated header's values joined with ", "."""
        headers = self._headers
        if headers is None:
            headers = self._headers = {}
            for raw_name, raw_value in self._raw:
                name = raw_name.decode("latin-1").lower()
                value = raw_value.decode("latin-1")
                headers[name] = f"{headers[name]}, {value}" if name in headers else value
        return headers

    @property
    def content_type(self) -> str:
        """The media type in lower case, without parameters (aiohttp's ``content_type``)."""
        value = self.headers.get("content-type")
        if not value:
            return "application/octet-stream"
        return value.split(";", 1)[0].strip().lower()

    def at_eof(self) -> bool:
        """The whole body arrived and has been read."""
        return self._done and not self._chunks

    async def read(self) -> bytes:
        """The whole body."""
        if not self._done and self._conn is not None:
            self._limit = 1 << 62  # all of it is wanted: no backpressure
            self._conn.resume()
        while not self._done:
            if self._error is not None:
                raise self._error
            await self._wait()
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._size = 0
        return data

    async def read_upto(self, limit: int) -> bytes:
        """The body's start, at most ``limit`` bytes (for error messages)."""
        if limit > self._limit and not self._done and self._conn is not None:
            self._limit = limit  # paused at the mark, it would wait for bytes never read
            self._conn.resume()
        while not self._done and self._size < limit:
            if self._error is not None:
                raise self._error
            await self._wait()
        data = b"".join(self._chunks)[:limit]
        self._chunks.clear()
        self._size = 0
        return data

    async def readany(self) -> bytes:
        """The bytes that have arrived (waiting for some); ``b""`` once the body has ended."""
        if not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            # _wait inlined: a stream waits here once a chunk, and every frame between the
            # task and this future is entered again each time it wakes.
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
            if not self._chunks:
                if self._error is not None:
                    raise self._error
                return b""
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        if self._size > HIGH_WATER and self._conn is not None:
            self._conn.resume()
        self._size = 0
        return data

    def release(self) -> None:
        """The connection back to the pool if the answer is complete, else closed."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            if self._done:
                conn.release()
            else:
                conn.close_lost()

    def close(self) -> None:
        """Close the connection (an answer not read to its end)."""
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.close_lost()

    async def _wait(self) -> None:
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # The connection's side (it also appends to _chunks, in on_body).

    def _finish(self) -> None:
        self._done = True
        if self._waiter is not None:
            self._wake()

    def _fail(self, error: SessionError) -> None:
        if not self._done and self._error is None:
            self._error = error
            self._wake()


class _Connection(asyncio.Protocol):
    """One pooled connection; llhttp calls the ``on_*`` methods from ``feed_data``."""

    __slots__ = (
        "_complete",
        "_expiry",
        "_head",
        "_method",
        "_paused",
        "_pending",
        "_raw",
        "_response",
        "_reusable",
        "_session",
        "parser",
        "target",
        "transport",
    )

    def __init__(self, session: UpstreamSession, target: _Target) -> None:
        self._session = session
        self.target = target
        self.transport: asyncio.Transport | None = None
        self.parser: httptools.HttpResponseParser | None = None
        self._method = ""
        self._head: asyncio.Future[Response] | None = None  # the caller waits for the head
        self._response: Response | None = None
        self._raw: list[tuple[bytes, bytes]] = []
        self._pending = 0  # head bytes received so far
        self._complete = False  # the response has ended: any further message is not ours
        self._reusable = False  # ... and the upstream keeps the connection open
        self._paused = False
        self._expiry: asyncio.TimerHandle | None = None

    def send(self, method: str, data: list[bytes]) -> asyncio.Future[Response]:
        """Write one request; the future is the response's head."""
        transport = self.transport
        if transport is None:  # closed by the upstream between the connect and now
            raise DisconnectedError("upstream closed the connection before the request")
        self.parser = httptools.HttpResponseParser(self)
        self._method = method
        self._raw = []
        self._pending = 0
        self._response = None
        self._complete = self._reusable = False
        head = self._head = asyncio.get_running_loop().create_future()
        transport.writelines(data)
        return head

    # asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        parser = self.parser
        if parser is None:  # bytes while idle, or after a HEAD's head: not ours to guess at
            self._broken(BadResponseError("upstream sent bytes nobody asked for"))
            return
        if self._response is None:
            room = MAX_HEAD - self._pending
            self._pending += len(data)
            if len(data) > room:
                self._past_limit(parser, data, room)
                return
        try:
            parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._malformed(exc)

    def _past_limit(self, parser: httptools.HttpResponseParser, data: bytes, room: int) -> None:
        # Only the head is bounded: a short head often comes in one read with much of a long
        # body. The read is parsed up to the limit, the rest only if the head ended in it.
        try:
            parser.feed_data(data[:room])
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._malformed(exc)
            return
        if self._response is None:
            self._broken(BadResponseError(f"response head over {MAX_HEAD} bytes"))
        else:
            self.data_received(data[room:])

    def _malformed(self, exc: Exception) -> None:
        # A 101's switch of protocol (HttpParserUpgrade) is not an answer we can read either.
        if self._response is None:
            self._broken(BadResponseError(f"malformed response: {exc!r}"))
        else:  # a bad chunk size, a second response: the answer is cut
            self._broken(PayloadError(f"malformed response body: {exc!r}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.parser = None
        self._session._gone(self)
        head, response = self._head, self._response
        if head is not None and not head.done():
            head.set_exception(DisconnectedError("upstream closed the connection before answering"))
        elif response is not None and not response._done:
            if self._reads_to_close(response):
                response._finish()  # a body without a length ends with the connection
            else:
                response._fail(PayloadError("upstream connection broke mid-answer"))

    # llhttp's callbacks

    def on_message_begin(self) -> None:
        if self._complete:  # a second response to one request
            raise BadResponseError("upstream sent a response nobody asked for")

    def on_header(self, name: bytes, value: bytes) -> None:
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        assert parser is not None
        status = parser.get_status_code()
        if status < 200:  # 100 Continue, 103 Early Hints: the real head follows
            self._raw = []
            return
        response = self._response = Response(self, status, self._raw)
        self._raw = []  # a chunked body's trailers are not the answer's headers
        if self._method == "HEAD":  # no body follows, whatever Content-Length says
            self._end(parser)
        head = self._head
        if head is not None and not head.done():
            head.set_result(response)

    def on_body(self, body: bytes) -> None:
        # Response._feed inlined: one Python call a chunk from llhttp instead of three.
        response = self._response
        if response is not None:
            response._chunks.append(body)
            size = response._size = response._size + len(body)
            waiter = response._waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
            if size > response._limit and response._conn is not None:
                self.pause()

    def on_message_complete(self) -> None:
        parser = self.parser
        if self._response is not None and parser is not None:  # else the end of a 1xx
            self._end(parser)

    def _end(self, parser: httptools.HttpResponseParser) -> None:
        response = self._response
        assert response is not None
        self._complete = True
        if self._method == "HEAD":
            self.parser = None  # whatever follows is not this answer's body
            self._reusable = _keeps_alive(parser.get_http_version(), response.headers)
        else:
            self._reusable = parser.should_keep_alive()
        response._finish()

    # The session's side.

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        """Back to the pool after a complete answer, if the upstream keeps it open."""
        transport = self.transport
        if not self._reusable or transport is None or transport.is_closing():
            self.close_lost()
            return
        self._response = None
        self._head = None
        self.parser = None
        self.resume()  # paused by an answer left unread, it would never read the next one
        self._session._pool(self)

    def close(self) -> None:
        transport = self.transport
        if transport is not None:
            transport.close()

    def close_lost(self) -> None:
        """Closed instead of pooled: the observer may open one in its place."""
        self.close()
        self._session._lost(self)

    def expire(self) -> None:
        self._expiry = None
        self.close()

    def _reads_to_close(self, response: Response) -> bool:
        headers = response.headers
        return "content-length" not in headers and "chunked" not in headers.get(
            "transfer-encoding", ""
        )

    def _broken(self, error: SessionError) -> None:
        head, response = self._head, self._response
        self.parser = None
        if head is not None and not head.done():
            head.set_exception(error)
        elif response is not None:
            response._fail(error)
        self.close()


class UpstreamSession:
    """Connections to every upstream, pooled per (host, port, TLS context).

    ``keepalive_s``: an idle pooled connection is closed after this long. ``connect_timeout_s``:
    DNS, TCP and TLS together. ``dns_cache_s``: how long a name's addresses are reused (0: not
    cached). ``observer``: told about requests and lost connections (the warmer).
    """

    def __init__(
        self,
        *,
        keepalive_s: float = 15.0,
        connect_timeout_s: float = 10.0,
        dns_cache_s: float = 10.0,
        observer: Observer | None = None,
    ) -> None:
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.dns_cache_s = dns_cache_s
        self.observer = observer
        self._targets: dict[tuple[str, str, object], _Target] = {}
        self._idle: dict[tuple[str, int, ssl.SSLContext | None], list[_Connection]] = {}
        self._open: set[_Connection] = set()
        self._dns: dict[tuple[str, int], tuple[float, list[tuple[int, str, int]]]] = {}
        self._default_tls: ssl.SSLContext | None = None
        self.closed = False

    @property
    def pooled(self) -> int:
        """Idle connections in the pool."""
        return sum(len(conns) for conns in self._idle.values())

    @property
    def in_use(self) -> int:
        """Open connections a request holds."""
        return len(self._open) - self.pooled

    async def request(
        self,
        method: str,
        url: str,
        body: bytes = b"",
        headers: bytes = b"",
        *,
        tls: ssl.SSLContext | bool = True,
        sent: Sent | None = None,
    ) -> Response:
        """Send one request (reported to the observer unless a ``HEAD``); returns once the
        response head has arrived. ``headers`` from ``encode_headers`` (Host and
        Content-Length are added here). ``sent`` is marked done once the request is written:
        a caller cancelled while waiting for the head can tell an upstream that has the
        request (and bills it) from one that never got it."""
        target = self._targets.get((method, url, tls))
        if target is None:
            target = self._target(method, url, tls)
        if self.observer is not None and method != "HEAD":
            self.observer.saw(target.origin, method)
        conn = None
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()
            if conn._expiry is not None:
                conn._expiry.cancel()
                conn._expiry = None
            if conn.transport is not None and not conn.transport.is_closing():
                break
            conn = None
        if conn is None:
            conn = await self._connect(target)
        if body or method == "POST":
            data = [target.head, headers, b"Content-Length: %d\r\n\r\n" % len(body), body]
        else:
            data = [target.head, headers, b"\r\n"]
        try:
            head = conn.send(method, data)
            if sent is not None:
                sent.done = True
            return await head
        except BaseException:
            conn.close_lost()  # cancelled, or broken: the connection is not reusable
            raise

    async def close(self) -> None:
        """Close every connection, pooled or in use."""
        self.closed = True
        for conn in list(self._open):
            conn.close()
        self._idle.clear()
        # Let the transports finish closing, as aiohttp's session close does.
        await asyncio.sleep(0)

    def _target(self, method: str, url: str, tls_setting: ssl.SSLContext | bool) -> _Target:
        parts = _Parts(url)
        tls: ssl.SSLContext | None = None
        if parts.scheme == "https":
            if isinstance(tls_setting, ssl.SSLContext):
                tls = tls_setting
            else:
                if self._default_tls is None:
                    self._default_tls = ssl.create_default_context()
                tls = self._default_tls
        target = _Target(method, url, parts, tls)
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        self._targets[(method, url, tls_setting)] = target
        return target

    async def _connect(self, target: _Target) -> _Connection:
        if self.closed:
            raise ConnectError(target.host, target.port, "the session is closed")
        loop = asyncio.get_running_loop()
        conn: _Connection | None = None
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                addresses = await self._resolve(target.host, target.port)
                last: OSError | None = None
                for family, ip, port in addresses:
                    try:
                        _, conn = await loop.create_connection(
                            lambda: _Connection(self, target),
                            ip,
                            port,
                            family=family,
                            ssl=target.tls,
                            server_hostname=target.host if target.tls is not None else None,
                        )
                        self._open.add(conn)
                        break
                    except OSError as exc:  # ssl.SSLError included
                        last = exc
                if conn is None:
                    reason = f"{type(last).__name__}: {last}" if last else "no address"
                    raise ConnectError(target.host, target.port, reason)
        except TimeoutError:
            raise ConnectTimeoutError(target.host, target.port, "connect timed out") from None
        except OSError as exc:  # the name did not resolve
            raise ConnectError(target.host, target.port, f"{type(exc).__name__}: {exc}") from None
        return conn

    async def _resolve(self, host: str, port: int) -> list[tuple[int, str, int]]:
        now = time.monotonic()
        cached = self._dns.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        addresses: list[tuple[int, str, int]] = [
            (int(family), str(addr[0]), int(addr[1])) for family, _, _, _, addr in infos
        ]
        if self.dns_cache_s > 0:
            if len(self._dns) >= MAX_TARGETS:
                self._dns.clear()
            self._dns[(host, port)] = (now + self.dns_cache_s, addresses)
        return addresses

    def _pool(self, conn: _Connection) -> None:
        if self.closed:
            conn.close()
            return
        conn._expiry = asyncio.get_running_loop().call_later(self.keepalive_s, conn.expire)
        self._idle.setdefault(conn.target.key, []).append(conn)

    def _lost(self, conn: _Connection) -> None:
        if self.observer is not None and not self.closed:
            self.observer.lost(conn.target.origin)

    def _gone(self, conn: _Connection) -> None:
        self._open.discard(conn)
        if conn._expiry is not None:
            conn._expiry.cancel()
            conn._expiry = None
        idle = self._idle.get(conn.target.key)
        if idle and conn in idle:
            idle.remove(conn)
