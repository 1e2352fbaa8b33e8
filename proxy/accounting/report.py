"""``model-router report``: calls, spend and TTFT from the usage log, as a table or JSON."""

from __future__ import annotations

import math
import re
import sqlite3
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import quote

import orjson

from proxy.serve.record import COLUMNS

from .daily_budget import DAY_S
from .experiment_report import arm_stats, compare, format_table

# Joins several --db paths into the one ``path`` the report functions take.
PATH_SEP = "|"

# --by choice -> usage column. "tier" is the tier of the model that answered.
GROUPS = {"model": "model", "tier": "model_tier", "prefer": "prefer", "key": "key_id"}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
_UNIT_S = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": DAY_S}


class ReportError(Exception):
    """The report cannot be made; the message says why, for the terminal."""


def parse_since(text: str, now: float) -> float:
    """'24h', '30m', '7d', '90s', 'today' (since UTC midnight), 'all', or an ISO date/time
    (UTC unless it says otherwise) -> unix time."""
    text = text.strip()
    if text == "all":
        return 0.0
    if text == "today":
        return (now // DAY_S) * DAY_S
    if m := _DURATION.match(text):
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise ReportError(
            f"--since {text!r}: expected a duration (90s, 30m, 24h, 7d), 'today', 'all' "
            "or an ISO date such as 2025-01-31"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending sequence."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(p / 100.0 * len(sorted_values)))
    return sorted_values[rank - 1]


def _connect(path: str) -> sqlite3.Connection:
    """One usage log, or several (``a.db|b.db``: the logs of several workers or boxes,
    read as one ``usage`` table)."""
    paths = path.split(PATH_SEP)
    for p in paths:
        if not Path(p).is_file():
            raise ReportError(
                f"no usage log at {p}: `model-router serve` writes it there once it has "
                "answered a request; point --db at another file"
            )
    try:
        # Read-only: a report must never create or change the log.
        conn = sqlite3.connect(f"file:{quote(paths[0])}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ReportError(f"{paths[0]}: cannot open: {exc}") from None
    if len(paths) == 1:
        return conn
    try:
        columns = ", ".join(COLUMNS)
        parts = [f"SELECT {columns} FROM main.usage"]
        for i, p in enumerate(paths[1:]):
            conn.execute(f"ATTACH DATABASE ? AS log{i}", (f"file:{quote(p)}?mode=ro",))
            parts.append(f"SELECT {columns} FROM log{i}.usage")
        # A temp view is found before main's table of the same name, so every query
        # below reads the union unchanged.
        conn.execute(f"CREATE TEMP VIEW usage AS {' UNION ALL '.join(parts)}")
    except sqlite3.Error as exc:
        conn.close()
        raise ReportError(f"{path.replace(PATH_SEP, ', ')}: cannot read together: {exc}") from None
    return conn


def _counts(values: Sequence[Any]) -> dict[str, Any]:
    calls, cost, hits, fallbacks, errors, tokens_in, tokens_out, est, est_cost, *hedging = values
    hedges, hedge_cost = hedging
    return {
        "calls": int(calls),
        "cost_usd": round(float(cost), 10),
        "cache_hits": int(hits),
        "fallbacks": int(fallbacks),
        "errors": int(errors),
        "prompt_tokens": int(tokens_in),
        "completion_tokens": int(tokens_out),
        # Streams cut short (client left, upstream broke): tokens counted by the router.
        "estimated": int(est),
        "estimated_cost_usd": round(float(est_cost), 10),
        # Hedged races; the cancelled attempts' cost is part of cost_usd.
        "hedged": int(hedges),
        "hedge_cost_usd": round(float(hedge_cost), 10),
    }


def summarize(path: str, since: float, by: str) -> dict[str, Any]:
    column = GROUPS[by]
    conn = _connect(path)
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'usage'"
        ).fetchone()
        if not has_table:
            raise ReportError(f"{path}: not a model-router usage log (no usage table)")
        have = {row[1] for row in conn.execute("PRAGMA table_info(usage)")}
        # A log from before estimates were flagged has none.
        estimated = "COALESCE(estimated, 0)" if "estimated" in have else "0"
        # Nor one from before hedging.
        hedged = "hedge_cost" in have
        hedges = "COALESCE(SUM(hedged IS NOT NULL), 0)" if hedged else "0"
        hedge_cost = "COALESCE(SUM(hedge_cost), 0)" if hedged else "0"
        agg = f"""COUNT(*), COALESCE(SUM(cost), 0), COALESCE(SUM(cache_hit), 0),
                 COALESCE(SUM(attempts > 1), 0), COALESCE(SUM(status >= 400), 0),
                 COALESCE(SUM(prompt_tokens), 0), COALESCE(SUM(completion_tokens), 0),
                 COALESCE(SUM({estimated}), 0),
                 COALESCE(SUM(CASE WHEN {estimated} THEN cost ELSE 0 END), 0),
                 {hedges}, {hedge_cost}"""
        total = conn.execute(f"SELECT {agg} FROM usage WHERE ts >= ?", (since,)).fetchone()
        rows = conn.execute(
            f"SELECT {column}, {agg} FROM usage WHERE ts >= ? GROUP BY {column}", (since,)
        ).fetchall()
        ttfts: dict[Any, list[float]] = {}
        for group, ttft in conn.execute(
            f"SELECT {column}, ttft_ms FROM usage WHERE ts >= ? AND ttft_ms IS NOT NULL "
            "ORDER BY ttft_ms",
            (since,),
        ):
            ttfts.setdefault(group, []).append(float(ttft))
    except sqlite3.Error as exc:
        raise ReportError(f"{path}: {exc}") from None
    finally:
        conn.close()

    groups = []
    for group, *values in rows:
        samples = ttfts.get(group, [])
        groups.append(
            {
                by: group,
                **_counts(values),
                "ttft_p50_ms": percentile(samples, 50),
                "ttft_p95_ms": percentile(samples, 95),
            }
        )
    groups.sort(key=lambda g: (-g["cost_usd"], -g["calls"], str(g[by])))
    return {
        "db": path.replace(PATH_SEP, ", "),
        "since": datetime.fromtimestamp(since, UTC).isoformat(),
        "by": by,
        "total": _counts(total),
        "groups": groups,
    }


def _period(since_text: str) -> str:
    return f"last {since_text}" if _DURATION.match(since_text.strip()) else since_text


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms"


def render(summary: dict[str, Any], since_text: str) -> str:
    by, t = summary["by"], summary["total"]
    since = summary["since"][:16].replace("T", " ")
    lines = [
        f"usage since {since} UTC ({_period(since_text)}) from {summary['db']}",
        f"total: ${t['cost_usd']:.6f} over {t['calls']} calls; {t['cache_hits']} cache hits, "
        f"{t['fallbacks']} fallbacks, {t['errors']} errors; "
        f"{t['prompt_tokens']} tokens in, {t['completion_tokens']} out",
    ]
    if t["hedged"]:
        lines.append(
            f"hedged: {t['hedged']} streams; hedge spend ${t['hedge_cost_usd']:.6f} (in the total)"
        )
    if t["estimated"]:
        lines.append(
            f"estimated: {t['estimated']} calls (${t['estimated_cost_usd']:.6f}) were streams "
            "cut short, charged for the tokens the router counted"
        )
    lines.append("")
    header = (
        "calls",
        "errors",
        "cache hits",
        "fallbacks",
        "estimated",
        "cost (USD)",
        "TTFT p50",
        "TTFT p95",
    )
    table = [
        (
            str(g[by]) if g[by] is not None else "(none)",
            str(g["calls"]),
            str(g["errors"]),
            str(g["cache_hits"]),
            str(g["fallbacks"]),
            str(g["estimated"]),
            f"{g['cost_usd']:.6f}",
            _ms(g["ttft_p50_ms"]),
            _ms(g["ttft_p95_ms"]),
        )
        for g in summary["groups"]
    ]
    width = max([len(by), *(len(row[0]) for row in table)])
    widths = [max([len(h), *(len(row[i + 1]) for row in table)]) for i, h in enumerate(header)]
    lines.append(
        "  ".join([by.ljust(width), *(h.rjust(w) for h, w in zip(header, widths, strict=True))])
    )
    for row in table:
        cells = (c.rjust(w) for c, w in zip(row[1:], widths, strict=True))
        lines.append("  ".join([row[0].ljust(width), *cells]))
    if not table:
        lines.append("(no requests in this period)")
    return "\n".join(lines)


def run_report(
    path: str, since_text: str, by: str, as_json: bool, out: TextIO | None = None
) -> int:
    out = out or sys.stdout
    if by == "arm":
        return _run_arm_report(path, since_text, as_json, out)
    try:
        summary = summarize(path, parse_since(since_text, time.time()), by)
    except ReportError as exc:
        print(f"model-router report: {exc}", file=sys.stderr)
        return 2
    if as_json:
        out.write(orjson.dumps(summary, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        out.write(render(summary, since_text) + "\n")
    return 0


def _run_arm_report(path: str, since_text: str, as_json: bool, out: TextIO) -> int:
    """Experiment arms side by side: calls, cost, TTFT, error and escalation rates."""
    try:
        since = parse_since(since_text, time.time())
        conn = _connect(path)
    except ReportError as exc:
        print(f"model-router report: {exc}", file=sys.stderr)
        return 2
    try:
        conn.row_factory = sqlite3.Row
        query = (
            "SELECT arm, cost, ttft_ms, status, escalated_from FROM usage "
            "WHERE ts >= ? AND arm IS NOT NULL"
        )
        try:
            rows = [dict(r) for r in conn.execute(query, (since,))]
        except sqlite3.OperationalError:  # a log from before arms were recorded
            rows = []
    finally:
        conn.close()
    stats = arm_stats(rows)
    comparisons = compare(stats)
    if as_json:
        data = {
            "period": _period(since_text),
            "arms": [s.as_dict() for s in stats],
            "comparisons": [
                {
                    "experiment": c.experiment,
                    "cost_per_call_change": c.cost_per_call_change,
                    "error_rate_z": c.error_rate_z,
                    "escalation_rate_z": c.escalation_rate_z,
                }
                for c in comparisons
            ],
        }
        out.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")
    elif not stats:
        out.write(f"{_period(since_text)}: no requests in an experiment\n")
    else:
        out.write(format_table(stats, comparisons) + "\n")
    return 0
