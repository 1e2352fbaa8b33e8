"""GET /status (one self-contained HTML page: inline script and style, no CDN, no font, SVG
drawn by hand) and GET /v1/router/history, the JSON behind its charts.

The page carries no data. Its script polls /v1/router/status and /v1/router/history with
``fetch``, one request a second at most, sending the admin key it was given in the URL
fragment (``/status#key=...``, which browsers never send to a server) as a bearer token.
"""

from __future__ import annotations

import base64
import hashlib
import math
import re
from importlib import resources

from aiohttp import web

from proxy.accounting.ledger import ACCOUNTING
from proxy.errors import RouterError
from proxy.http.auth import require_admin
from proxy.http.respond import json_response
from proxy.serve.state import ROUTER

from .history import HISTORY


def _csp_hash(html: str, tag: str) -> str:
    found = re.search(rf"<{tag}>(.*?)</{tag}>", html, re.S)
    assert found is not None, f"page.html has no <{tag}>"
    digest = hashlib.sha256(found.group(1).encode()).digest()
    return f"'sha256-{base64.b64encode(digest).decode()}'"


class StatusPage:
    """The page's bytes and its Content-Security-Policy, read once per app."""

    __slots__ = ("body", "headers")

    def __init__(self) -> None:
        html = resources.files("proxy.status").joinpath("page.html").read_text("utf-8")
        self.body = html.encode()
        # Only this page's own script and style run, and it may talk to this origin only.
        csp = (
            "default-src 'none'; "
            f"script-src {_csp_hash(html, 'script')}; "
            f"style-src {_csp_hash(html, 'style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
            "frame-ancestors 'none'"
        )
        self.headers = {
            "Content-Security-Policy": csp,
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        }


STATUS_PAGE = web.AppKey("status_page", StatusPage)


async def status_page(request: web.Request) -> web.Response:
    page = request.app[STATUS_PAGE]
    return web.Response(
        body=page.body, content_type="text/html", charset="utf-8", headers=page.headers
    )


async def router_history(request: web.Request) -> web.Response:
    """The last hour per deployment, model and API key (by id); ``?since=<unix time>``
    returns only newer points."""
    require_admin(request)
    since = None
    if (raw := request.query.get("since")) is not None:
        try:
            since = float(raw)
        except ValueError:
            since = math.nan
        if not math.isfinite(since):
            raise RouterError(
                400, "since: expected a Unix time in seconds", param="since", code="invalid_since"
            )
    accounting = request.app.get(ACCOUNTING)
    spend = {"by_key": dict(accounting.budget.by_key)} if accounting is not None else None
    router = request.app[ROUTER].current
    return json_response(request.app[HISTORY].payload(router, since, spend))
