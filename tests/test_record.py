"""The request record's one field list: the usage log's schema and rows, the access log's
line and the report's groups all come from ``FIELDS``."""

from __future__ import annotations

import dataclasses
import sqlite3

import pytest

from proxy.accounting.report import GROUPS
from proxy.accounting.usage_log import INSERT, LATER, connect
from proxy.serve.record import COLUMNS, FIELDS, LOGGED, Asked, RequestRecord, logged, row


def test_the_usage_table_has_one_column_per_field_in_order(tmp_path: object) -> None:
    conn = connect(f"{tmp_path}/u.db")
    try:
        have = [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
    finally:
        conn.close()
    assert have == ["id", *COLUMNS]


def test_an_older_database_gains_the_later_columns_and_takes_a_row(tmp_path: object) -> None:
    """A log written before hedging (or estimates, experiments...) is opened, not replaced:
    the later columns are added and a new row goes in."""
    path = f"{tmp_path}/old.db"
    old = [c for c in COLUMNS if c not in LATER]
    first = sqlite3.connect(path)
    first.execute(f"CREATE TABLE usage (id INTEGER PRIMARY KEY, {', '.join(old)})")
    first.commit()
    first.close()
    conn = connect(path)
    try:
        have = [r[1] for r in conn.execute("PRAGMA table_info(usage)")]
        rec = RequestRecord(Asked("r1", "chat"), hedged="hedge", hedge_cost=0.25, hedge_tokens=3)
        conn.execute(INSERT, row(rec, 1.0))
        got = conn.execute("SELECT hedged, hedge_cost, hedge_tokens FROM usage").fetchone()
    finally:
        conn.close()
    assert {"hedged", "hedge_cost", "hedge_tokens"} <= set(LATER)
    assert set(have) == {"id", *COLUMNS}
    assert got == ("hedge", 0.25, 3)


def test_a_row_fills_every_column_and_the_access_line_every_logged_field() -> None:
    rec = RequestRecord(Asked("r1", "chat", "k1", True, "auto", "fast", None, 0.5, "a:control"))
    rec.answered_by("m", "openai", "economy")
    rec.ttft_ms, rec.total_ms, rec.status = 12.345, 20.0, 200
    values = row(rec, 1.0)
    assert len(values) == len(COLUMNS) == INSERT.count("?")
    assert dict(zip(COLUMNS, values, strict=True))["model_tier"] == "economy"
    line = logged(rec)
    assert tuple(line) == LOGGED and line["ttft_ms"] == 12.3 and line["arm"] == "a:control"
    conn = sqlite3.connect(":memory:")
    conn.execute(f"CREATE TABLE usage ({', '.join(COLUMNS)})")
    conn.execute(INSERT, values)
    conn.close()


def test_what_was_asked_is_frozen() -> None:
    rec = RequestRecord(Asked("r1", "chat"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        rec.asked.tier = "premium"  # type: ignore[misc]


def test_report_groups_name_recorded_columns() -> None:
    assert set(GROUPS.values()) <= {f.name for f in FIELDS}
