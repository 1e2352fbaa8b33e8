"""HTTP handlers: parse -> plan -> dispatch, and the read-only endpoints. No policy here."""

from __future__ import annotations

import logging
import re
import time
import uuid
from dataclasses import replace
from typing import Any

import orjson
from aiohttp import web

from proxy.accounting.ledger import ACCOUNTING
from proxy.catalog import PREFERS, TIERS
from proxy.decide.experiments import key_id
from proxy.decide.intent import forwarded_body, not_found, parse_intent
from proxy.decide.resolve import resolve
from proxy.decide.routing import plan
from proxy.errors import RouterError, quote
from proxy.providers.base import Endpoint
from proxy.serve.dispatch import Outcome
from proxy.serve.escalation import complete_escalating
from proxy.serve.state import ROUTER, Router

from . import hostile_input
from .auth import Ticket, principal, route_of
from .log_stream import access_handler

access_log = logging.getLogger("model_router.access")
log = logging.getLogger("model_router")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
REQUEST_ID = web.RequestKey("request_id", str)


def request_id(request: web.Request) -> str:
    """The client's ``x-request-id`` when it is sane, else a new one; fixed per request."""
    rid = request.get(REQUEST_ID)
    if rid is None:
        given = request.headers.get("x-request-id", "")
        rid = request[REQUEST_ID] = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    return rid


@web.middleware
async def request_id_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every response carries the request id: errors, 404s and /metrics too. (Streams are
    sent from inside the handler, so dispatch puts it in their headers itself.)"""
    response: web.StreamResponse = await handler(request)
    if not response.prepared:
        response.headers.setdefault("x-request-id", request_id(request))
    return response


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


async def _route(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    router: Router = request.app[ROUTER].current
    started = time.perf_counter()
    rid = request_id(request)
    caller = principal(request)
    outcome = Outcome(request_id=rid, endpoint=endpoint, stream=False, key_id=caller.key_id)
    ticket: Ticket | None = None
    budget = router.dispatcher.budget
    budget.active += 1
    try:
        body = await hostile_input.read_json(request, router.config.limits)
        if type(body) is dict:
            router.config.fields.check(body, endpoint)  # an allowlist: unknown fields are 400
        policy = router.config.policy
        intent = parse_intent(body, endpoint, policy.tasks)
        outcome.stream = intent.stream
        # Names the catalog does not know are client text: logged as "(unknown)", never echoed.
        named = router.catalog.get
        pinned = tuple(n if named(n) is not None else "(unknown)" for n in intent.pinned)
        outcome.intent = describe(
            pinned, intent.prefer, "auto" if intent.tier_auto else intent.tier, intent.task
        )
        # The key's own limits and allowances see what the client asked for, before the
        # classifier or an experiment picks a tier.
        ticket = caller.admit(intent, router.catalog)
        # Experiments may match on the key; hash the bearer token only when one exists.
        who = caller.key_id
        if who is None and policy.experiments:
            who = key_id(request.headers.get("Authorization"))
        chosen = resolve(intent, body, policy, rid, who)
        intent, outcome.complexity, outcome.arm = chosen.intent, chosen.complexity, chosen.arm
        if intent.hedge is None and caller.key is not None and caller.key.hedge is not None:
            intent = replace(intent, hedge=caller.key.hedge)  # the key's say on hedging
        outcome.prefer, outcome.tier = intent.prefer, intent.tier
        decision = chosen.annotate(
            plan(
                intent,
                router.catalog,
                router.health.snapshot(),
                router.config.routing.max_attempts,
                allow=caller.allow,
            )
        )
        outcome.reason = decision.reason
        accounting = request.app.get(ACCOUNTING)
        admission = accounting.admit(intent, decision, body, outcome) if accounting else None
        if admission is not None and admission.hit is not None:
            stall_s = router.config.server.write_stall_s
            return await admission.replay(request, intent, decision, outcome, stall_s)
        upstream_body = forwarded_body(body)
        if intent.stream:
            return await router.dispatcher.stream(request, intent, decision, upstream_body, outcome)
        if intent.escalate:
            response = await complete_escalating(
                router, intent, decision, upstream_body, outcome, chosen.notes
            )
        else:
            response = await router.dispatcher.complete(intent, decision, upstream_body, outcome)
        if admission is not None:
            admission.remember(response, outcome)
        # Sent here, before the sinks below run: logging and accounting are not the client's wait.
        await response.prepare(request)
        await response.write_eof()
        return response
    except RouterError as err:
        outcome.status = err.status
        outcome.error = outcome.error or err.code or err.type
        return error_response(err, rid)
    except web.HTTPException as exc:  # 413 from the body read; error_middleware answers it
        outcome.status, outcome.error = exc.status, exc.reason.lower().replace(" ", "_")
        raise
    finally:
        budget.active -= 1
        if ticket is not None:
            ticket.settle(outcome)
        seconds = time.perf_counter() - started
        if not outcome.status:
            outcome.status = 499  # the client left before any answer was decided
        for sink in router.sinks:
            sink(outcome, seconds)


def describe(
    pinned: tuple[str, ...], prefer: str | None, tier: str | None, task: str | None = None
) -> str:
    if pinned:
        return "pinned:" + ",".join(pinned)
    return f"auto prefer={prefer} tier={tier or 'any'}" + (f" task={task}" if task else "")


def access_log_sink(outcome: Outcome, seconds: float) -> None:
    """One JSON line per request; never prompts, completions or keys."""
    if not access_log.isEnabledFor(logging.INFO):
        return
    record = {
        "request_id": outcome.request_id,
        "key_id": outcome.key_id,
        "endpoint": outcome.endpoint,
        "stream": outcome.stream,
        "intent": outcome.intent,
        "model": outcome.model,
        "provider": outcome.provider,
        "attempts": outcome.attempts,
        "status": outcome.status,
        "error": outcome.error,
        "ttft_ms": round(outcome.ttft_ms, 1) if outcome.ttft_ms is not None else None,
        "total_ms": round(seconds * 1000, 1),
        "prompt_tokens": outcome.prompt_tokens,
        "completion_tokens": outcome.completion_tokens,
        "cost": outcome.cost,
        "estimated": outcome.estimated,
        "complexity": outcome.complexity,
        "arm": outcome.arm,
        "escalated_from": outcome.escalated_from,
        "cache_hit": outcome.cache_hit,
        "hedged": outcome.hedged,
        "hedge_cost": outcome.hedge_cost,
    }
    access_log.info(orjson.dumps(record).decode())


async def chat_completions(request: web.Request) -> web.StreamResponse:
    return await _route(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    return await _route(request, "completions")


def _virtual_models() -> list[dict[str, Any]]:
    names = ["auto", *(f"auto:{p}" for p in PREFERS), *(f"auto:{t}" for t in TIERS)]
    names += [f"auto:{t}:{p}" for t in TIERS for p in PREFERS]
    names += ["auto:auto", *(f"auto:auto:{p}" for p in PREFERS)]  # tier chosen by the classifier
    return [
        {"id": n, "object": "model", "created": 0, "owned_by": "model-router", "virtual": True}
        for n in names
    ]


async def list_models(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER].current
    return json_response({"object": "list", "data": router.models_listing + _virtual_models()})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one entry of the listing, by catalog id, alias or virtual name.

    Ids hold ``/`` and ``:`` (``openai/gpt-4o``, ``auto:premium:coding``), so the route is
    greedy and the id is the rest of the path."""
    router: Router = request.app[ROUTER].current
    name = request.match_info["model_id"]
    model = router.catalog.get(name)
    if model is not None:
        return json_response(router.models_by_id[model.id])
    for entry in _virtual_models():
        if entry["id"] == name:
            return json_response(entry)
    err = not_found(name, router.catalog)
    return error_response(err, request_id(request))


async def router_status(request: web.Request) -> web.Response:
    router: Router = request.app[ROUTER].current
    status = router.status()
    if (accounting := request.app.get(ACCOUNTING)) is not None:
        status |= accounting.status()
    if (handler := access_handler()) is not None:
        status["access_log"] = handler.stats()
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
    if (handler := access_handler()) is not None and handler.error:
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
    return json_response(
        {"status": "ready", "deployments_available": len(closed), "degraded": faults}
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Every error leaves in OpenAI's shape, including aiohttp's own (404, 405, 413)."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except RouterError as err:
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
        return error_response(
            RouterError(
                exc.status,
                f"{request.method} {quote(request.path)}: {exc.reason}",
                type="invalid_request_error" if exc.status < 500 else "server_error",
                code=exc.reason.lower().replace(" ", "_"),
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
