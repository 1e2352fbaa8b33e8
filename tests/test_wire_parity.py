"""One tool-using conversation through each wire format (OpenAI-compatible, Anthropic,
Bedrock), streaming and not: the SDK's parsed objects agree on what matters."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.conftest import StartProxy
from tests.openapi_schema import assert_valid

TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather for a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
                "required": ["city", "days"],
            },
        },
    }
]
QUESTION: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Lisbon for three days?"},
]
WIRES = [
    pytest.param("openai", "gpt-4o-mini", id="openai-compatible"),
    pytest.param("anthropic", "claude-sonnet-4-5", id="anthropic"),
    pytest.param("bedrock", "claude-sonnet-4-5", id="bedrock"),
]
PROVIDERS = ("openai", "anthropic", "google", "openrouter", "deepseek", "bedrock")


async def conversation(
    start_proxy: StartProxy, provider: str, model: str, stream: bool
) -> dict[str, Any]:
    only = {p: {"enabled": p == provider} for p in PROVIDERS}
    proxy = await start_proxy({"providers": only})
    client = proxy.client()

    async def ask(messages: list[Any]) -> tuple[Any, Any, str | None, Any]:
        if not stream:
            raw = await client.chat.completions.with_raw_response.create(
                model=model, messages=messages, tools=TOOLS
            )
            assert raw.headers["x-router-provider"] == provider
            done = raw.parse()
            assert_valid("CreateChatCompletionResponse", done.model_dump(exclude_unset=True))
            msg = done.choices[0].message
            calls = [(c.id, c.function.name, c.function.arguments) for c in msg.tool_calls or []]
            return msg.content, calls, done.choices[0].finish_reason, done.usage
        chunks = []
        s = await client.chat.completions.create(
            model=model,
            messages=messages,
            tools=TOOLS,
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in s:
            assert_valid("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
            chunks.append(chunk)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        calls: dict[int, list[str]] = {}
        finish = None
        for c in chunks:
            for choice in c.choices:
                finish = choice.finish_reason or finish
                for tc in choice.delta.tool_calls or []:
                    entry = calls.setdefault(tc.index, ["", "", ""])
                    entry[0] = tc.id or entry[0]
                    if tc.function is not None:
                        entry[1] += tc.function.name or ""
                        entry[2] += tc.function.arguments or ""
        return text or None, [tuple(v) for v in calls.values()], finish, chunks[-1].usage

    _, calls, finish1, usage1 = await ask(QUESTION)
    assert len(calls) == 1
    call_id, name, arguments = calls[0]
    followup = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": call_id,
                    "type": "function",
                    "function": {"name": name, "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": call_id, "content": "sunny and 24 degrees all week"},
    ]
    text, calls2, finish2, usage2 = await ask(followup)
    return {
        "tool": name,
        "arguments": json.loads(arguments),
        "finish": (finish1, finish2),
        "answer_is_text": bool(text) and not calls2,
        "usage": (
            (usage1.prompt_tokens, usage1.completion_tokens),
            (usage2.prompt_tokens, usage2.completion_tokens),
        ),
        "cost": usage2.model_extra.get("cost", 0) > 0,
    }


@pytest.mark.parametrize("stream", [False, True], ids=["complete", "stream"])
async def test_every_wire_format_gives_the_sdk_the_same_conversation(
    start_proxy: StartProxy, stream: bool
) -> None:
    results = {}
    for param in WIRES:
        provider, model = param.values
        results[param.id] = await conversation(start_proxy, str(provider), str(model), stream)
    first = results["openai-compatible"]
    assert first["tool"] == "get_weather" and set(first["arguments"]) == {"city", "days"}
    assert first["finish"] == ("tool_calls", "stop") and first["answer_is_text"] and first["cost"]
    for wire, result in results.items():
        assert result == first, wire


@pytest.mark.parametrize(("provider", "model"), WIRES[1:])
async def test_mid_stream_errors_reach_the_sdk_as_api_error(
    start_proxy: StartProxy, provider: str, model: str
) -> None:
    import openai

    from proxy.sim.script import Fault

    proxy = await start_proxy({"providers": {p: {"enabled": p == provider} for p in PROVIDERS}})
    upstream = next(
        d.upstream_id for d in proxy.router.catalog.get(model).deployments if d.provider == provider
    )  # type: ignore[union-attr]
    proxy.sim.state.set_fault(upstream, Fault(mode="error_event", after_chunks=2))
    stream = await proxy.client().chat.completions.create(
        model=model, messages=QUESTION[1:], stream=True
    )
    pieces = []
    with pytest.raises(openai.APIError):
        async for chunk in stream:
            pieces.append(chunk)
    assert pieces, "the error came after content had started"


async def test_a_feature_one_wire_cannot_express_moves_on_to_a_deployment_that_can(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy()
    raw = await proxy.client().chat.completions.with_raw_response.create(
        model="claude-sonnet-4-5", messages=QUESTION[1:], frequency_penalty=0.3
    )
    assert raw.headers["x-router-provider"] == "openrouter"
    assert raw.parse().choices[0].message.content


async def test_a_feature_no_candidate_can_express_is_a_400_naming_it(
    start_proxy: StartProxy,
) -> None:
    import openai

    only = {p: {"enabled": p in ("anthropic", "bedrock")} for p in PROVIDERS}
    proxy = await start_proxy({"providers": only})
    with pytest.raises(openai.BadRequestError) as err:
        await proxy.client().chat.completions.create(
            model="claude-sonnet-4-5", messages=QUESTION[1:], frequency_penalty=0.3
        )
    assert err.value.code == "unsupported_feature" and err.value.param == "frequency_penalty"
    assert sum(proxy.sim.state.requests.values()) == 0
