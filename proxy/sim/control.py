"""A client for the simulator's control API (``/_sim/fault``, ``/_sim/reset``), for
``model-router sim-fault``: make a simulated provider fail in a running ``serve --demo``."""

from __future__ import annotations

import difflib
import json
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from proxy.catalog import load_bundled


class SimControlError(Exception):
    """No simulator answered on the port; the message says how to start one."""


@dataclass(frozen=True, slots=True)
class FaultOrder:
    model: str  # the upstream id, or "*" for every model
    mode: str = "status"
    status: int = 500
    count: int | None = None  # this many requests, then recover; None: until cleared
    after_chunks: int = 0  # for the mid-stream modes

    def body(self) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "mode": self.mode, "status": self.status}
        body["after_chunks"] = self.after_chunks
        if self.count is not None:
            body["count"] = self.count
        return body

    def describe(self) -> str:
        if self.mode == "none":
            return f"simulator: {self.model} answers normally again"
        what = f"HTTP {self.status}" if self.mode == "status" else self.mode
        times = f"the next {self.count} requests" if self.count is not None else "every request"
        return f"simulator: {self.model} now fails {times} with {what}"


def _post(port: int, path: str, body: dict[str, Any]) -> None:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/_sim/{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as resp:
            resp.read()
    except (urllib.error.URLError, OSError) as exc:
        raise SimControlError(
            f"no simulator on 127.0.0.1:{port} ({exc}); start one with "
            f"`model-router serve --demo --sim-port {port}`"
        ) from None


def set_fault(port: int, order: FaultOrder) -> str:
    """Send the fault; returns the line to print."""
    _post(port, "fault", order.body())
    return order.describe()


def reset(port: int) -> str:
    _post(port, "reset", {})
    return "simulator: every fault cleared"


def unknown_model_hint(model: str) -> str | None:
    """A warning when no bundled deployment calls its model ``model``: the simulator fails
    requests by upstream id, so a catalog id that differs from it (``deepseek-v3.2``, called
    ``deepseek-chat`` upstream) or a typo would be "failed" with no effect. None when known
    (or ``*``); a model added in config is unknown here, so this only warns."""
    if model == "*":
        return None
    models = load_bundled()
    upstream = {d.upstream_id for m in models for d in m.deployments}
    if model in upstream:
        return None
    by_id = {m.id: sorted({d.upstream_id for d in m.deployments}) for m in models}
    near = by_id.get(model) or difflib.get_close_matches(model, sorted(upstream), 3, 0.6)
    hint = f"; did you mean {', '.join(near)}" if near else ""
    return (
        f"warning: no bundled deployment calls its model {model!r} upstream (sim-fault takes "
        f"the upstream id, as /v1/models lists under deployments){hint}"
    )
