"""``model-router report`` run as a subprocess on a usage log the test wrote row by row."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy.__main__ import main
from proxy.accounting.report import ReportError, parse_since, percentile
from proxy.accounting.usage_log import COLUMNS, connect, insert

NOW = time.time()


def row(**values: Any) -> tuple[Any, ...]:
    base: dict[str, Any] = {
        "ts": NOW - 60,
        "request_id": "r",
        "key_id": None,
        "endpoint": "chat",
        "stream": 1,
        "intent": "auto prefer=fast tier=any",
        "prefer": "fast",
        "tier": None,
        "model": "gpt-5-nano",
        "provider": "openai",
        "model_tier": "economy",
        "attempts": 1,
        "status": 200,
        "error": None,
        "ttft_ms": 100.0,
        "total_ms": 300.0,
        "prompt_tokens": 10,
        "completion_tokens": 20,
        "cost": 0.001,
        "cache_hit": 0,
        "arm": None,
        "escalated_from": None,
        "complexity": None,
        "estimated": 0,
        "hedged": None,
        "hedge_cost": 0.0,
        "hedge_tokens": 0,
    }
    base.update(values)
    return tuple(base[c] for c in COLUMNS)


# nano: TTFTs 10..100 ms (p50 50, p95 100); one fallback; one cache hit (cost 0, no TTFT).
NANO = [row(ttft_ms=float(t), cost=0.001, key_id="team-a") for t in range(10, 101, 10)]
NANO[3] = row(ttft_ms=40.0, cost=0.001, attempts=2, key_id="team-a")
ROWS = [
    *NANO,
    row(ttft_ms=None, cost=0.0, cache_hit=1, stream=0, key_id="team-a"),
    row(
        model="claude-sonnet-4-5",
        provider="anthropic",
        model_tier="premium",
        prefer="quality",
        ttft_ms=900.0,
        cost=0.05,  # the cancelled loser of a hedged race included
        hedged="hedge",
        hedge_cost=0.004,
    ),
    row(
        model=None,
        provider=None,
        model_tier=None,
        prefer=None,
        status=502,
        error="server",
        ttft_ms=None,
        cost=0.0,
    ),
    # Two days old: outside --since 24h, inside --since all.
    row(ts=NOW - 2 * 86_400, cost=7.0, ttft_ms=5.0),
]


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = str(tmp_path / "usage.db")
    conn = connect(path)
    insert(conn, ROWS)
    conn.close()
    return path


def report(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "report", *args],
        capture_output=True,
        text=True,
        timeout=30,
    )


def as_json(db: str, *args: str) -> dict[str, Any]:
    done = report("--db", db, "--json", *args)
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = orjson.loads(done.stdout)
    return result


def in_process(capsys: pytest.CaptureFixture[str], db: str, *args: str) -> dict[str, Any]:
    """The same CLI entry point without a new interpreter (for the many small cases)."""
    assert main(["report", "--db", db, "--json", *args]) == 0
    result: dict[str, Any] = orjson.loads(capsys.readouterr().out)
    return result


def test_totals_and_groups_by_model_match_the_rows(db: str) -> None:
    data = as_json(db)
    assert data["total"] == {
        "calls": 13,
        "cost_usd": pytest.approx(0.06),
        "cache_hits": 1,
        "fallbacks": 1,
        "errors": 1,
        "prompt_tokens": 130,
        "completion_tokens": 260,
        "estimated": 0,
        "estimated_cost_usd": 0.0,
        "hedged": 1,
        "hedge_cost_usd": pytest.approx(0.004),
    }
    groups = data["groups"]
    assert [g["model"] for g in groups] == ["claude-sonnet-4-5", "gpt-5-nano", None]
    nano = groups[1]
    assert (nano["calls"], nano["cache_hits"], nano["fallbacks"]) == (11, 1, 1)
    assert nano["cost_usd"] == pytest.approx(0.010)
    assert (nano["ttft_p50_ms"], nano["ttft_p95_ms"]) == (50.0, 100.0)
    assert (groups[0]["ttft_p50_ms"], groups[0]["ttft_p95_ms"]) == (900.0, 900.0)
    assert groups[2]["errors"] == 1 and groups[2]["ttft_p50_ms"] is None


@pytest.mark.parametrize(
    ("by", "expected"),
    [
        pytest.param("tier", {"economy": 11, "premium": 1, None: 1}, id="tier"),
        pytest.param("prefer", {"fast": 11, "quality": 1, None: 1}, id="prefer"),
        pytest.param("key", {"team-a": 11, None: 2}, id="key"),
    ],
)
def test_groups_by_tier_prefer_and_key(
    capsys: pytest.CaptureFixture[str], db: str, by: str, expected: dict[Any, int]
) -> None:
    data = in_process(capsys, db, "--by", by)
    assert {g[by]: g["calls"] for g in data["groups"]} == expected


def test_since_filters_rows(capsys: pytest.CaptureFixture[str], db: str) -> None:
    everything = in_process(capsys, db, "--since", "all")["total"]
    assert (everything["calls"], everything["cost_usd"]) == (14, pytest.approx(7.06))
    assert in_process(capsys, db, "--since", "30s")["total"]["calls"] == 0


def test_table_is_readable_in_a_terminal(db: str) -> None:
    done = report("--db", db)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert "total: $0.060000 over 13 calls; 1 cache hits, 1 fallbacks, 1 errors" in lines[1]
    header = next(line for line in lines if line.startswith("model "))
    assert header.split() == [
        "model",
        "calls",
        "errors",
        "cache",
        "hits",
        "fallbacks",
        "estimated",
        "cost",
        "(USD)",
        "TTFT",
        "p50",
        "TTFT",
        "p95",
    ]
    nano = next(line for line in lines if line.startswith("gpt-5-nano"))
    assert nano.split() == [
        "gpt-5-nano",
        "11",
        "0",
        "1",
        "1",
        "0",
        "0.010000",
        "50",
        "ms",
        "100",
        "ms",
    ]
    none = next(line for line in lines if line.startswith("(none)"))
    assert none.split()[-2:] == ["-", "-"]
    # Columns line up: every row is as wide as the header.
    table = lines[lines.index(header) :]
    assert len({len(line) for line in table}) == 1


def test_missing_database_is_a_clear_error(tmp_path: Path) -> None:
    done = report("--db", str(tmp_path / "nope.db"))
    assert done.returncode == 2 and "no usage log at" in done.stderr
    assert not (tmp_path / "nope.db").exists()


def test_bad_since_is_a_clear_error(db: str) -> None:
    done = report("--db", db, "--since", "yesterday-ish")
    assert done.returncode == 2 and "--since 'yesterday-ish'" in done.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("90s", 1_000_000 - 90, id="seconds"),
        pytest.param("30m", 1_000_000 - 1_800, id="minutes"),
        pytest.param("24h", 1_000_000 - 86_400, id="hours"),
        pytest.param("7d", 1_000_000 - 7 * 86_400, id="days"),
        pytest.param("today", 950_400, id="today-utc-midnight"),
        pytest.param("all", 0, id="all"),
        pytest.param("1970-01-12", 950_400, id="iso-date-utc"),
        pytest.param("1970-01-12T01:00:00+01:00", 950_400, id="iso-with-zone"),
    ],
)
def test_parse_since(text: str, expected: float) -> None:
    assert parse_since(text, 1_000_000.0) == expected


def test_parse_since_rejects_nonsense() -> None:
    with pytest.raises(ReportError):
        parse_since("soon", 0.0)


def test_nearest_rank_percentiles() -> None:
    values = [float(v) for v in range(1, 21)]
    assert (percentile(values, 50), percentile(values, 95), percentile(values, 100)) == (
        10.0,
        19.0,
        20.0,
    )
    assert percentile([], 50) is None and percentile([7.0], 95) == 7.0


def test_by_arm_compares_experiment_arms(tmp_path: Path) -> None:
    path = str(tmp_path / "arms.db")
    conn = connect(path)
    control = [row(arm="x:control", cost=0.002, ttft_ms=float(t)) for t in (100, 200, 300, 400)]
    treatment = [row(arm="x:treatment", cost=0.001, ttft_ms=50.0) for _ in range(3)]
    treatment.append(row(arm="x:treatment", cost=0.001, status=502, escalated_from="economy"))
    insert(conn, [*control, *treatment, row()])  # the last row is in no experiment
    conn.close()
    data = as_json(path, "--by", "arm")
    arms = {a["arm"]: a for a in data["arms"]}
    assert set(arms) == {"x:control", "x:treatment"}
    assert arms["x:control"]["calls"] == 4 and arms["x:control"]["cost"] == pytest.approx(0.008)
    assert (
        arms["x:treatment"]["error_rate"] == 0.25 and arms["x:treatment"]["escalation_rate"] == 0.25
    )
    assert arms["x:control"]["ttft_p50_ms"] == 200.0
    (comparison,) = data["comparisons"]
    assert comparison["experiment"] == "x" and comparison["cost_per_call_change"] == pytest.approx(
        -0.5
    )
    table = report("--db", path, "--by", "arm")
    assert table.returncode == 0 and "x:treatment" in table.stdout


def test_older_log_without_arm_columns_gains_them(tmp_path: Path) -> None:
    import sqlite3

    path = str(tmp_path / "old.db")
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE usage (id INTEGER PRIMARY KEY, ts REAL NOT NULL, request_id TEXT NOT NULL, key_id TEXT, endpoint TEXT NOT NULL, stream INTEGER NOT NULL, intent TEXT NOT NULL, prefer TEXT, tier TEXT, model TEXT, provider TEXT, model_tier TEXT, attempts INTEGER NOT NULL, status INTEGER NOT NULL, error TEXT, ttft_ms REAL, total_ms REAL NOT NULL, prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, cost REAL NOT NULL, cache_hit INTEGER NOT NULL)"
    )
    old.commit()
    old.close()
    conn = connect(path)
    insert(conn, [row(arm="y:control")])
    conn.close()
    assert as_json(path, "--by", "arm")["arms"][0]["arm"] == "y:control"


def test_estimated_rows_are_counted_and_said(tmp_path: Path) -> None:
    """Streams cut short are charged by the router's count; the report says how many."""
    path = str(tmp_path / "usage.db")
    conn = connect(path)
    insert(
        conn,
        [
            row(cost=0.002),
            row(status=499, error="client_disconnected", cost=0.003, estimated=1),
        ],
    )
    conn.close()
    data = as_json(path)
    assert data["total"]["estimated"] == 1
    assert data["total"]["estimated_cost_usd"] == pytest.approx(0.003)
    assert data["groups"][0]["estimated"] == 1
    done = report("--db", path)
    assert done.returncode == 0, done.stderr
    assert "estimated: 1 calls ($0.003000)" in done.stdout


def test_several_logs_are_read_as_one(
    capsys: pytest.CaptureFixture[str], db: str, tmp_path: Path
) -> None:
    """The usage logs of two workers (or boxes): --db given twice sums them."""
    other = str(tmp_path / "usage-w1.db")
    conn = connect(other)
    insert(conn, [row(cost=0.5, ttft_ms=1000.0), row(cost=0.25, ttft_ms=2000.0)])
    conn.close()
    assert main(["report", "--db", db, "--db", other, "--json"]) == 0
    data = orjson.loads(capsys.readouterr().out)
    assert data["total"]["calls"] == 13 + 2
    assert data["total"]["cost_usd"] == pytest.approx(0.06 + 0.75)
    nano = next(g for g in data["groups"] if g["model"] == "gpt-5-nano")
    assert (nano["calls"], nano["ttft_p95_ms"]) == (13, 2000.0)
    assert data["db"] == f"{db}, {other}"
