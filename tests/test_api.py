"""The HTTP API over real sockets with the real OpenAI SDK: answers, headers, schemas, bad input."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import openai
import orjson
import pytest

from tests.conftest import Proxy
from tests.openapi_schema import assert_valid

MSG = [{"role": "user", "content": "say something"}]


async def test_non_streaming_answer_validates_and_carries_router_headers(proxy: Proxy) -> None:
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="auto",
        messages=MSG,
        extra_body={"prefer": "cheap"},  # type: ignore[arg-type]
    )
    completion = raw.parse()
    assert raw.headers["x-router-model"] == "gpt-5-nano"
    assert raw.headers["x-router-reason"].startswith("prefer=cheap tier=any")
    assert raw.headers["x-router-attempts"] == "1"
    assert raw.headers["x-router-provider"]
    assert completion.choices[0].message.content
    body = orjson.loads(raw.content)
    assert_valid("CreateChatCompletionResponse", body)
    assert body["usage"]["cost"] > 0


async def test_stream_relays_chunks_that_validate_and_ends_with_done(proxy: Proxy) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            json={
                "model": "auto:fast",
                "stream": True,
                "messages": MSG,
                "stream_options": {"include_usage": True},
            },
        ) as resp,
    ):
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        assert resp.headers["Cache-Control"] == "no-cache"
        assert resp.headers["X-Accel-Buffering"] == "no"
        assert resp.headers["x-router-reason"].startswith("prefer=fast")
        raw = await resp.read()
    events = [e for e in raw.split(b"\n\n") if e]
    assert events[-1] == b"data: [DONE]"
    chunks = [orjson.loads(e[6:]) for e in events[:-1]]
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["cost"] > 0


async def test_extension_fields_never_reach_the_upstream(proxy: Proxy) -> None:
    await proxy.client().chat.completions.create(
        model="auto",
        messages=MSG,  # type: ignore[arg-type]
        extra_body={"prefer": "quality", "tier": "economy", "min_coding_score": 10, "models": []},
    )
    (body,) = proxy.sim.state.last_body.values()
    assert not {"prefer", "tier", "min_coding_score", "models"} & body.keys()


BAD: list[Any] = [
    pytest.param(b"{not json", 400, None, id="invalid-json"),
    pytest.param(b"", 400, None, id="empty-body"),
    pytest.param(b'{"model": "auto"}', 400, "messages", id="messages-missing"),
    pytest.param(b'{"model": "auto", "messages": []}', 400, "messages", id="messages-empty"),
    pytest.param(
        b'{"model": "auto", "prefer": "speedy", "messages": [{"role": "user", "content": "x"}]}',
        400,
        "prefer",
        id="unknown-prefer",
    ),
    pytest.param(
        b'{"model": "auto", "tier": "gold", "messages": [{"role": "user", "content": "x"}]}',
        400,
        "tier",
        id="unknown-tier",
    ),
    pytest.param(
        b'{"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]}',
        404,
        "model",
        id="unknown-model",
    ),
    pytest.param(
        b'{"model": "auto", "min_coding_score": 120, "messages": [{"role": "user", "content": "x"}]}',
        400,
        "min_coding_score",
        id="coding-score-range",
    ),
    pytest.param(
        b'{"model": "auto", "stream": "true", "messages": [{"role": "user", "content": "x"}]}',
        400,
        "stream",
        id="stream-not-boolean",
    ),
    pytest.param(
        b'{"model": "auto", "max_tokens": 100000000, "messages": [{"role": "user", "content": "x"}]}',
        400,
        "messages",
        id="context-exceeded",
    ),
    pytest.param(b"[" * 100_000 + b"]" * 100_000, 400, None, id="deeply-nested"),
]


@pytest.mark.parametrize(("body", "status", "param"), BAD)
async def test_bad_input_gets_openai_error_and_nothing_goes_upstream(
    proxy: Proxy, body: bytes, status: int, param: str | None
) -> None:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{proxy.url}/v1/chat/completions",
            data=body,
            headers={"Content-Type": "application/json"},
        ) as resp,
    ):
        payload = await resp.json()
    assert resp.status == status
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["param"] == param
    assert payload["error"]["message"]
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_unknown_model_error_says_where_to_list_models(proxy: Proxy) -> None:
    with pytest.raises(openai.NotFoundError) as err:
        await proxy.client().chat.completions.create(model="gpt-99", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "model_not_found" and "/v1/models" in err.value.message


async def test_context_exceeded_names_the_largest_window(proxy: Proxy) -> None:
    largest = max(m.context_length for m in proxy.router.catalog.models)
    with pytest.raises(openai.BadRequestError) as err:
        await proxy.client().chat.completions.create(model="auto", messages=MSG, max_tokens=10**8)  # type: ignore[arg-type]
    assert err.value.code == "context_length_exceeded" and str(largest) in err.value.message


async def test_body_over_the_limit_is_413_and_nothing_goes_upstream(start_proxy: Any) -> None:
    proxy = await start_proxy({"server": {"max_body_bytes": 10_000}})
    big = orjson.dumps({"model": "auto", "messages": [{"role": "user", "content": "x" * 20_000}]})
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", data=big) as resp,
    ):
        payload = await resp.json()
    assert resp.status == 413 and payload["error"]["code"] == "request_too_large"
    assert sum(proxy.sim.state.requests.values()) == 0


async def test_models_lists_pricing_scores_and_virtual_auto_entries(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/v1/models") as resp:
        data = (await resp.json())["data"]
    real = [m for m in data if not m.get("virtual")]
    assert len(real) >= 20
    for m in real:
        assert {"tier", "pricing", "context_length", "capabilities", "scores"} <= m.keys()
        assert m["scores"]["coding"]["source"] and m["scores"]["quality"]["date"]
    ids = {m["id"] for m in data}
    assert {"auto", "auto:fast", "auto:economy", "auto:premium:coding"} <= ids


async def test_fim_completion_goes_to_a_fim_model(proxy: Proxy) -> None:
    comp = await proxy.client().completions.create(
        model="auto", prompt="def add(a, b):\n    return ", suffix="\n\nprint(add(1, 2))"
    )
    assert comp.choices[0].text
    fim = {m.id for m in proxy.router.catalog.models if "fim" in m.capabilities}
    assert comp.model in fim  # the catalog id, as in x-router-model
    assert_valid("CreateCompletionResponse", comp.model_dump(exclude_unset=True))


@pytest.mark.parametrize(
    ("model", "head", "stream"),
    [
        pytest.param("auto:fast", "prefer=fast tier=any", True, id="fast-stream"),
        pytest.param("gpt-4o-mini", "pinned", False, id="pinned-answer"),
    ],
)
async def test_reason_header_gives_the_ttft_estimate_under_its_name_and_its_old_one(
    proxy: Proxy, model: str, head: str, stream: bool
) -> None:
    """``ttft_estimate_ms`` is the figure's name (as in /v1/router/status); ``ttft_ewma_ms``,
    deprecated, stays first with the same value through 0.1.x (README, "Every answer")."""
    client = proxy.client()
    create = client.chat.completions.with_raw_response.create
    raw = await create(model=model, messages=MSG, stream=stream)  # type: ignore[call-overload]
    reason = raw.headers["x-router-reason"]
    found = re.fullmatch(rf"{head} ttft_ewma_ms=(\d+) ttft_estimate_ms=(\d+)", reason)
    assert found is not None, reason
    assert found[1] == found[2]
    if stream:
        async for _ in raw.parse():
            pass
