"""SSERelay: framing across arbitrary splits, unchanged bytes, usage cost, and refusals."""

from __future__ import annotations

import orjson
import pytest

from proxy.providers.base import UpstreamError
from proxy.serve.relay import DONE, SSERelay


def chunk(content: str | None = None, finish: str | None = None, role: bool = False) -> bytes:
    delta: dict[str, str] = {"role": "assistant", "content": ""} if role else {}
    if content is not None:
        delta["content"] = content
    body = {
        "id": "c",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "m",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        "usage": None,
    }
    return b"data: " + orjson.dumps(body) + b"\n\n"


USAGE = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}\n\n'
STREAM = (
    chunk(role=True)
    + chunk("Hel")
    + chunk("lo")
    + chunk(finish="stop")
    + USAGE
    + b"data: [DONE]\n\n"
)


def cost(p: int, c: int) -> float:
    return (p * 2.0 + c * 8.0) / 1e6  # $2 / $8 per 1M


def run(relay: SSERelay, data: bytes, size: int) -> bytes:
    out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
    relay.finish()
    return out


@pytest.mark.parametrize("size", [1, 7, 64, 10_000])
def test_events_pass_through_unchanged_whatever_the_split(size: int) -> None:
    relay = SSERelay(include_usage=True, cost=cost)
    out = run(relay, STREAM, size)

    def without_usage(data: bytes) -> list[bytes]:
        return [e for e in data.split(b"\n\n") if b'"usage":{' not in e]

    assert without_usage(out) == without_usage(STREAM)
    assert relay.done and relay.content_seen


def test_usage_event_gains_cost_when_the_client_asked() -> None:
    relay = SSERelay(include_usage=True, cost=cost)
    out = run(relay, STREAM, 10_000)
    usage_event = next(e for e in out.split(b"\n\n") if b'"usage":{' in e)
    assert orjson.loads(usage_event[6:])["usage"]["cost"] == pytest.approx(0.006)


def test_usage_event_is_withheld_when_the_client_did_not_ask() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    out = run(relay, STREAM, 10_000)
    assert b'"usage":{' not in out and out.endswith(b"data: [DONE]\n\n")
    assert relay.usage is not None and relay.usage["cost"] == pytest.approx(0.006)


def test_role_only_chunk_is_not_content() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    relay.feed(chunk(role=True))
    assert not relay.content_seen
    relay.feed(chunk("x"))
    assert relay.content_seen


def test_crlf_framing_and_comments_are_accepted() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    out = run(relay, b": keep-alive\r\n\r\n" + STREAM.replace(b"\n", b"\r\n"), 13)
    assert b"Hel" in out and relay.done


@pytest.mark.parametrize(
    ("bad", "kind"),
    [
        pytest.param(b"this is not sse\n\n", "protocol", id="malformed-line"),
        pytest.param(b'data: {"id": "x", "choices": [\n\n', "protocol", id="invalid-json"),
        pytest.param(b"data: [1, 2]\n\n", "protocol", id="json-not-object"),
        pytest.param(
            b'data: {"error": {"message": "overloaded"}}\n\n', "server", id="in-band-error"
        ),
        pytest.param(b'event: error\ndata: {"x": 1}\n\n', "server", id="error-event-type"),
        pytest.param(b'data: {"choices": 3}\n\n', "protocol", id="choices-a-number"),
        pytest.param(b'data: {"choices": {"0": {}}}\n\n', "protocol", id="choices-an-object"),
    ],
)
def test_broken_events_raise_instead_of_being_forwarded(bad: bytes, kind: str) -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    relay.feed(chunk("ok"))
    with pytest.raises(UpstreamError) as err:
        relay.feed(bad)
    assert err.value.kind == kind


def test_stream_ending_without_done_is_not_complete() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    relay.feed(chunk("partial"))
    with pytest.raises(UpstreamError):
        relay.finish()


def test_stream_ending_inside_an_event_is_not_complete() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    relay.feed(chunk("x") + b"data: [DONE]\n\n" + b'data: {"trailing')
    with pytest.raises(UpstreamError):
        relay.finish()


def test_an_endless_event_is_refused_rather_than_buffered() -> None:
    relay = SSERelay(include_usage=False, cost=cost)
    with pytest.raises(UpstreamError):
        for _ in range(300):
            relay.feed(b"data: " + b"x" * 4096)


@pytest.mark.parametrize(
    "event",
    [
        pytest.param(b'data: {"id":"c","model":"up/m:1","choices":[]}\n\n', id="compact"),
        pytest.param(b'data: {"id": "c", "model": "up/m:1", "choices": []}\n\n', id="spaced"),
        pytest.param(b'data: {"id":"c","model" :"up/m:1","choices":[]}\n\n', id="odd-spacing"),
    ],
)
def test_the_upstream_model_name_becomes_the_catalog_id(event: bytes) -> None:
    relay = SSERelay(False, lambda p, c: 0.0, model="m")
    out = relay.feed(event)
    assert out.endswith(b"\n\n")
    assert orjson.loads(out[6:-2]) == {"id": "c", "model": "m", "choices": []}


def test_a_model_name_quoted_in_content_is_left_alone() -> None:
    relay = SSERelay(False, lambda p, c: 0.0, model="catalog-m")
    text = 'say "model":"m" please'
    body = {"model": "m", "choices": [{"index": 0, "delta": {"content": text}}]}
    out = relay.feed(b"data: " + orjson.dumps(body) + b"\n\n")
    parsed = orjson.loads(out[6:-2])
    assert parsed["model"] == "catalog-m"
    assert parsed["choices"][0]["delta"]["content"] == text
    # Without a rename (the same id on both sides) the bytes pass through untouched.
    same = SSERelay(False, lambda p, c: 0.0)
    event = b"data: " + orjson.dumps(body) + b"\n\n"
    assert same.feed(event) == event


def delta_chunk(delta: object, model: str = "m", **extra: object) -> bytes:
    choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": None, **extra}
    body = {"id": "c", "model": model, "choices": [choice], "usage": None}
    return b"data: " + orjson.dumps(body) + b"\n\n"


@pytest.mark.parametrize(
    ("event", "tokens"),
    [
        pytest.param(delta_chunk({"content": "x" * 12}), 1, id="one-token"),
        pytest.param(delta_chunk({"content": "x" * 13}), 4, id="four-per-token"),
        pytest.param(delta_chunk({"content": "é" * 1024}), 256, id="longest-in-the-table"),
        pytest.param(delta_chunk({"content": "x" * 5000}), 1250, id="past-the-table"),
        pytest.param(delta_chunk({"content": ""}), 0, id="empty"),
        pytest.param(delta_chunk({"content": None}), 0, id="null-content"),
        pytest.param(delta_chunk({"content": ["x" * 40]}), 0, id="content-not-a-string"),
        pytest.param(delta_chunk({"content": "x" * 40, "refusal": "y" * 40}), 20, id="two-keys"),
        pytest.param(delta_chunk({"content": "x" * 40}, text="y" * 40), 20, id="with-text"),
    ],
)
def test_a_chunk_counts_the_same_alone_in_a_read_or_among_others(event: bytes, tokens: int) -> None:
    # Alone in a read (a paced upstream) or inside one read with others: the same bytes
    # out, the same tokens counted for a stream cut short.
    for data, size in ((event, len(event)), (chunk("a") + event + chunk("b"), 10_000)):
        relay = SSERelay(include_usage=False, cost=cost)
        out = b"".join(relay.feed(data[i : i + size]) for i in range(0, len(data), size))
        assert out == data
        assert relay.charge()[1] == tokens + (0 if size == len(event) else 2)


@pytest.mark.parametrize(
    "rename",
    [
        pytest.param(b'"model":"up/m:1"', id="compact"),
        pytest.param(b'"model" : "up/m:1"', id="odd-spacing"),
    ],
)
def test_a_content_chunk_read_alone_is_renamed_and_counted_once(rename: bytes) -> None:
    event = delta_chunk({"content": "hello"}, model="up/m:1").replace(b'"model":"up/m:1"', rename)
    relay = SSERelay(False, lambda p, c: 0.0, model="m")
    out = relay.feed(event)
    assert out.startswith(b"data: ") and out.endswith(b"\n\n") and out.count(b"\n") == 2
    assert orjson.loads(out[6:]) == orjson.loads(event[6:]) | {"model": "m"}
    assert relay.charge()[1] == 1 and relay.content_seen


def test_a_usage_whose_counts_are_not_numbers_is_charged_as_an_estimate() -> None:
    relay = SSERelay(include_usage=True, cost=cost, prompt_estimate=30)
    usage = {"prompt_tokens": "many", "completion_tokens": 5}
    body = {"id": "c", "model": "m", "choices": [], "usage": usage}
    relay.feed(chunk("x" * 40) + b"data: " + orjson.dumps(body) + b"\n\n" + b"data: [DONE]\n\n")
    relay.finish()
    assert relay.charge() == (30, 10, pytest.approx(cost(30, 10)), True)


def test_a_dated_name_the_upstream_answers_under_becomes_the_catalog_id() -> None:
    # OpenAI answers a request for "gpt-4o" with "model": "gpt-4o-2024-08-06"; the answer
    # without streaming names the catalog id, and so does every chunk.
    relay = SSERelay(False, lambda p, c: 0.0, model="gpt-4o")
    dated = "gpt-4o-2024-08-06"
    events = [
        delta_chunk({"role": "assistant", "content": ""}, model=dated),
        delta_chunk({"content": "hello"}, model=dated),
        delta_chunk({}, model=dated, finish_reason="stop"),
    ]
    for event in events:
        out = relay.feed(event)
        assert orjson.loads(out[6:]) == orjson.loads(event[6:]) | {"model": "gpt-4o"}
    # A relay with no catalog id (the probes') leaves every name alone.
    plain = SSERelay(False, lambda p, c: 0.0)
    assert plain.feed(events[1]) == events[1]


LITELLM_USAGE = {
    "id": "c",
    "model": "m",
    "choices": [{"index": 0, "delta": {}}],
    "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
}


def test_usage_on_a_chunk_with_an_empty_choice_is_dropped_unless_asked_for() -> None:
    # LiteLLM's usage chunk has a choice with an empty delta, not "choices": []: without
    # stream_options.include_usage the client gets neither the usage nor the empty chunk,
    # and the usage still counts for the charge.
    event = b"data: " + orjson.dumps(LITELLM_USAGE) + b"\n\n"
    relay = SSERelay(include_usage=False, cost=cost)
    assert relay.feed(chunk("hi") + event + b"data: [DONE]\n\n") == chunk("hi") + DONE + b"\n\n"
    assert relay.charge() == (7, 3, pytest.approx(cost(7, 3)), False)
    asked = SSERelay(include_usage=True, cost=cost)
    out = orjson.loads(asked.feed(event)[6:])
    assert out["usage"]["prompt_tokens"] == 7 and out["usage"]["cost"] == pytest.approx(cost(7, 3))


def test_usage_on_a_chunk_that_also_ends_the_answer_keeps_the_chunk_without_it() -> None:
    body = {**LITELLM_USAGE, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    relay = SSERelay(include_usage=False, cost=cost)
    out = orjson.loads(relay.feed(b"data: " + orjson.dumps(body) + b"\n\n")[6:])
    assert "usage" not in out and out["choices"][0]["finish_reason"] == "stop"
