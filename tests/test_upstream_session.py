"""The upstream HTTP/1.1 session (``proxy/providers/session.py``) against upstreams that control
every byte: raw ``asyncio`` servers on 127.0.0.1 that split, trickle, cut, repeat and mangle
their answers. The session is checked from outside: what the caller gets, what the server
sees (connections, EOFs), the ``pooled``/``in_use`` counters and the observer's calls."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import random
import socket
import ssl
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path

import pytest
import uvloop
import yarl

from proxy.providers.http_errors import error_body, transport_error
from proxy.providers.session import (
    BadResponseError,
    ConnectError,
    ConnectTimeoutError,
    DisconnectedError,
    PayloadError,
    SessionError,
    UpstreamSession,
    encode_headers,
    origin_of,
)
from proxy.sim.tls import make_sim_tls

# A hang is the failure mode of most of these; it fails here, not at the suite's 60 s.
pytestmark = pytest.mark.timeout(15)

Action = Callable[["Upstream", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
Answer = bytes | Action


class Upstream:
    """A raw HTTP/1.1 upstream: reads each request (head and Content-Length body) and answers
    it with the next of ``answers`` (the last one repeats): bytes written in pieces of
    ``piece`` bytes (0: one write), or an action that does what it likes with the socket."""

    def __init__(
        self, answers: Sequence[Answer], *, piece: int = 0, tls: ssl.SSLContext | None = None
    ) -> None:
        self.answers = list(answers)
        self.piece = piece
        self.tls = tls
        self.connections = 0
        self.eofs = 0  # connections the client closed
        self.requests: list[bytes] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self.url = ""

    async def __aenter__(self) -> Upstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0, ssl=self.tls)
        self.port: int = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}/v1/x"
        return self

    async def __aexit__(self, *_: object) -> None:
        self._server.close()
        for writer in self._writers:
            writer.close()  # each handler then sees its EOF and ends
        await until(lambda: self.open == 0, "a handler outlived its connection")
        await self._server.wait_closed()

    @property
    def origin(self) -> str:
        return origin_of(self.url)

    async def write(self, writer: asyncio.StreamWriter, data: bytes) -> None:
        step = self.piece or len(data) or 1
        for i in range(0, len(data), step):
            writer.write(data[i : i + step])
            await writer.drain()
            if self.piece:
                await asyncio.sleep(0)  # let the client read this piece on its own
        await writer.drain()

    @property
    def open(self) -> int:
        """Connections the server still holds open."""
        return len(self._tasks)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.append(writer)
        self.connections += 1
        try:
            while not writer.is_closing():
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    self.eofs += 1
                    return
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers[min(len(self.requests), len(self.answers)) - 1]
                if isinstance(answer, bytes):
                    await self.write(writer, answer)
                else:
                    await answer(self, reader, writer)
        except ConnectionError:
            pass  # the client went away mid-answer: what some tests do on purpose
        finally:
            writer.close()
            self._tasks.discard(task)


def then_close(data: bytes) -> Action:
    """Answer with ``data``, then close the connection."""

    async def act(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.write(writer, data)
        writer.close()

    return act


def then_stall(data: bytes, sent: asyncio.Event | None = None) -> Action:
    """Answer with ``data`` and say no more until the client closes the connection."""

    async def act(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await up.write(writer, data)
        if sent is not None:
            sent.set()
        await reader.read()  # b"" at the client's EOF
        writer.close()

    return act


hang_up = then_close(b"")


class Seen:
    """The session's observer: every request's origin and every connection lost."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.losses: list[str] = []

    def saw(self, origin: str, method: str) -> None:
        self.requests.append((origin, method))

    def lost(self, origin: str) -> None:
        self.losses.append(origin)


async def until(condition: Callable[[], bool], what: str) -> None:
    """A bound on liveness (5 s), not a timing assertion."""
    deadline = asyncio.get_running_loop().time() + 5
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(what)
        await asyncio.sleep(0.005)


@contextlib.asynccontextmanager
async def opened(**kwargs: float) -> AsyncIterator[tuple[UpstreamSession, Seen]]:
    """A session with an observer; closed at the end, and then nothing may be left open."""
    seen = Seen()
    session = UpstreamSession(observer=seen, **kwargs)
    try:
        yield session, seen
    finally:
        await session.close()
        await until(lambda: session.pooled == 0 and session.in_use == 0, "close() left some")


async def settled(session: UpstreamSession, pooled: int) -> None:
    await until(
        lambda: (session.pooled, session.in_use) == (pooled, 0),
        f"expected {pooled} pooled, none in use; got {session.pooled}, {session.in_use}",
    )


async def fetch(session: UpstreamSession, url: str) -> bytes:
    """A GET read to its end and released."""
    resp = await session.request("GET", url)
    body = await resp.read()
    resp.release()
    return body


def ok(body: bytes, *extra: bytes) -> bytes:
    head = b"HTTP/1.1 200 OK\r\n" + b"".join(h + b"\r\n" for h in extra)
    return head + b"Content-Length: %d\r\n\r\n" % len(body) + body


CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;name=value;x\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\nX-Other: u\r\n\r\n"
)
EARLY = (
    b"HTTP/1.1 100 Continue\r\n\r\n"
    b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
)

FRAMINGS = [
    pytest.param("POST", ok(b"hello"), 200, b"hello", True, id="content-length"),
    pytest.param("POST", CHUNKED, 200, b"hello world", True, id="chunked-ext-trailers"),
    pytest.param(
        "POST", then_close(b"HTTP/1.1 200 OK\r\n\r\nto the end"), 200, b"to the end", False,
        id="close-delimited-1.1",
    ),
    pytest.param(
        "GET", then_close(b"HTTP/1.0 200 OK\r\n\r\nto the end"), 200, b"to the end", False,
        id="close-delimited-1.0",
    ),
    pytest.param(
        "GET", b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 2\r\n\r\nok",
        200, b"ok", True, id="1.0-keep-alive",
    ),
    pytest.param("POST", b"HTTP/1.1 204 No Content\r\n\r\n", 204, b"", True, id="204"),
    pytest.param(
        "HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n", 200, b"", True,
        id="head-with-length",
    ),
    # No length: a HEAD's answer has no body all the same, and its connection is kept ...
    pytest.param("HEAD", b"HTTP/1.1 405 No\r\n\r\n", 405, b"", True, id="head-no-length"),
    # ... unless it says close, or is HTTP/1.0 without keep-alive.
    pytest.param(
        "HEAD", b"HTTP/1.1 405 No\r\nConnection: close\r\n\r\n", 405, b"", False,
        id="head-close",
    ),
    pytest.param("HEAD", b"HTTP/1.0 404 No\r\n\r\n", 404, b"", False, id="head-1.0"),
    pytest.param(
        "HEAD", b"HTTP/1.0 404 No\r\nConnection: Keep-Alive\r\n\r\n", 404, b"", True,
        id="head-1.0-keep-alive",
    ),
    pytest.param("POST", ok(b"bye", b"Connection: close"), 200, b"bye", False, id="conn-close"),
    pytest.param("POST", EARLY + ok(b"real"), 200, b"real", True, id="100-and-103-first"),
]  # fmt: skip


@pytest.mark.parametrize("piece", [0, 1], ids=["whole", "byte-by-byte"])
@pytest.mark.parametrize(("method", "answer", "status", "body", "reused"), FRAMINGS)
async def test_each_framing_is_read_to_its_end_and_pooled_only_if_reusable(
    method: str, answer: Answer, status: int, body: bytes, reused: bool, piece: int
) -> None:
    async with Upstream([answer], piece=piece) as up, opened() as (session, seen):
        for _ in range(2):
            resp = await session.request(method, up.url, b'{"n":1}' if method == "POST" else b"")
            assert resp.status == status
            assert await resp.read() == body
            assert resp.at_eof()
            # Neither a 1xx's headers nor the trailers are the answer's headers.
            assert not {"link", "x-trailer", "x-other"} & resp.headers.keys()
            resp.release()
            await settled(session, pooled=1 if reused else 0)
        assert up.connections == (1 if reused else 2)
        assert seen.losses == ([] if reused else [up.origin] * 2)
        # A HEAD (the warmer's keep-alive) is not reported: the observer is the warmer.
        assert seen.requests == ([] if method == "HEAD" else [(up.origin, method)] * 2)
    assert up.requests[0].startswith(f"{method} /v1/x HTTP/1.1\r\nHost: 127.0.0.1:".encode())


async def test_the_request_is_sent_as_encoded_with_its_length() -> None:
    async with Upstream([ok(b"")]) as up, opened() as (session, seen):
        headers = encode_headers({"Authorization": "Bearer k", "X-A": "1"})
        (await session.request("POST", up.url + "?q=1", b"abc", headers)).release()
        (await session.request("GET", up.url)).release()
        assert seen.requests == [(up.origin, "POST"), (up.origin, "GET")]
    port = up.port
    assert up.requests == [
        b"POST /v1/x?q=1 HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer k\r\n"
        b"X-A: 1\r\nContent-Length: 3\r\n\r\nabc" % port,
        b"GET /v1/x HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n" % port,
    ]


async def test_repeated_headers_are_joined_and_names_are_lower_case() -> None:
    answer = ok(b"", b"Set-Thing: a", b"set-thing: b", b"Content-Type: Text/Event-Stream; x=y")
    async with Upstream([answer]) as up, opened() as (session, _):
        resp = await session.request("GET", up.url)
        assert resp.headers["set-thing"] == "a, b"
        assert resp.content_type == "text/event-stream"
        resp.release()


async def test_a_pooled_connection_the_server_closed_is_replaced_by_a_new_one() -> None:
    idle = asyncio.Event()

    async def close_when_idle(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        await up.write(writer, ok(b"one"))
        await idle.wait()
        writer.close()

    async with Upstream([close_when_idle, ok(b"two")]) as up, opened() as (session, _):
        assert await fetch(session, up.url) == b"one"
        assert session.pooled == 1
        idle.set()
        await settled(session, pooled=0)  # the server's FIN is seen while the connection idles
        assert await fetch(session, up.url) == b"two"
        await settled(session, pooled=1)
        assert up.connections == 2


async def test_an_idle_connection_is_closed_by_us_after_the_keepalive() -> None:
    async with Upstream([ok(b"x")]) as up, opened(keepalive_s=0.05) as (session, seen):
        assert await fetch(session, up.url) == b"x"
        assert session.pooled == 1
        await until(lambda: up.eofs == 1, "the idle connection was never closed")
        await settled(session, pooled=0)
        assert await fetch(session, up.url) == b"x"
        assert up.connections == 2
        assert seen.losses == []  # an expiry is not a loss the warmer replaces


async def test_bytes_after_a_complete_answer_are_never_the_next_answer() -> None:
    junk = ok(b"wrong")
    later = asyncio.Event()

    async def junk_while_idle(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(ok(b"first"))
        await later.wait()
        writer.write(junk)

    for first in (ok(b"first") + junk, junk_while_idle):
        later.clear()
        async with Upstream([first, ok(b"right")]) as up, opened() as (session, _):
            assert await fetch(session, up.url) == b"first"
            later.set()
            await until(lambda: up.eofs == 1, "a connection with stray bytes was kept")
            await settled(session, pooled=0)
            assert await fetch(session, up.url) == b"right"
            assert up.connections == 2


CUT_CHUNKED = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n9\r\nwor"
BIG_HEAD = b"HTTP/1.1 200 OK\r\n" + b"X-Pad: %s\r\n" % (b"a" * 1000) * 70 + b"\r\n"

FAILURES = [
    # (answer, piece, raised by request() or None, raised by read(), kind)
    pytest.param(hang_up, 0, DisconnectedError, None, "connect", id="closed-before-a-byte"),
    pytest.param(
        then_close(b"HTTP/1.1 200 OK\r\nContent-Len"), 0, DisconnectedError, None, "connect",
        id="closed-mid-head",
    ),
    pytest.param(
        then_close(b"HTTP/1.1 20x OK\r\n\r\n"), 0, BadResponseError, None, "connect",
        id="malformed-status-line",
    ),
    pytest.param(
        then_close(b"SSH-2.0-OpenSSH\r\n\r\n"), 0, BadResponseError, None, "connect",
        id="not-http",
    ),
    pytest.param(then_stall(BIG_HEAD), 0, BadResponseError, None, "connect", id="huge-head"),
    pytest.param(
        then_stall(BIG_HEAD), 4096, BadResponseError, None, "connect", id="huge-head-trickled"
    ),
    pytest.param(
        then_stall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade"
                   b"\r\n\r\n"),
        0, BadResponseError, None, "connect", id="101-upgrade",
    ),
    pytest.param(
        then_close(ok(b"0123456789")[:-4]), 0, None, PayloadError, "server",
        id="closed-mid-content-length",
    ),
    pytest.param(then_close(CUT_CHUNKED), 0, None, PayloadError, "server", id="closed-mid-chunk"),
    pytest.param(
        then_stall(CUT_CHUNKED.split(b"9\r\n")[0] + b"zz\r\n"), 0, None, PayloadError, "server",
        id="malformed-chunk-size",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("answer", "piece", "on_request", "on_read", "kind"), FAILURES)
async def test_each_failure_has_its_error_and_kind_and_leaves_nothing_open(
    answer: Answer,
    piece: int,
    on_request: type[SessionError] | None,
    on_read: type[SessionError] | None,
    kind: str,
) -> None:
    async with Upstream([answer], piece=piece) as up, opened() as (session, seen):
        error: SessionError
        if on_request is not None:
            with pytest.raises(on_request) as info:
                await session.request("POST", up.url, b"{}")
            error = info.value
        else:
            resp = await session.request("POST", up.url, b"{}")
            assert on_read is not None
            with pytest.raises(on_read) as info:
                await resp.read()
            error = info.value
            assert not resp.at_eof()
            resp.close()
        assert transport_error(error).kind == kind
        await settled(session, pooled=0)
        assert seen.losses == [up.origin]
        await until(lambda: up.open == 0, "the server's connection was never closed")


async def test_a_connection_closed_at_once_is_a_connect_failure() -> None:
    # (An answer written before the request was read is not refused: HTTP lets a server
    # answer early, a 413 say, and that is indistinguishable from a fast answer.)
    async def spoil(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.close()

    server = await asyncio.start_server(spoil, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        async with opened() as (session, _):
            for _ in range(3):  # closed before or after our send: either is this error
                with pytest.raises(DisconnectedError) as info:
                    await session.request("POST", f"http://127.0.0.1:{port}/x", b"{}")
                assert transport_error(info.value).kind == "connect"
                await settled(session, pooled=0)
    finally:
        server.close()
        await server.wait_closed()


async def test_a_cut_stream_gives_what_arrived_then_the_error() -> None:
    async with Upstream([then_close(CUT_CHUNKED)]) as up, opened() as (session, _):
        resp = await session.request("POST", up.url, b"{}")
        got = b""
        with pytest.raises(PayloadError):
            while data := await resp.readany():
                got += data
        assert got == b"hellowor"
        resp.close()


async def test_a_refused_connection_is_a_connect_failure() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
        async with opened() as (session, seen):
            with pytest.raises(ConnectError) as info:
                await session.request("POST", f"http://127.0.0.1:{port}/x", b"{}")
            assert transport_error(info.value).kind == "connect"
            assert (info.value.host, info.value.port) == ("127.0.0.1", port)
            assert seen.requests == [(f"http://127.0.0.1:{port}", "POST")]
            await settled(session, pooled=0)


async def test_a_connect_that_hangs_times_out_as_a_timeout() -> None:
    # A listener that never accepts, its backlog filled: Linux drops further SYNs, so a
    # connect to it hangs on loopback (the SYN is retried) until our timeout.
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        port = listener.getsockname()[1]
        fillers = [socket.socket() for _ in range(4)]
        try:
            for filler in fillers:
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
            async with opened(connect_timeout_s=0.2) as (session, _):
                with pytest.raises(ConnectTimeoutError) as info:
                    await session.request("POST", f"http://127.0.0.1:{port}/x", b"{}")
                # As aiohttp's connect timeout was: a timeout, not a refusal.
                assert transport_error(info.value).kind == "timeout"
                assert isinstance(info.value, ConnectError)
                await settled(session, pooled=0)
        finally:
            for filler in fillers:
                filler.close()


async def test_a_request_cancelled_before_the_head_closes_its_connection() -> None:
    async with Upstream([then_stall(b"")]) as up, opened() as (session, seen):
        task = asyncio.create_task(session.request("POST", up.url, b"{}"))
        await until(lambda: len(up.requests) == 1, "the request never arrived")
        assert session.in_use == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await settled(session, pooled=0)
        await until(lambda: up.open == 0, "the server never saw the connection close")
        assert seen.losses == [up.origin]


async def test_a_stream_closed_mid_body_closes_its_connection() -> None:
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nfirst\r\n"
    async with Upstream([then_stall(head)]) as up, opened() as (session, seen):
        resp = await session.request("POST", up.url, b"{}")
        assert await resp.readany() == b"first"
        reader = asyncio.create_task(resp.readany())  # waiting for more when its caller goes
        await asyncio.sleep(0)
        reader.cancel()
        with pytest.raises(asyncio.CancelledError):
            await reader
        assert not resp.at_eof()
        resp.close()
        await settled(session, pooled=0)
        assert seen.losses == [up.origin]
        # The server's stall ends at our EOF: the connection is really closed.
        await until(lambda: up.open == 0, "the server never saw the connection close")


BIG = random.Random(7).randbytes(4 << 20)


@functools.cache
def tls_pair() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """The server's context and a client's that trusts its throwaway CA (and nothing else)."""
    with tempfile.TemporaryDirectory() as directory:
        tls = make_sim_tls(Path(directory))
        return tls.server, tls.client_context()  # read now: the directory goes


def mismatch(got: bytes, want: bytes) -> str | None:
    """Where ``got`` first differs from ``want`` (pytest's own diff of 4 MiB would not end)."""
    if got == want:
        return None
    at = next((i for i, (a, b) in enumerate(zip(got, want, strict=False)) if a != b), None)
    return f"{len(got)} bytes of {len(want)}, first difference at {at}"


def streamed(body: bytes, progress: list[int]) -> Action:
    """A chunked answer written as fast as the client lets it, in 16 KiB chunks."""

    async def act(up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A small, fixed send buffer: the kernel's autotuned one would take megabytes before
        # the writer felt a reader that stopped reading.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 131072)
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i in range(0, len(body), 16384):
            piece = body[i : i + 16384]
            writer.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            await writer.drain()
            progress.append(i + len(piece))
        writer.write(b"0\r\n\r\n")
        await writer.drain()

    return act


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
async def test_a_slow_reader_holds_back_a_fast_stream_and_gets_every_byte_in_order(
    tls: bool,
) -> None:
    # Over TLS the socket is read in larger gulps before the pause (the SSL layer reads ahead
    # up to 256 KiB), so the kernel grows its receive buffer (to 6 MiB by default) and the
    # SSL layers on both ends buffer too: up to ~10 MiB is held in all on uvloop. The body is
    # larger, and the bound looser, than for plain TCP.
    server, client = tls_pair() if tls else (None, True)
    body, bound = (BIG * 4, 12 << 20) if tls else (BIG, 2 << 20)
    progress: list[int] = [0]
    async with Upstream([streamed(body, progress)], tls=server) as up, opened() as (session, _):
        resp = await session.request("POST", up.url, b"{}", tls=client)
        held = -1
        while held != progress[-1]:  # the reader is away until the writer is held back
            held = progress[-1]
            await asyncio.sleep(0.1)
        got = bytearray()
        while data := await resp.readany():
            got += data
            await asyncio.sleep(0.0005)
        assert mismatch(bytes(got), body) is None
        assert held < bound, f"{held} bytes were sent while nothing was read"
        resp.release()
        await settled(session, pooled=1)


@pytest.mark.parametrize("tls", [False, True], ids=["http", "https"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_read_returns_a_whole_4_mib_body_past_the_pause(chunked: bool, tls: bool) -> None:
    server, client = tls_pair() if tls else (None, True)
    answer = streamed(BIG, []) if chunked else ok(BIG)
    async with Upstream([answer], tls=server) as up, opened() as (session, _):
        for _ in range(2):
            resp = await session.request("POST", up.url, b"{}", tls=client)
            await asyncio.sleep(0.05)  # paused by now, before read() is called
            assert mismatch(await resp.read(), BIG) is None
            resp.release()
        await settled(session, pooled=1)
        assert up.connections == 1


async def test_a_small_head_with_a_large_body_in_one_read_is_not_a_huge_head() -> None:
    body = bytes(200 << 10)  # arrives with its head in the first read (256 KiB)
    async with Upstream([ok(body)]) as up, opened() as (session, _):
        resp = await session.request("POST", up.url, b"{}")
        assert mismatch(await resp.read(), body) is None
        resp.release()


async def test_a_bounded_read_past_the_pause_does_not_deadlock() -> None:
    async with Upstream([then_stall(ok(BIG))]) as up, opened() as (session, _):
        resp = await session.request("POST", up.url, b"{}")
        async with asyncio.timeout(5):  # paused at 64 KiB, it would wait forever
            assert mismatch(await resp.read_upto(300_000), BIG[:300_000]) is None
        resp.close()


async def test_an_error_body_left_unread_past_the_pause_does_not_stall_the_next_request() -> None:
    # The body's last bytes come in one segment with the byte that crosses the pause mark: the
    # answer is complete and reading is paused when the error body is taken.
    body = bytes(range(256)) * 256 + b"0123456789"
    head = b"HTTP/1.1 500 Oops\r\nContent-Length: %d\r\n\r\n" % len(body)

    async def in_two(
        up: Upstream, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        writer.write(head + body[:-20])
        await writer.drain()
        await asyncio.sleep(0.02)
        writer.write(body[-20:])

    async with Upstream([in_two, ok(b"next")]) as up, opened() as (session, _):
        resp = await session.request("POST", up.url, b"{}")
        assert resp.status == 500
        assert mismatch(await error_body(resp), body[: 64 * 1024]) is None
        async with asyncio.timeout(5):  # a paused connection pooled would never answer
            resp = await session.request("POST", up.url, b"{}")
            assert await resp.read() == b"next"
        resp.release()
        assert up.connections == 1  # pooled (and reading again) after the error body


async def test_close_closes_pooled_and_in_use_connections() -> None:
    chunk = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n"
    async with Upstream([ok(b"a")]) as up, opened() as (session, seen):
        assert await fetch(session, up.url) == b"a"
        other = Upstream([then_stall(chunk)])
        async with other:
            streaming = await session.request("GET", other.url)
            assert await streaming.readany() == b"hi"
            assert (session.pooled, session.in_use) == (1, 1)
            await session.close()
            with pytest.raises(PayloadError):
                await streaming.read()
            await until(lambda: up.eofs == 1 and other.open == 0, "a connection stayed open")
            streaming.close()
        with pytest.raises(ConnectError):
            await session.request("GET", up.url)
        assert seen.losses == []  # closing the session is not losing connections


async def test_tls_works_with_the_trusted_ca_and_is_refused_without_it() -> None:
    server, client = tls_pair()
    async with Upstream([ok(b"secret")], tls=server) as up, opened() as (session, _):
        for _ in range(2):
            resp = await session.request("POST", up.url, b"{}", tls=client)
            assert await resp.read() == b"secret"
            resp.release()
            await settled(session, pooled=1)
        assert up.connections == 1
        with pytest.raises(ConnectError) as info:
            await session.request("POST", up.url, b"{}")  # the system store: not trusted
        assert transport_error(info.value).kind == "connect"
        assert session.pooled == 1  # the trusted connection is pooled apart


async def test_a_scheme_in_capitals_is_still_https() -> None:
    # The TLS choice once read the URL's first characters, in lower case only: "HTTPS://"
    # was a ValueError (a 500 to the client) instead of a TLS connection.
    server, client = tls_pair()
    async with Upstream([ok(b"secret")], tls=server) as up, opened() as (session, _):
        resp = await session.request("POST", up.url.replace("https:", "HTTPS:"), b"{}", tls=client)
        assert await resp.read() == b"secret"
        resp.release()


@pytest.mark.parametrize(
    "headers",
    [
        {"X-A": "1\r\nX-Injected: 2"},
        {"X-A": "1\nX-Injected: 2"},
        {"X-A": "1\r"},
        {"X-A\r\nX-B": "1"},
        {"X-A\n": "1"},
        {"X:A": "1"},
        {"": "1"},
        {"X-A": "1\x00"},
        {"X-A": "1\x7f"},
    ],
)
def test_encode_headers_refuses_what_would_split_the_request(headers: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        encode_headers(headers)


def test_encode_headers_keeps_a_tab_in_a_value() -> None:
    assert encode_headers({"X-A": "a\tb"}) == b"X-A: a\tb\r\n"


@pytest.mark.parametrize(
    "url",
    [
        "http://api.example.com/v1",
        "http://api.example.com:80/v1",
        "http://api.example.com:8080/v1?x=1",
        "https://api.example.com/v1",
        "https://api.example.com:443/v1",
        "https://API.Example.COM:8443",
        "http://127.0.0.1:4010/v1",
        "http://[::1]:8080/v1",
        "https://[::1]/v1",
        "https://user:pw@api.example.com/v1",
    ],
)
def test_origin_of_is_yarls_origin(url: str) -> None:
    assert origin_of(url) == str(yarl.URL(url).origin())


# The transport-dependent cases again on uvloop, the loop the router runs on.
UVLOOP_CASES: list[Callable[[], Awaitable[None]]] = [
    test_a_pooled_connection_the_server_closed_is_replaced_by_a_new_one,
    test_an_idle_connection_is_closed_by_us_after_the_keepalive,
    test_bytes_after_a_complete_answer_are_never_the_next_answer,
    test_a_connection_closed_at_once_is_a_connect_failure,
    test_a_cut_stream_gives_what_arrived_then_the_error,
    test_a_request_cancelled_before_the_head_closes_its_connection,
    test_a_stream_closed_mid_body_closes_its_connection,
    functools.partial(
        test_a_slow_reader_holds_back_a_fast_stream_and_gets_every_byte_in_order, False
    ),
    functools.partial(
        test_a_slow_reader_holds_back_a_fast_stream_and_gets_every_byte_in_order, True
    ),
    functools.partial(test_read_returns_a_whole_4_mib_body_past_the_pause, True, True),
    test_tls_works_with_the_trusted_ca_and_is_refused_without_it,
    test_a_small_head_with_a_large_body_in_one_read_is_not_a_huge_head,
    test_a_bounded_read_past_the_pause_does_not_deadlock,
    test_an_error_body_left_unread_past_the_pause_does_not_stall_the_next_request,
    test_close_closes_pooled_and_in_use_connections,
]


def _case_id(case: Callable[[], Awaitable[None]]) -> str:
    if isinstance(case, functools.partial):
        return f"{case.func.__name__[5:]}{list(case.args)}"
    return case.__name__[5:]


@pytest.mark.parametrize("case", UVLOOP_CASES, ids=_case_id)
def test_on_uvloop(case: Callable[[], Awaitable[None]]) -> None:
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(case())  # type: ignore[arg-type]
