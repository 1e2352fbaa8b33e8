"""Every byte the client receives: JSON answers, errors (OpenAI's shape, or an SSE error
event once a stream has begun), the bounded SSE writer with its stall, idle and drain
deadlines, the ``x-router-*`` and SSE headers, and the one place a 499 is decided.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
from aiohttp import web

from probes.deadline import Deadline
from proxy.decide.routing import Candidate
from proxy.errors import RouterError
from proxy.providers.base import UpstreamError, UpstreamStream
from proxy.serve.dispatch import Answer, Committed, Dispatcher
from proxy.serve.drain import IN_FLIGHT, InFlight, OpenStream, shutdown_error
from proxy.serve.record import RequestRecord

log = logging.getLogger("model_router.dispatch")

SSE_HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    "X-Accel-Buffering": "no",
}


def client_left(record: RequestRecord, why: str | None = "client_disconnected") -> None:
    """The one place a request becomes a 499: its client went away or stopped reading
    (``why`` None: it left before any answer was decided, for a reason nobody saw)."""
    record.error, record.status = why, 499


def router_headers(
    cand: Candidate, record: RequestRecord, note: str | None = None
) -> dict[str, str]:
    headers = {
        "x-router-model": cand.model.id,
        "x-router-provider": cand.deployment.provider,
        "x-router-reason": record.reason,
        "x-router-attempts": str(record.attempts),
        "x-request-id": record.request_id,
    }
    if record.arm:
        headers["x-router-arm"] = record.arm
    if record.escalated_from:
        headers["x-router-escalated"] = f"{record.escalated_from}->{cand.model.tier}"
    elif note:
        headers["x-router-escalated"] = note
    if record.hedged:
        headers["x-router-hedged"] = record.hedged
    return headers


def cache_headers(record: RequestRecord) -> dict[str, str]:
    return {
        "x-router-model": record.model or "",
        "x-router-provider": record.provider or "",
        "x-router-reason": f"{record.reason} cache=hit",
        "x-router-attempts": "0",
        "x-router-cache": "hit",
        "x-request-id": record.request_id,
    }


def json_response(
    data: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def error_response(err: RouterError, request_id: str | None = None) -> web.Response:
    headers = dict(err.headers)
    if request_id:
        headers.setdefault("x-request-id", request_id)
    response = web.Response(
        body=err.body(), status=err.status, content_type="application/json", headers=headers
    )
    if headers.get("Connection", "").lower() == "close":
        response.force_close()  # a refused body (408, 413) is not read to its end
    return response


def answer_response(answer: Answer, record: RequestRecord) -> web.Response:
    """A whole answer, serialized once (the cache keeps these very bytes)."""
    return web.Response(
        body=orjson.dumps(answer.data),
        content_type="application/json",
        headers=router_headers(answer.candidate, record, answer.note),
    )


def cached_answer(body: bytes, record: RequestRecord) -> web.Response:
    return web.Response(body=body, content_type="application/json", headers=cache_headers(record))


async def send_cached_stream(
    request: web.Request, record: RequestRecord, events: bytes, stall_s: float
) -> web.StreamResponse:
    """A cached answer replayed as one burst of SSE events, within the write-stall limit."""
    resp = web.StreamResponse(headers={**cache_headers(record), **SSE_HEADERS})
    try:
        async with asyncio.timeout(stall_s):
            await resp.prepare(request)
            await resp.write(events)
            await resp.write_eof()
    except TimeoutError:
        client_left(record, "client_stalled")
        if request.transport is not None:
            request.transport.abort()
    return resp


# How long a stream waits, after [DONE], for the upstream to end its body (the client has
# its end by then): a server's end usually follows within a millisecond.
DONE_GRACE_S = 1.0
# The upstream ends still being read; the loop keeps only weak references to tasks.
_ENDING: set[asyncio.Task[None]] = set()


def end_upstream(upstream: UpstreamStream, grace_s: float) -> None:
    """Read what the upstream sends after [DONE] up to its end, for at most ``grace_s``, then
    release it: an answer read to its end frees its connection for the next request. In the
    background: the client has its whole answer, and a client that hangs up now (aiohttp
    then cancels the handler) must not turn it into a 499 or close the connection early."""
    task = asyncio.get_running_loop().create_task(_end_upstream(upstream, grace_s))
    _ENDING.add(task)
    task.add_done_callback(_ENDING.discard)


async def _end_upstream(upstream: UpstreamStream, grace_s: float) -> None:
    try:
        async with Deadline(asyncio.get_running_loop().time() + grace_s, grace_s):
            async for _ in upstream:
                pass  # past the answer: dropped
    except (TimeoutError, UpstreamError):
        pass  # the connection is closed instead of pooled
    finally:
        await upstream.aclose()


class StreamWriter:
    """Writes one committed stream to its client: the head at once, then each relayed event
    as it comes, with one deadline that is the client's write-stall limit while a write is
    pending and the upstream's idle limit while we wait on it; the drain pulls it in to end
    the stream at shutdown. Failures after the first byte become an SSE error event."""

    __slots__ = (
        "dispatcher",
        "idle_s",
        "open",
        "record",
        "request",
        "resp",
        "stall_s",
        "writing",
    )

    def __init__(self, request: web.Request, dispatcher: Dispatcher, record: RequestRecord) -> None:
        self.request = request
        self.dispatcher = dispatcher
        self.record = record
        self.idle_s = dispatcher.server.upstream_idle_s
        self.stall_s = dispatcher.server.write_stall_s
        self.resp = web.StreamResponse()
        self.writing = True  # whose deadline a TimeoutError was: the client's, while True
        self.open: OpenStream | None = None

    async def send(self, committed: Committed) -> web.StreamResponse:
        resp, record = self.resp, self.record
        resp.headers.update(SSE_HEADERS)
        resp.headers.update(router_headers(committed.candidate, record))
        handed_off = False
        try:
            await self._pump(committed)
            # [DONE] is out, so the answer is whole: a client that closes as soon as it reads
            # it (an SDK may) is no 499. One that stops reading still is.
            try:
                async with asyncio.timeout(self.stall_s):
                    await resp.write_eof()
            except ConnectionError:
                if self.request.transport is not None:
                    self.request.transport.abort()
            except TimeoutError:
                return self._client_gone("client_stalled")
            # The upstream's own end may follow [DONE] by a moment: read in the background.
            end_upstream(committed.upstream, min(self.idle_s, DONE_GRACE_S))
            handed_off = True
        except TimeoutError:
            if self.writing:
                return self._client_gone("client_stalled")
            if self.open is not None and self.open.cut:
                record.error, record.status = "server_shutting_down", 503
                await self._end_with_error(shutdown_error())
            else:
                quiet = f"upstream went quiet for {self.idle_s:g} s mid-stream"
                await self._mid_stream_error(committed, UpstreamError("timeout", quiet))
            return resp
        except UpstreamError as exc:
            await self._mid_stream_error(committed, exc)
            return resp
        except ConnectionError:
            # The client went away between a write and aiohttp noticing.
            return self._client_gone("client_disconnected")
        finally:
            # The upstream's usage, or (a stream cut short) an estimate of what it generated.
            record.take_charge(committed.relay.charge())
            if not handed_off:
                await committed.upstream.aclose()
        return resp

    async def _pump(self, committed: Committed) -> None:
        """Relay until the upstream says [DONE] (or ends without it: an error)."""
        request, resp, relay = self.request, self.resp, committed.relay
        idle, stall = self.idle_s, self.stall_s
        loop = asyncio.get_running_loop()
        in_flight = request.app.get(IN_FLIGHT) or InFlight()
        # Moving the deadline is a float write (asyncio.Timeout.reschedule replaced a loop
        # timer, twice a chunk).
        async with Deadline(loop.time() + stall, min(idle, stall)) as timer:
            with in_flight.stream(timer) as stream:
                self.open = stream
                await resp.prepare(request)
                await resp.write(committed.head)
                if not relay.done:
                    self.writing = False
                    stream.extend(idle)
                    # Per chunk: stream.extend inlined as the Deadline's documented write of
                    # ``at`` (both limits are at least its period, so no re-arm is due), bound
                    # methods in locals, ``writing`` set only if the deadline strikes in a
                    # write (a try costs nothing): 20 bytecodes where extend calls were 86.
                    feed, write, clock = relay.feed, resp.write, loop.time
                    async for chunk in committed.upstream:
                        out = feed(chunk)
                        if out:
                            if not stream.cut:  # once the drain cut it, its deadline stays
                                timer.at = clock() + stall
                            try:
                                await write(out)
                            except asyncio.CancelledError:
                                self.writing = True
                                raise
                            if relay.done:
                                break
                        if not stream.cut:
                            timer.at = clock() + idle
                    else:
                        relay.finish()  # the upstream ended without [DONE]: an error

    def _client_gone(self, why: str) -> web.StreamResponse:
        """End a stream nobody reads: nothing more can reach the client, so drop the
        connection instead of letting a blocked write pin it (and its buffers)."""
        client_left(self.record, why)
        if why == "client_stalled":
            log.warning(
                "client stopped reading; ending stream request_id=%s", self.record.request_id
            )
        if self.request.transport is not None:
            self.request.transport.abort()
        return self.resp

    async def _write_bounded(self, data: bytes | None) -> bool:
        """Write ``data`` (None: end the response) within write_stall_s; False if the client
        did not take it in time or is gone."""
        try:
            async with asyncio.timeout(self.stall_s):
                if data is None:
                    await self.resp.write_eof()
                else:
                    await self.resp.write(data)
        except (TimeoutError, ConnectionError):
            return False
        return True

    async def _end_with_error(self, err: RouterError) -> None:
        """The error event, then the end of the chunked body: the SDK raises on the event."""
        delivered = await self._write_bounded(err.sse())
        if not (delivered and await self._write_bounded(None)) and self.request.transport:
            self.request.transport.abort()

    async def _mid_stream_error(self, committed: Committed, exc: UpstreamError) -> None:
        self.record.error, self.record.status = exc.kind, 502
        await self._end_with_error(self.dispatcher.failed_mid_stream(committed, exc))
