"""The model endpoints: ``GET /v1/models`` and ``/v1/models/{id}``, scoped to the calling key,
and the 404 that points clients of OpenAI's Responses API at chat completions."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from proxy.catalog import TIERS, Tier
from proxy.decide.allowance import auto_names
from proxy.decide.intent import not_found
from proxy.errors import RouterError
from proxy.serve.state import ROUTER, Router

from .auth import principal
from .handlers import request_id
from .respond import error_response, json_response


def _virtual_models(reach: tuple[Tier, ...] = TIERS) -> list[dict[str, Any]]:
    return [
        {"id": n, "object": "model", "created": 0, "owned_by": "model-router", "virtual": True}
        for n in auto_names(reach)
    ]


async def list_models(request: web.Request) -> web.Response:
    """GET /v1/models: what the caller may use, as OpenAI lists a key's models. A key limited
    to some tiers or models sees those models and the ``auto…`` names that route within them
    (a bare ``auto`` is narrowed to its tiers); without limits, everything."""
    router: Router = request.app[ROUTER].current
    caller = principal(request)
    listing = router.models_listing
    if (allow := caller.allow) is not None:
        listing = [router.models_by_id[m.id] for m in router.catalog.models if allow(m)]
    virtual = _virtual_models(caller.reach(router.catalog))
    return json_response({"object": "list", "data": listing + virtual})


async def retrieve_model(request: web.Request) -> web.Response:
    """GET /v1/models/{id}: one entry of the listing, by catalog id, alias or virtual name.
    A model the caller's key may not use is a 404, as one it does not know (OpenAI's way).

    Ids hold ``/`` and ``:`` (``openai/gpt-4o``, ``auto:premium:coding``), so the route is
    greedy and the id is the rest of the path."""
    router: Router = request.app[ROUTER].current
    caller = principal(request)
    name = request.match_info["model_id"]
    model = router.catalog.get(name)
    if model is not None and (caller.allow is None or caller.allow(model)):
        return json_response(router.models_by_id[model.id])
    if model is None:
        for entry in _virtual_models(caller.reach(router.catalog)):
            if entry["id"] == name:
                return json_response(entry)
    err = not_found(name, router.catalog, caller.allow)
    return error_response(err, request_id(request))


async def responses_api(request: web.Request) -> web.Response:
    """OpenAI's Responses API (/v1/responses) is not served. Clients that default to it (the
    Vercel AI SDK's ``openai('auto')``, the OpenAI Agents SDK) get a 404 that says how to reach
    chat completions instead of a bare Not Found; nothing is read or sent upstream."""
    raise RouterError(
        404,
        f"{request.method} /v1/responses: this router does not serve OpenAI's Responses API. "
        "It serves POST /v1/chat/completions (and /v1/completions, GET /v1/models): point "
        "the client at chat completions, e.g. the Vercel AI SDK's openai.chat('auto') "
        "instead of openai('auto'), or set_default_openai_api('chat_completions') in the "
        "OpenAI Agents SDK.",
        code="unsupported_endpoint",
    )
