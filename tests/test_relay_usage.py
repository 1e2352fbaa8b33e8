"""SSERelay and usage: the cost of a known usage at known prices, and the usage event passed
or withheld as the client asked."""

from __future__ import annotations

from dataclasses import replace

import orjson
import pytest

from proxy.catalog import load_bundled
from proxy.serve.relay import SSERelay

MODEL = replace(
    next(m for m in load_bundled() if m.id == "gpt-5-nano"), input_price=2.0, output_price=8.0
)
CONTENT = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}],"usage":null}\n\n'
USAGE = b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500,"total_tokens":1500}}\n\n'
DONE = b"data: [DONE]\n\n"


def test_model_cost_of_a_known_usage() -> None:
    # 1000 in at $2/M + 500 out at $8/M = $0.002 + $0.004.
    assert MODEL.cost_usd(1000, 500) == pytest.approx(0.006, abs=1e-15)


@pytest.mark.parametrize("include_usage", [True, False])
def test_usage_event_gets_cost_and_is_passed_only_when_asked(include_usage: bool) -> None:
    relay = SSERelay(include_usage, MODEL.cost_usd)
    # Split mid-event, as TCP may deliver it.
    stream = CONTENT + USAGE + DONE
    out = relay.feed(stream[:150]) + relay.feed(stream[150:])
    relay.finish()
    assert relay.usage is not None and relay.usage["cost"] == pytest.approx(0.006, abs=1e-15)
    assert out.startswith(CONTENT) and out.endswith(DONE)
    if include_usage:
        usage_event = out[len(CONTENT) : -len(DONE)]
        obj = orjson.loads(usage_event.removeprefix(b"data: "))
        assert obj["usage"] == {
            "prompt_tokens": 1000,
            "completion_tokens": 500,
            "total_tokens": 1500,
            "cost": 0.006,
        }
        assert obj["choices"] == []
    else:
        assert out == CONTENT + DONE


def test_content_events_pass_byte_for_byte() -> None:
    relay = SSERelay(False, MODEL.cost_usd)
    assert relay.feed(CONTENT) == CONTENT
