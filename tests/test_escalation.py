"""Escalation triggers on answers: cut off, filtered, empty, refused, or standing."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.decide.policy import EscalationSettings
from proxy.serve.escalation import next_tier, trigger

SETTINGS = EscalationSettings()


def answer(content: Any = "Paris.", finish: str = "stop", **message: Any) -> dict[str, Any]:
    msg = {"role": "assistant", "content": content, "refusal": None, **message}
    return {"choices": [{"index": 0, "message": msg, "finish_reason": finish}]}


CALL = [{"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]


@pytest.mark.parametrize(
    ("data", "why"),
    [
        pytest.param(answer(), None, id="whole-answer-stands"),
        pytest.param(answer(finish="length"), "length", id="cut-off-by-length"),
        pytest.param(answer(finish="content_filter"), "content_filter", id="content-filter"),
        pytest.param(answer(content=""), "empty", id="empty-string"),
        pytest.param(answer(content=None), "empty", id="null-content"),
        pytest.param(answer(content="  \n "), "empty", id="whitespace-only"),
        pytest.param({"choices": []}, "empty", id="no-choices"),
        pytest.param({"error": "x"}, "empty", id="no-choices-key"),
        pytest.param(
            answer(content=None, refusal="I can't help with that."), "refusal", id="refusal-field"
        ),
        pytest.param(
            answer(content="I'm sorry, but I can't help with that."), "refusal", id="refusal-phrase"
        ),
        pytest.param(
            answer(content="I\u2019m sorry, but I can\u2019t do that."),
            "refusal",
            id="curly-apostrophes",
        ),
        pytest.param(
            answer(content="Here is the plan. " * 30 + "I can't help with taxes though."),
            None,
            id="phrase-past-the-opening-is-not-a-refusal",
        ),
        pytest.param(
            answer(content=None, finish="tool_calls", tool_calls=CALL),
            None,
            id="tool-call-is-an-answer",
        ),
        pytest.param(
            answer(content=[{"type": "text", "text": "I cannot help with that"}]),
            "refusal",
            id="content-parts",
        ),
        pytest.param(
            {"choices": [{"index": 0, "text": "", "finish_reason": "stop"}]},
            "empty",
            id="legacy-completion-empty",
        ),
        pytest.param(
            {"choices": [{"index": 0, "text": "x = 1", "finish_reason": "length"}]},
            "length",
            id="legacy-completion-cut",
        ),
    ],
)
def test_trigger_table(data: Any, why: str | None) -> None:
    assert trigger(data, SETTINGS) == why


def test_refusal_phrases_come_from_config() -> None:
    cfg = parse_config({"escalation": {"refusal_phrases": ["Computer says no"]}})
    settings = cfg.policy.escalation
    assert trigger(answer(content="computer says no."), settings) == "refusal"
    assert trigger(answer(content="I'm sorry, but I can't."), settings) is None


@pytest.mark.parametrize(
    ("table", "path"),
    [
        pytest.param({"refusal_phrases": "no"}, "escalation.refusal_phrases", id="not-array"),
        pytest.param({"refusal_phrases": [""]}, "escalation.refusal_phrases", id="empty-phrase"),
        pytest.param({"refusal_window_chars": 0}, "escalation.refusal_window_chars", id="window"),
        pytest.param({"retries": 2}, "escalation.retries", id="unknown-key"),
    ],
)
def test_bad_escalation_config_names_the_key(table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=f"^{path}"):
        parse_config({"escalation": table})


@pytest.mark.parametrize(
    ("tier", "up"),
    [("economy", "standard"), ("standard", "premium"), ("premium", None)],
)
def test_next_tier(tier: Any, up: str | None) -> None:
    assert next_tier(tier) == up
