"""An upstream whose usage counts are negative: the client still gets its answer, the record
holds no negative count, and every sink runs (metrics, history, accounting, the usage log).
A negative count once made the metrics sink raise after the answer was sent, which skipped
the sinks after it: the request's usage row and its spend were lost. The proxy is the real
app, the upstream a small aiohttp app on 127.0.0.1, the client the OpenAI SDK."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from tests.conftest import Sim, StartProxy, config_for
from tests.test_fault_matrix import MSG, NANO, outcomes, serve, with_base_url
from tests.test_fault_matrix import settings as row_settings

USAGE = {"prompt_tokens": -5, "completion_tokens": 3, "total_tokens": -2}
STATE = web.AppKey("state", dict)


async def answer(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    if not body.get("stream"):
        return web.json_response(
            {
                "id": "chatcmpl-1",
                "object": "chat.completion",
                "created": 1,
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "hello"},
                        "finish_reason": "stop",
                    }
                ],
                "usage": USAGE,
            }
        )
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    base: dict[str, Any] = {"id": "c", "object": "chat.completion.chunk", "model": body["model"]}
    for choices, usage in (
        ([{"index": 0, "delta": {"role": "assistant", "content": "hello"}}], None),
        ([{"index": 0, "delta": {}, "finish_reason": "stop"}], None),
        ([], USAGE),
    ):
        await resp.write(b"data: " + orjson.dumps({**base, "choices": choices, "usage": usage}))
        await resp.write(b"\n\n")
    await resp.write(b"data: [DONE]\n\n")
    return resp


async def proxy_with_bad_usage(start_proxy: StartProxy, sim: Sim) -> Any:
    runner, url = await serve(answer, STATE, {})
    config = with_base_url(config_for(sim.url, row_settings()), "openai", f"{url}/v1")
    return runner, await start_proxy(config=config)


async def test_a_negative_count_in_an_answer_is_clamped_and_every_sink_runs(
    start_proxy: StartProxy, sim: Sim
) -> None:
    runner, proxy = await proxy_with_bad_usage(start_proxy, sim)
    try:
        seen = outcomes(proxy)  # the last sink: it runs only if every sink before it did
        got = await proxy.client().chat.completions.create(model=NANO, messages=MSG)
        assert got.choices[0].message.content == "hello"
        assert [(o.status, o.prompt_tokens, o.completion_tokens) for o in seen] == [(200, 0, 3)]
        assert seen[0].cost >= 0.0
    finally:
        await runner.cleanup()


async def test_a_negative_count_in_a_stream_is_estimated_and_every_sink_runs(
    start_proxy: StartProxy, sim: Sim
) -> None:
    runner, proxy = await proxy_with_bad_usage(start_proxy, sim)
    try:
        seen = outcomes(proxy)
        stream = await proxy.client().chat.completions.create(model=NANO, messages=MSG, stream=True)
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert text == "hello"
        assert len(seen) == 1 and seen[0].status == 200 and seen[0].estimated
        assert seen[0].prompt_tokens >= 0 and seen[0].completion_tokens == 1
        assert seen[0].cost >= 0.0
    finally:
        await runner.cleanup()
