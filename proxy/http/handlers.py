"""HTTP handlers: parse -> plan -> dispatch, and the read-only endpoints. No policy here."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import time
from dataclasses import replace
from typing import Any

from aiohttp import HttpVersion11, web
from aiohttp.typedefs import Handler

from probes.kinds import Endpoint
from proxy.accounting.cache import replay_sse
from proxy.accounting.ledger import ACCOUNTING
from proxy.decide.experiments import key_id
from proxy.decide.intent import Intent, forwarded_body, parse_intent
from proxy.decide.resolve import Resolution, resolve
from proxy.decide.routing import Plan, plan, spoken
from proxy.errors import RouterError, quote
from proxy.serve.drain import IN_FLIGHT, shutdown_error
from proxy.serve.escalation import complete_escalating
from proxy.serve.record import MAX_TEXT, Asked, RequestRecord
from proxy.serve.state import CLUSTER, ROUTER, WORKER, Router

from . import hostile_input, respond
from .access_log import access_log_edge
from .auth import PRINCIPAL, Principal, Ticket, principal, route_of
from .log_stream import access_handler
from .respond import error_response, json_response

log = logging.getLogger("model_router")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID = web.RequestKey("request_id", str)


def new_request_id() -> str:
    """32 random hex digits, as ``uuid4().hex`` gave but without building a ``UUID`` (0.3 us
    against 1.5). Not a counter: ids go to every client, and consecutive numbers would tell
    one tenant how many requests the others sent between two of its own."""
    return os.urandom(16).hex()


def request_id(request: web.Request) -> str:
    """The client's ``x-request-id`` when it is sane, else a new one; fixed per request."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = request[REQUEST_ID] = given if _REQUEST_ID.match(given) else new_request_id()
    return rid


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every response carries the request id: errors, 404s and /metrics too. (Streams are
    sent from inside the handler, so dispatch puts it in their headers itself.)

    A stream sent to an HTTP/1.0 client has no length and no chunking, so only the end of the
    connection can end it (RFC 9112 6.3). aiohttp sends it without ``Connection: keep-alive``
    but keeps the connection open after it anyway (until keepalive_timeout_s), and a client
    that asked for keep-alive waits that long for the end: close it."""
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers.setdefault("x-request-id", request_id(request))
    elif request.version < HttpVersion11 and response.content_length is None:
        response.force_close()
    return response


async def _route(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """Parse, decide, answer; then the record goes to the sinks (logs, metrics, accounting)."""
    router: Router = request.app[ROUTER].current
    started = time.perf_counter()
    rid = request_id(request)
    caller = principal(request)
    record = RequestRecord(Asked(rid, endpoint, caller.key_id))
    ticket: Ticket | None = None
    # Requests in flight are counted on the retry budget, whose bound is a fraction of them.
    retry_budget = router.dispatcher.budget
    retry_budget.active += 1
    try:
        body = await hostile_input.read_json(request, router.config.limits)
        if type(body) is dict:
            router.config.fields.check(body, endpoint)  # an allowlist: unknown fields are 400
        intent = parse_intent(body, endpoint, router.config.policy.tasks)
        # Names the catalog does not know are client text: logged as "(unknown)", never echoed.
        named = router.catalog.get
        pinned = tuple(n if named(n) is not None else "(unknown)" for n in intent.pinned)
        asked = describe(
            pinned, intent.prefer, "auto" if intent.tier_auto else intent.tier, intent.task
        )[:MAX_TEXT]
        record.asked = Asked(rid, endpoint, caller.key_id, intent.stream, asked)
        # The key's own limits and allowances see what the client asked for, before the
        # classifier or an experiment picks a tier.
        ticket = caller.admit(intent, router.catalog)
        chosen, decision = _decide(request, router, caller, intent, body, record)
        return await _answer(request, router, chosen, decision, body, record)
    except RouterError as err:
        record.status = err.status
        record.error = record.error or err.code or err.type
        return error_response(err, rid)
    except web.HTTPException as exc:  # 413 from the body read; error_middleware answers it
        record.status, record.error = exc.status, exc.reason.lower().replace(" ", "_")
        raise
    except asyncio.CancelledError:
        # The client went away and aiohttp cancelled us (handler_cancellation).
        respond.client_left(record)
        raise
    finally:
        retry_budget.active -= 1
        if ticket is not None:
            ticket.settle(record)
        seconds = time.perf_counter() - started
        record.total_ms = seconds * 1000.0
        if not record.status:
            respond.client_left(record, record.error)  # before any answer was decided
        for sink in router.sinks:
            sink(record, seconds)


def _decide(
    request: web.Request,
    router: Router,
    caller: Principal,
    intent: Intent,
    body: dict[str, Any],
    record: RequestRecord,
) -> tuple[Resolution, Plan]:
    """tier=auto and the experiment arm, then the plan; both go into the record."""
    policy = router.config.policy
    # Experiments may match on the key; hash the bearer token only when one exists.
    who = caller.key_id
    if who is None and policy.experiments:
        who = key_id(request.headers.get("Authorization"))
    chosen = caller.narrow(resolve(intent, body, policy, record.request_id, who), router.catalog)
    key_hedge = caller.key.hedge if caller.key is not None else None
    if chosen.intent.hedge is None and key_hedge is not None:  # the key's say on hedging
        chosen = replace(chosen, intent=replace(chosen.intent, hedge=key_hedge))
    routed, asked = chosen.intent, record.asked
    record.asked = Asked(
        asked.request_id,
        asked.endpoint,
        asked.key_id,
        asked.stream,
        asked.intent,
        routed.prefer,
        routed.tier,
        chosen.complexity,
        chosen.arm,
    )
    snapshot = router.health.snapshot()
    attempts = router.config.routing.max_attempts
    decision = chosen.annotate(plan(routed, router.catalog, snapshot, attempts, allow=caller.allow))
    record.reason = spoken(decision)
    return chosen, decision


async def _answer(
    request: web.Request,
    router: Router,
    chosen: Resolution,
    decision: Plan,
    body: dict[str, Any],
    record: RequestRecord,
) -> web.StreamResponse:
    """From the cache, as a committed stream, or as a whole (maybe escalated) answer."""
    intent = chosen.intent
    caller = principal(request)
    accounting = request.app.get(ACCOUNTING)
    admission = accounting.admit(intent, decision, body, record) if accounting else None
    if admission is not None and admission.hit is not None:
        entry = admission.serve_hit(record, decision)
        if not intent.stream:
            return respond.cached_answer(entry.body, record)
        events = replay_sse(entry.body, intent.endpoint, intent.include_usage)
        stall_s = router.config.server.write_stall_s
        return await respond.send_cached_stream(request, record, events, stall_s)
    upstream_body = forwarded_body(body)
    dispatcher = router.dispatcher
    if intent.stream:
        committed = await dispatcher.stream(intent, decision, upstream_body, record)
        return await respond.StreamWriter(request, dispatcher, record).send(committed)
    if intent.escalate:
        answer = await complete_escalating(
            router, chosen, decision, upstream_body, record, caller.allow
        )
    else:
        answer = await dispatcher.complete(intent, decision, upstream_body, record)
    response = respond.answer_response(answer, record)
    if admission is not None and isinstance(response.body, bytes):
        admission.remember(response.body, record)
        response.headers["x-router-cache"] = "miss"
    # Sent here, before the sinks run: logging and accounting are not the client's wait.
    await response.prepare(request)
    await response.write_eof()
    return response


def describe(
    pinned: tuple[str, ...], prefer: str | None, tier: str | None, task: str | None = None
) -> str:
    if pinned:
        return "pinned:" + ",".join(pinned)
    return f"auto prefer={prefer} tier={tier or 'any'}" + (f" task={task}" if task else "")


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _route(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _route(request, "completions")


async def router_status(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER].current
    status = router.status()
    if (accounting := request.app.get(ACCOUNTING)) is not None:
        status |= accounting.status()
    cluster = request.app.get(CLUSTER)
    status["cluster"] = cluster.status() if cluster is not None else None
    worker = request.app.get(WORKER)
    status["worker"] = {"index": worker, "pid": os.getpid()} if worker is not None else None
    if (handler := access_handler()) is not None:
        status["access_log"] = handler.stats()
    caller = principal(request).key
    spend = status.get("spend")
    if caller is not None and not caller.admin and isinstance(spend, dict):
        # Every key's spend is the admin's data (as in /v1/router/history); a client key
        # reads the latency table and its own budget line.
        mine = spend.get("keys", {}).get(caller.id)
        spend["keys"] = {caller.id: mine} if mine is not None else {}
    return json_response(status)


async def healthz(request: web.Request) -> web.Response:
    return json_response({"status": "ok"})


def bookkeeping_faults(app: web.Application) -> dict[str, str]:
    """What fails beside serving (usage log, access log): reported, never a reason to refuse
    requests, so readiness stays true with these as its detail."""
    faults = {}
    accounting = app.get(ACCOUNTING)
    if accounting is not None and accounting.usage is not None and accounting.usage.error:
        usage = accounting.usage
        faults["usage_log"] = (
            f"{usage.error} ({usage.queued} rows queued, {usage.dropped_rows} dropped)"
        )
    if (handler := access_handler()) is not None and handler.stats()["error"]:
        faults["access_log"] = f"{handler.error} ({handler.errors} lines lost)"
    return faults


async def readyz(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER].current
    snap = router.health.snapshot()
    closed = [d.key for d in router.catalog.deployments() if d.key not in snap.open]
    faults = bookkeeping_faults(request.app)
    if not closed:
        return json_response(
            {
                "status": "unavailable",
                "reason": "every deployment's breaker is open",
                "degraded": faults,
            },
            503,
        )
    body: dict[str, Any] = {
        "status": "ready",
        "deployments_available": len(closed),
        "degraded": faults,
    }
    if (cluster := request.app.get(CLUSTER)) is not None:
        # Still ready without Redis: it serves on local state, and says so.
        st = cluster.status()
        body["cluster"] = {k: st[k] for k in ("redis", "state", "instances", "redis_down_reason")}
    return json_response(body)


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in OpenAI's shape, including aiohttp's own (404, 405, 413)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except RouterError as err:
        _edge_logged(request, err.status, err.code or err.type)
        return error_response(err)
    except web.HTTPRequestEntityTooLarge as exc:
        limit = exc.text or ""
        response = error_response(
            RouterError(
                413, f"the request body is too large ({limit.strip()})", code="request_too_large"
            )
        )
        # Closed: reading (and throwing away) the rest of a body we refused helps nobody.
        response.force_close()
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = exc.reason.lower().replace(" ", "_")
        # A 405 says what the resource does allow (RFC 9110 15.5.6): aiohttp's own has it.
        headers = {"Allow": allow} if (allow := exc.headers.get("Allow")) is not None else None
        if route_of(request) == "(no route)":  # 404, 405: a client calling what we do not serve
            _edge_logged(request, exc.status, code)
        return error_response(
            RouterError(
                exc.status,
                f"{request.method} {quote(request.path)}: {exc.reason}",
                type="invalid_request_error" if exc.status < 500 else "server_error",
                code=code,
                headers=headers,
            )
        )
    except Exception as exc:
        # Never the exception's repr: aiohttp's can carry request headers.
        log.error("unhandled %s in %s %s", type(exc).__name__, request.method, route_of(request))
        return error_response(
            RouterError(
                500, "internal error in the router", type="server_error", code="internal_error"
            )
        )


def _edge_logged(request: web.Request, status: int, error: str | None) -> None:
    """The access line of a request answered here, not by ``_route`` (which writes its own)."""
    caller = request.get(PRINCIPAL)
    access_log_edge(
        request_id(request),
        caller.key_id if caller is not None else None,
        request.method,
        request.rel_url.raw_path,
        status,
        error,
    )


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Counts requests for the drain; answers 503 for those the drain deadline cancelled."""
    in_flight = request.app[IN_FLIGHT]
    task = asyncio.current_task()
    if task is None or in_flight.cutting:
        return _shutdown_response()
    in_flight.enter(task)
    try:
        return await handler(request)
    except asyncio.CancelledError:
        if not in_flight.was_cut(task):
            raise
        task.uncancel()
        return _shutdown_response()
    finally:
        in_flight.leave(task)


def _shutdown_response() -> web.Response:
    response = error_response(shutdown_error())
    response.headers["Connection"] = "close"
    return response
