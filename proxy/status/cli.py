"""``model-router status``: the status page's table in a terminal, 80 columns wide, from the
same JSON (GET /readyz, /v1/router/status, /v1/router/history). Exit 0 when the router is
ready, 1 when it answers but is not ready, 2 when it cannot be read.
"""

from __future__ import annotations

import http.client
import json
import math
import os
import signal
import sys
import time
import urllib.parse
from collections.abc import Sequence
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8080"
KEY_ENV = "MODEL_ROUTER_ADMIN_KEY"
WIDTH = 80
SPARK = "▁▂▃▄▅▆▇█"
SPARK_CELLS = 10  # six minutes each: the last hour
CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear screen: --watch redraws in place
SEVERITY = {"open": 0, "half_open": 1, "closed": 2}


class StatusError(Exception):
    """The router could not be read (unreachable, refused the key, answered garbage)."""


class Reader:
    """One keep-alive connection to the router, for every request of a frame (and of the
    frames after it, with ``--watch``). Behind ``--workers`` each connection reaches one
    worker, which keeps its own history: a frame read over several connections would mix
    workers' figures, and one read over one connection is one worker's, named in it."""

    def __init__(self, url: str) -> None:
        parts = urllib.parse.urlsplit(url)
        kind = (
            http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
        )
        self.url = url
        self.prefix = parts.path.rstrip("/")
        self._conn = kind(parts.hostname or "", parts.port, timeout=5)

    def close(self) -> None:
        self._conn.close()

    def fetch(self, path: str, key: str | None) -> tuple[int, Any]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        try:
            try:
                status, raw = self._get(path, headers)
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # The router closed the idle connection (its keep-alive): once more, anew.
                self._conn.close()
                status, raw = self._get(path, headers)
        except (OSError, http.client.HTTPException) as exc:
            self._conn.close()
            raise StatusError(f"cannot read {self.url.rstrip('/')}{path}: {exc}") from None
        try:
            body = json.loads(raw)
        except ValueError:
            if status == 200:
                raise StatusError(f"{path} did not answer JSON") from None
            body = {}
        if status in (401, 403):
            message = (body.get("error") or {}).get("message") or f"HTTP {status}"
            raise StatusError(f"{path}: {status} {message} (set ${KEY_ENV})")
        return status, body

    def _get(self, path: str, headers: dict[str, str]) -> tuple[int, bytes]:
        self._conn.request("GET", self.prefix + path, headers=headers)
        resp = self._conn.getresponse()
        return resp.status, resp.read()


def spark(values: Sequence[float | None], cells: int = SPARK_CELLS) -> str:
    """One character per equal slice of ``values`` (oldest first), scaled from their minimum
    to their maximum; "·" where there is no data, a flat line sits in the middle."""
    means: list[float | None] = []
    for c in range(cells):
        chunk = values[c * len(values) // cells : (c + 1) * len(values) // cells]
        nums = [v for v in chunk if v is not None]
        means.append(sum(nums) / len(nums) if nums else None)
    known = [m for m in means if m is not None]
    if not known:
        return "·" * cells
    low, high = min(known), max(known)
    top = len(SPARK) - 1
    out = []
    for m in means:
        if m is None:
            out.append("·")
        elif high == low:
            out.append(SPARK[top // 2])
        else:
            out.append(SPARK[round((m - low) / (high - low) * top)])
    return "".join(out)


def _usd(value: float | None) -> str:
    if value is None:
        return "-"
    return f"${value:.4f}" if value < 1 else f"${value:.2f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _money(status: dict[str, Any]) -> str:
    spend = status.get("spend") or {}
    budget = spend.get("daily_budget_usd")
    money = f"spend today {_usd(spend.get('today_usd'))}"
    if budget:
        money += f" of {_usd(budget)} ({100 * spend.get('today_usd', 0) / budget:.0f} %)"
    probes = status.get("probes")
    if probes:
        money += f"  probes {_usd(probes['spend_today_usd'])} of {_usd(probes['spend_cap_usd'])}"
    return money


def _key_lines(history: dict[str, Any]) -> list[str]:
    lines = []
    for key in history.get("keys", []):
        if key["key"] == "(no key)":
            continue
        cap = f" of {_usd(key['daily_usd'])}" if key.get("daily_usd") else ""
        lines.append(
            _cut(
                f"  key {key['key']}: {sum(key['requests'])} requests last hour, "
                f"{_usd(key['spend_today_usd'])}{cap} today",
                WIDTH,
            )
        )
    return lines


def render(url: str, ready: bool, status: dict[str, Any], history: dict[str, Any]) -> str:
    """The whole frame, every line at most ``WIDTH`` characters."""
    rows = status.get("deployments", [])
    hist = {d["deployment"]: d for d in history.get("deployments", [])}
    # Spread over the hour: a router up for ten minutes fills the last sixth of the line.
    points = history.get("points", 360)
    total = sum(sum(d["requests"]) for d in hist.values())
    opened = sum(1 for r in rows if r["breaker"] == "open")
    clock = time.strftime("%H:%M:%S UTC", time.gmtime())
    state = "ready" if ready else "NOT READY"
    worker = status.get("worker")
    # Behind --workers, whose figures these are: each worker keeps its own history.
    who = f"worker {worker['index']}  " if isinstance(worker, dict) else ""
    lines = [
        _cut(
            f"model-router {url}  {state}  {len(rows)} deployments, {opened} open  {who}{clock}",
            WIDTH,
        )
    ]
    lines.append(_cut(f"requests last hour {total}  {_money(status)}", WIDTH))
    lines += _key_lines(history)
    lines.append("")
    head = f"{'deployment':<27} {'breaker':<9} {'est ms':>6} {'p90':>6} {'fast':>4} "
    head += f"{'share':>6} {'errs':>5} {'ttft 1h':<{SPARK_CELLS}}"
    lines.append(head)

    def order(r: dict[str, Any]) -> tuple[int, float, str]:
        rank = r.get("fast_rank")
        return (
            SEVERITY.get(r["breaker"], 3),
            rank if rank is not None else math.inf,
            r["deployment"],
        )

    for r in sorted(rows, key=order):
        h = hist.get(r["deployment"])
        requests = sum(h["requests"]) if h else 0
        errors = sum(h["errors"]) if h else 0
        est = r.get("ttft_estimate_ms")
        p90 = r.get("ttft_p90_ms")
        series: list[float | None] = []
        if h:
            series = [None] * (points - len(h["ttft_estimate_ms"])) + list(h["ttft_estimate_ms"])
        breaker = {"open": "OPEN", "half_open": "half-open"}.get(r["breaker"], r["breaker"])
        lines.append(
            f"{_cut(r['deployment'], 27):<27} {breaker:<9} "
            f"{'-' if est is None else round(est):>6} {'-' if p90 is None else round(p90):>6} "
            f"{r.get('fast_rank') or '-':>4} "
            f"{(f'{100 * requests / total:.1f}%' if total else '-'):>6} {errors:>5} "
            f"{spark(series)}"
        )
    return "\n".join(lines) + "\n"


def check_url(url: str) -> None:
    """A ``--url`` urllib cannot fetch is said in one line (urllib's own error is a
    traceback for some, an empty message for others)."""
    parts = urllib.parse.urlsplit(url)
    try:
        parts.port  # noqa: B018 (raises on a port that is not a number)
    except ValueError:
        parts = parts._replace(scheme="")
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise StatusError(
            f"--url must be an http:// or https:// URL such as {DEFAULT_URL} (got {url!r})"
        )


def frame(reader: Reader, key: str | None) -> tuple[bool, str]:
    url = reader.url
    ready_status, _ = reader.fetch("/readyz", None)
    ready = ready_status == 200
    code, status = reader.fetch("/v1/router/status", key)
    root = url.rstrip("/").removesuffix("/v1")
    if code == 404 and root != url.rstrip("/"):
        raise StatusError(f"{url} is the SDK's base URL; pass the router's own: --url {root}")
    if code != 200:
        raise StatusError(f"/v1/router/status answered {code}")
    code, history = reader.fetch("/v1/router/history", key)
    if code != 200:
        raise StatusError(f"/v1/router/history answered {code}")
    return ready, render(url, ready, status, history)


def run_status(url: str, watch: bool, interval_s: float, out: TextIO = sys.stdout) -> int:
    key = os.environ.get(KEY_ENV) or None
    try:
        check_url(url)
    except StatusError as exc:
        print(f"model-router: status: {exc}", file=sys.stderr)
        return 2
    reader = Reader(url)
    try:
        return _watch(reader, key, interval_s, out) if watch else _once(reader, key, out)
    finally:
        reader.close()


def _once(reader: Reader, key: str | None, out: TextIO) -> int:
    try:
        ready, text = frame(reader, key)
    except StatusError as exc:
        print(f"model-router: status: {exc}", file=sys.stderr)
        return 2
    out.write(text)
    return 0 if ready else 1


def _watch(reader: Reader, key: str | None, interval_s: float, out: TextIO) -> int:
    stop = False

    def on_signal(signum: int, _frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_signal)
    code = 2
    try:
        while not stop:
            try:
                ready, text = frame(reader, key)
                code = 0 if ready else 1
            except StatusError as exc:
                text, code = f"model-router: status: {exc}\n", 2
            out.write(CLEAR + text)
            out.flush()
            deadline = time.monotonic() + interval_s
            while not stop and time.monotonic() < deadline:
                time.sleep(min(0.1, interval_s))
    except KeyboardInterrupt:
        pass
    return code
