"""Usage, cost and spend over real sockets: usage.cost, the usage chunk, the SQLite usage log,
the response cache and the daily budget, with the OpenAI SDK against the real app."""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from proxy.accounting.ledger import ACCOUNTING, Accounting
from proxy.app import make_app, start_server
from proxy.sim.script import Fault
from tests.conftest import UPSTREAM_ENV, Proxy, Sim, StartProxy, config_for
from tests.openapi_schema import assert_valid

# Five words: the simulator counts 5 prompt tokens; its default profile answers 8 tokens.
PROMPT = "please count these five words"
MSG = [{"role": "user", "content": PROMPT}]
PRICES = {"overrides": {"gpt-5-nano": {"input_price": 2.0, "output_price": 8.0}}}
# 5 tokens in at $2/M plus 8 tokens out at $8/M.
KNOWN_COST = (5 * 2.0 + 8 * 8.0) / 1e6
FAST_FLUSH = {"usage": {"flush_ms": 10.0}}


def accounting(proxy: Proxy) -> Accounting:
    return proxy.app[ACCOUNTING]


async def until(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")


async def logged_rows(acct: Accounting, count: int) -> list[dict[str, Any]]:
    """The usage rows once ``count`` have been written (the writer batches every few ms)."""
    usage = acct.usage
    assert usage is not None
    await until(lambda: usage.written_rows >= count)
    conn = sqlite3.connect(acct.usage.path)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM usage ORDER BY id")]
    finally:
        conn.close()


def sim_calls(sim: Sim) -> int:
    return sum(sim.state.requests.values())


# --- usage.cost and the usage chunk ------------------------------------------------------


async def test_non_streaming_answer_carries_the_cost_of_its_usage_at_catalog_prices(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({**PRICES, **FAST_FLUSH})
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=MSG
    )
    body = orjson.loads(raw.content)
    assert body["usage"]["prompt_tokens"] == 5 and body["usage"]["completion_tokens"] == 8
    assert body["usage"]["cost"] == pytest.approx(KNOWN_COST, abs=1e-12)
    (row,) = await logged_rows(accounting(proxy), 1)
    assert row["cost"] == pytest.approx(KNOWN_COST, abs=1e-12)
    assert (row["prompt_tokens"], row["completion_tokens"]) == (5, 8)


async def test_stream_passes_the_usage_chunk_with_cost_when_the_client_asks(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(PRICES)
    stream = await proxy.client().chat.completions.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (5, 8)
    assert usage.model_extra is not None
    assert usage.model_extra["cost"] == pytest.approx(KNOWN_COST, abs=1e-12)
    assert all(c.usage is None for c in chunks[:-1])


async def test_stream_withholds_the_usage_chunk_but_still_asks_upstream_and_counts_it(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({**PRICES, **FAST_FLUSH})
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            json={"model": "gpt-5-nano", "messages": MSG, "stream": True},
        ) as resp,
    ):
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    # Chunks pass through byte for byte ("usage": null included); the usage chunk is dropped.
    chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    assert all(c.get("usage") is None and c["choices"] for c in chunks)
    assert proxy.sim.state.last_body["gpt-5-nano"]["stream_options"] == {"include_usage": True}
    (row,) = await logged_rows(accounting(proxy), 1)
    assert row["cost"] == pytest.approx(KNOWN_COST, abs=1e-12)
    assert row["ttft_ms"] is not None and row["ttft_ms"] > 0


# --- the usage log -----------------------------------------------------------------------


async def test_every_kind_of_request_gets_one_row_and_report_agrees_with_them(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(FAST_FLUSH)
    client = proxy.client()
    sim = proxy.sim.state

    def rid(name: str) -> dict[str, str]:
        return {"x-request-id": name}

    stream = await client.chat.completions.create(
        model="auto:fast", messages=MSG, stream=True, extra_headers=rid("stream-ok")
    )  # type: ignore[call-overload]
    assert [c async for c in stream]
    await client.chat.completions.create(
        model="gpt-5-nano", messages=MSG, temperature=0, extra_headers=rid("miss")
    )  # type: ignore[call-overload]
    hit = await client.chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=MSG, temperature=0, extra_headers=rid("hit")
    )  # type: ignore[call-overload]
    assert hit.headers["x-router-cache"] == "hit"
    sim.set_fault("gpt-5-nano", Fault("status", status=500, remaining=1))
    with pytest.raises(openai.InternalServerError):
        await client.chat.completions.create(
            model="gpt-5-nano", messages=MSG, extra_headers=rid("error")
        )  # type: ignore[call-overload]
    sim.set_fault("gpt-5-nano", Fault("status", status=500, remaining=1))
    fell_back = await client.chat.completions.with_raw_response.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        extra_body={"models": ["gpt-5-mini"]},
        extra_headers=rid("fallback"),
    )
    assert fell_back.headers["x-router-attempts"] == "2"
    with pytest.raises(openai.BadRequestError):
        await client.chat.completions.create(model="auto", messages=[], extra_headers=rid("bad"))  # type: ignore[call-overload]

    rows = {r["request_id"]: r for r in await logged_rows(accounting(proxy), 6)}
    assert set(rows) == {"stream-ok", "miss", "hit", "error", "fallback", "bad"}
    ok = rows["stream-ok"]
    assert (ok["status"], ok["stream"], ok["attempts"], ok["cache_hit"]) == (200, 1, 1, 0)
    assert ok["prefer"] == "fast" and ok["intent"] == "auto prefer=fast tier=any"
    assert ok["ttft_ms"] > 0 and ok["total_ms"] >= ok["ttft_ms"] and ok["cost"] > 0
    assert ok["model"] and ok["provider"] and ok["model_tier"] in {"economy", "standard", "premium"}
    assert rows["miss"]["cost"] > 0 and rows["miss"]["cache_hit"] == 0
    assert (rows["hit"]["cache_hit"], rows["hit"]["cost"], rows["hit"]["attempts"]) == (1, 0.0, 0)
    assert rows["hit"]["completion_tokens"] == rows["miss"]["completion_tokens"]
    assert (rows["error"]["status"], rows["error"]["error"], rows["error"]["cost"]) == (
        502,
        "server",
        0.0,
    )
    # Its one deployment's failure: the row names the model, as the answer's headers do.
    assert (rows["error"]["model"], rows["error"]["provider"]) == ("gpt-5-nano", "openai")
    fb = rows["fallback"]
    assert (fb["status"], fb["attempts"], fb["model"], fb["model_tier"]) == (
        200,
        2,
        "gpt-5-mini",
        "economy",
    )
    assert (rows["bad"]["status"], rows["bad"]["model"]) == (400, None)
    assert all(r["key_id"] is None and r["total_ms"] > 0 for r in rows.values())

    # The CLI, run as a user would, on the database this proxy wrote.
    assert accounting(proxy).usage is not None
    db = accounting(proxy).usage.path  # type: ignore[union-attr]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "proxy", "report", "--db", db, "--json", stdout=subprocess.PIPE
    )
    stdout, _ = await asyncio.wait_for(proc.communicate(), 30)
    assert proc.returncode == 0
    report = orjson.loads(stdout)
    total = report["total"]
    assert total["calls"] == 6
    assert total["cost_usd"] == pytest.approx(sum(r["cost"] for r in rows.values()), abs=1e-9)
    assert (total["cache_hits"], total["fallbacks"], total["errors"]) == (1, 1, 2)
    by_model = {g["model"]: g for g in report["groups"]}
    assert by_model["gpt-5-mini"]["calls"] == 1 and by_model[None]["calls"] == 1
    assert by_model[ok["model"]]["ttft_p50_ms"] == pytest.approx(ok["ttft_ms"])


@asynccontextmanager
async def serving(
    sim: Sim, data: dict[str, Any], state_dir: Path
) -> AsyncIterator[tuple[web.Application, openai.AsyncOpenAI, str]]:
    """The real app on an ephemeral port and an SDK client for it; stopped (and its usage
    log flushed) on exit."""
    env = {**UPSTREAM_ENV, "STATE_DIRECTORY": str(state_dir)}
    app = make_app(config_for(sim.url, data), environ=env)
    runner, port = await start_server(app, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{port}"
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key="client-key", max_retries=0)
    try:
        yield app, client, url
    finally:
        await client.close()
        await runner.cleanup()


def db_files(db: Path) -> dict[str, bytes]:
    """The database file and its -wal/-shm companions, raw bytes."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.glob(db.name + "*"))}


async def test_no_prompt_or_answer_text_reaches_the_database_file(sim: Sim, tmp_path: Path) -> None:
    marker = "zebra-PROMPT-MARKER-4f1c"
    messages: Any = [
        {"role": "system", "content": "secret system text"},
        {"role": "user", "content": marker},
    ]
    answers = []
    async with serving(sim, FAST_FLUSH, tmp_path) as (app, client, _):
        done = await client.chat.completions.create(
            model="gpt-5-nano", messages=messages, temperature=0
        )
        answers.append(done.choices[0].message.content or "")
        stream = await client.chat.completions.create(
            model="auto:fast", messages=messages, stream=True
        )
        answers.append("".join([c.choices[0].delta.content or "" async for c in stream]))
        fim = await client.completions.create(
            model="auto", prompt=marker + " def f(", suffix="secret suffix"
        )
        answers.append(fim.choices[0].text)
        await logged_rows(app[ACCOUNTING], 3)
        live = db_files(tmp_path / "model-router.db")
    closed = db_files(tmp_path / "model-router.db")
    # While serving, the rows sit in the WAL; after a clean stop they are in the main file.
    assert {"model-router.db", "model-router.db-wal"} <= live.keys()
    assert set(closed) == {"model-router.db"}
    assert len(answers) == 3 and all(len(a) > 20 for a in answers)
    for files in (live, closed):
        blob = b"".join(files.values())
        assert b"gpt-5-nano" in blob  # the rows are there
        for secret in (marker, "secret system text", "secret suffix", *answers):
            assert secret.encode() not in blob


async def test_a_database_that_cannot_be_written_does_not_stop_serving(
    start_proxy: StartProxy, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    unwritable = tmp_path / "no-such-dir" / "usage.db"
    proxy = await start_proxy({"usage": {"path": str(unwritable), "flush_ms": 5.0, "queue_max": 2}})
    client = proxy.client()
    for _ in range(5):
        done = await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
        assert done.choices[0].message.content
        await asyncio.sleep(0.03)
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/router/status") as resp:
        status = (await resp.json())["usage_log"]
    assert status["write_errors"] >= 2 and status["dropped_rows"] >= 3
    assert status["written_rows"] == 0 and status["queued_rows"] <= 2
    warnings = [r for r in caplog.records if r.name == "model_router.usage"]
    assert len(warnings) == 1  # once per interval, not once per failed flush
    assert "unable to open database file" in warnings[0].getMessage()
    assert MSG[0]["content"] not in caplog.text


async def test_rows_wait_out_a_locked_database_and_are_written_once_it_frees(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"usage": {"flush_ms": 10.0}})
    acct = accounting(proxy)
    assert acct.usage is not None
    client = proxy.client()
    await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    await logged_rows(acct, 1)
    holder = sqlite3.connect(acct.usage.path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # e.g. a backup holding the write lock
    try:
        for _ in range(3):
            done = await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
            assert done.choices[0].message.content
        usage = acct.usage
        await until(lambda: usage.write_errors > 0, within_s=10)
        assert acct.usage.written_rows == 1 and acct.usage.queued >= 3
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    rows = await logged_rows(acct, 4)
    assert len(rows) == 4 and acct.usage.dropped_rows == 0


# --- the response cache ------------------------------------------------------------------


async def test_temperature_zero_answer_is_served_from_cache_without_reaching_upstream(
    proxy: Proxy,
) -> None:
    client = proxy.client()
    first = await client.chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=MSG, temperature=0, user="alice"
    )  # type: ignore[call-overload]
    assert first.headers["x-router-cache"] == "miss"
    assert sim_calls(proxy.sim) == 1
    # "user", extension fields and 0 vs 0.0 do not change the answer.
    second = await client.chat.completions.with_raw_response.create(
        model="gpt-5-nano",
        messages=MSG,  # type: ignore[arg-type]
        temperature=0.0,
        user="bob",
        extra_body={"prefer": "quality"},
    )
    assert sim_calls(proxy.sim) == 1
    assert second.headers["x-router-cache"] == "hit"
    assert second.headers["x-router-attempts"] == "0"
    assert second.headers["x-router-model"] == "gpt-5-nano"
    a, b = orjson.loads(first.content), orjson.loads(second.content)
    assert a["choices"] == b["choices"]
    assert a["usage"]["cost"] > 0 and b["usage"]["cost"] == 0
    assert_valid("CreateChatCompletionResponse", b)


async def test_cached_answer_is_replayed_to_a_stream_as_valid_chunks(proxy: Proxy) -> None:
    client = proxy.client()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "parameters": {
                    "type": "object",
                    "properties": {"q": {"type": "string"}},
                    "required": ["q"],
                },
            },
        }
    ]
    texts = []
    for kwargs in ({}, {"tools": tools}):
        done = await client.chat.completions.create(
            model="gpt-5-nano", messages=MSG, temperature=0, **kwargs
        )  # type: ignore[call-overload]
        calls = sim_calls(proxy.sim)
        async with (
            aiohttp.ClientSession() as s,
            s.post(
                f"{proxy.url}/v1/chat/completions",
                json={
                    "model": "gpt-5-nano",
                    "messages": MSG,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **kwargs,
                },
            ) as resp,
        ):
            assert resp.headers["x-router-cache"] == "hit"
            assert resp.headers["Content-Type"].startswith("text/event-stream")
            raw = await resp.read()
        assert sim_calls(proxy.sim) == calls
        events = [e for e in raw.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        chunks = [orjson.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
        for chunk in chunks:
            assert_valid("CreateChatCompletionStreamResponse", chunk)
        assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost"] == 0
        message = done.choices[0].message
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks[:-1])
        assert text == (message.content or "")
        texts.append(text)
        if message.tool_calls:
            (call,) = [
                c["choices"][0]["delta"]["tool_calls"][0]
                for c in chunks[:-1]
                if c["choices"][0]["delta"].get("tool_calls")
            ]
            assert call["function"]["arguments"] == message.tool_calls[0].function.arguments  # type: ignore[union-attr]
        assert chunks[-2]["choices"][0]["finish_reason"] == done.choices[0].finish_reason

    # The SDK reads the replay like any stream; without include_usage no usage chunk comes.
    stream = await client.chat.completions.create(
        model="gpt-5-nano", messages=MSG, temperature=0, stream=True
    )  # type: ignore[call-overload]
    got = [c async for c in stream]
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == texts[0]
    assert all(c.usage is None for c in got)


async def test_cached_legacy_completion_replays_as_valid_completion_chunks(proxy: Proxy) -> None:
    client = proxy.client()
    done = await client.completions.create(
        model="auto", prompt="def add(a, b):", suffix="\n", temperature=0
    )
    calls = sim_calls(proxy.sim)
    stream = await client.completions.create(
        model="auto", prompt="def add(a, b):", suffix="\n", temperature=0, stream=True
    )
    chunks = [c async for c in stream]
    assert sim_calls(proxy.sim) == calls
    for chunk in chunks:
        assert_valid("CreateCompletionResponse", chunk.model_dump(exclude_unset=True))
    assert "".join(c.choices[0].text for c in chunks) == done.choices[0].text


async def test_cache_opt_in_and_opt_out_override_the_temperature_rule(proxy: Proxy) -> None:
    client = proxy.client()
    for _ in range(2):
        await client.chat.completions.create(
            model="gpt-5-nano", messages=MSG, temperature=0.7, extra_body={"cache": True}
        )  # type: ignore[call-overload]
    assert sim_calls(proxy.sim) == 1
    assert "cache" not in proxy.sim.state.last_body["gpt-5-nano"]
    other = [{"role": "user", "content": "another question entirely"}]
    for _ in range(2):
        await client.chat.completions.create(
            model="gpt-5-nano", messages=other, temperature=0, extra_body={"cache": False}
        )  # type: ignore[call-overload]
    assert sim_calls(proxy.sim) == 3
    for _ in range(2):
        await client.chat.completions.create(model="gpt-5-nano", messages=other, temperature=0.2)  # type: ignore[call-overload]
    assert sim_calls(proxy.sim) == 5


async def test_cache_field_that_is_not_a_boolean_is_a_400_and_nothing_goes_upstream(
    proxy: Proxy,
) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        await proxy.client().chat.completions.create(
            model="gpt-5-nano", messages=MSG, extra_body={"cache": "yes"}
        )  # type: ignore[call-overload]
    assert err.value.param == "cache"  # type: ignore[attr-defined]
    assert sim_calls(proxy.sim) == 0


async def test_answers_over_the_entry_size_cap_are_not_cached(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"cache": {"max_entry_bytes": 200}})
    client = proxy.client()
    for _ in range(2):
        raw = await client.chat.completions.with_raw_response.create(
            model="gpt-5-nano", messages=MSG, temperature=0
        )  # type: ignore[call-overload]
        assert raw.headers.get("x-router-cache") != "hit"
    assert sim_calls(proxy.sim) == 2
    stats = accounting(proxy).status()["cache"]
    assert (stats["entries"], stats["too_large"], stats["hits"]) == (0, 2, 0)


async def test_a_disabled_cache_never_answers(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"cache": {"enabled": False}})
    for _ in range(2):
        raw = await proxy.client().chat.completions.with_raw_response.create(
            model="gpt-5-nano", messages=MSG, temperature=0
        )  # type: ignore[call-overload]
        assert "x-router-cache" not in raw.headers
    assert sim_calls(proxy.sim) == 2


# --- the budget --------------------------------------------------------------------------


async def test_budget_trips_with_a_429_that_says_when_it_resets_and_survives_a_restart(
    sim: Sim, tmp_path: Path
) -> None:
    data = {"budget": {"daily_usd": 1e-7}, **PRICES}
    midnight = (time.time() // 86_400 + 1) * 86_400
    async with serving(sim, data, tmp_path) as (_, client, _):
        # Under budget: served, and its cost takes today's spend past the cap.
        await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
        with pytest.raises(openai.RateLimitError) as err:
            await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    assert sim_calls(sim) == 1
    assert "global daily budget of $0.00" in err.value.message
    assert "resets at 00:00 UTC" in err.value.message
    assert err.value.code == "budget_exceeded"
    headers = err.value.response.headers
    assert headers["x-should-retry"] == "false"
    assert abs(int(headers["Retry-After"]) - (midnight - time.time())) < 5

    # A second proxy on the same database reads today's spend back and refuses at once.
    async with serving(sim, data, tmp_path) as (app, client, url):
        assert app[ACCOUNTING].budget.spent == pytest.approx(KNOWN_COST, abs=1e-12)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model="gpt-5-nano", messages=MSG, stream=True)  # type: ignore[arg-type]
        async with aiohttp.ClientSession() as s, s.get(f"{url}/v1/router/status") as resp:
            status = (await resp.json())["spend"]
    assert sim_calls(sim) == 1
    assert status["today_usd"] == pytest.approx(KNOWN_COST, abs=1e-9)
    assert status["daily_budget_usd"] == 1e-7
    assert (status["remaining_usd"], status["refused"]) == (0, 1)


async def test_cache_hits_are_served_past_the_budget_because_they_cost_nothing(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"budget": {"daily_usd": 1e-7}})
    client = proxy.client()
    await client.chat.completions.create(model="gpt-5-nano", messages=MSG, temperature=0)  # type: ignore[arg-type]
    hit = await client.chat.completions.with_raw_response.create(
        model="gpt-5-nano", messages=MSG, temperature=0
    )  # type: ignore[call-overload]
    assert hit.headers["x-router-cache"] == "hit"
    with pytest.raises(openai.RateLimitError):
        await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]
    assert sim_calls(proxy.sim) == 1
