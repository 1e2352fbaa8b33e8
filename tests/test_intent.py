"""Request body -> Intent: shorthands, defaults, needs, and every bad field named."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.decide.fields import EXTENSION_FIELDS, openai_fields
from proxy.decide.intent import _parse_intent, forwarded_body, parse_intent
from proxy.decide.policy import DEFAULT_TASKS
from proxy.errors import RouterError

MSG = [{"role": "user", "content": "hello"}]


@pytest.mark.parametrize(
    ("body", "tier", "prefer", "pinned"),
    [
        pytest.param(
            {"model": "auto"}, "standard", "balanced", (), id="bare-auto-means-standard-balanced"
        ),
        pytest.param(
            {"model": "auto", "prefer": "fast"}, None, "fast", (), id="prefer-alone-spans-all-tiers"
        ),
        pytest.param(
            {"model": "auto", "tier": "premium"},
            "premium",
            "balanced",
            (),
            id="tier-alone-is-balanced",
        ),
        pytest.param({"model": "auto:fast"}, None, "fast", (), id="auto-prefer-shorthand"),
        pytest.param(
            {"model": "auto:economy"}, "economy", "balanced", (), id="auto-tier-shorthand"
        ),
        pytest.param(
            {"model": "auto:premium:coding"},
            "premium",
            "coding",
            (),
            id="auto-tier-prefer-shorthand",
        ),
        pytest.param(
            {"model": "auto:cheap", "tier": "economy"},
            "economy",
            "cheap",
            (),
            id="shorthand-plus-field",
        ),
        pytest.param(
            {"model": "gpt-4o", "prefer": "fast", "tier": "economy"},
            None,
            None,
            ("gpt-4o",),
            id="pinned-ignores-intent",
        ),
        pytest.param(
            {"model": "auto", "models": ["a", "b"]},
            None,
            None,
            ("a", "b"),
            id="models-list-is-fallback-order",
        ),
    ],
)
def test_model_field_and_extensions_become_an_intent(
    body: dict[str, Any], tier: str | None, prefer: str | None, pinned: tuple[str, ...]
) -> None:
    intent = parse_intent({**body, "messages": MSG}, "chat")
    assert (intent.tier, intent.prefer, intent.pinned) == (tier, prefer, pinned)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param([1, 2], None, id="body-not-object"),
        pytest.param({"messages": MSG}, "model", id="model-missing"),
        pytest.param({"model": 7, "messages": MSG}, "model", id="model-not-string"),
        pytest.param({"model": "auto"}, "messages", id="messages-missing"),
        pytest.param({"model": "auto", "messages": []}, "messages", id="messages-empty"),
        pytest.param({"model": "auto", "messages": "hi"}, "messages", id="messages-not-array"),
        pytest.param({"model": "auto", "messages": ["hi"]}, "messages[0]", id="message-not-object"),
        pytest.param(
            {"model": "auto", "messages": [{"content": "x"}]}, "messages[0].role", id="role-missing"
        ),
        pytest.param(
            {"model": "auto", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
            id="content-wrong-type",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "prefer": "fastest"}, "prefer", id="unknown-prefer"
        ),
        pytest.param({"model": "auto", "messages": MSG, "tier": "gold"}, "tier", id="unknown-tier"),
        pytest.param({"model": "auto:gold", "messages": MSG}, "model", id="unknown-shorthand"),
        pytest.param(
            {"model": "auto:fast:economy", "messages": MSG}, "model", id="shorthand-wrong-order"
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "min_coding_score": 101},
            "min_coding_score",
            id="coding-score-over-100",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "min_coding_score": -1},
            "min_coding_score",
            id="coding-score-negative",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "min_coding_score": "80"},
            "min_coding_score",
            id="coding-score-string",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "stream": "yes"}, "stream", id="stream-not-boolean"
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "stream": 1}, "stream", id="stream-integer"
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "max_tokens": -5},
            "max_tokens",
            id="max-tokens-negative",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "max_tokens": True},
            "max_tokens",
            id="max-tokens-boolean",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "models": ["a", 3]},
            "models",
            id="models-not-strings",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "stream_options": {"include_usage": "y"}},
            "stream_options.include_usage",
            id="include-usage-not-boolean",
        ),
        pytest.param(
            {"model": "auto", "messages": MSG, "tools": {}}, "tools", id="tools-not-array"
        ),
    ],
)
def test_bad_input_is_a_400_naming_the_field(body: Any, param: str | None) -> None:
    with pytest.raises(RouterError) as err:
        parse_intent(body, "chat")
    assert err.value.status == 400
    assert err.value.param == param
    assert err.value.payload()["error"]["message"]


@pytest.mark.parametrize(
    ("extra", "needs"),
    [
        pytest.param({}, {"chat"}, id="plain-chat"),
        pytest.param(
            {"tools": [{"type": "function", "function": {"name": "f"}}]},
            {"chat", "tools"},
            id="tools",
        ),
        pytest.param(
            {"response_format": {"type": "json_object"}}, {"chat", "json"}, id="json-mode"
        ),
        pytest.param(
            {"response_format": {"type": "text"}}, {"chat"}, id="text-format-needs-nothing"
        ),
        pytest.param({"logprobs": True}, {"chat", "logprobs"}, id="logprobs"),
        pytest.param(
            {
                "messages": [
                    {
                        "role": "user",
                        "content": [{"type": "image_url", "image_url": {"url": "data:,"}}],
                    }
                ]
            },
            {"chat", "vision"},
            id="image-part",
        ),
    ],
)
def test_needs_reflect_what_the_request_uses(extra: dict[str, Any], needs: set[str]) -> None:
    intent = parse_intent({"model": "auto", "messages": MSG, **extra}, "chat")
    assert intent.needs == needs


def test_completions_with_suffix_need_fim_and_estimate_both_sides() -> None:
    intent = parse_intent(
        {"model": "auto", "prompt": "a" * 400, "suffix": "b" * 400}, "completions"
    )
    assert intent.needs == {"fim"}
    assert intent.prompt_tokens == 200


def test_prompt_estimate_counts_characters_and_reserved_output() -> None:
    intent = parse_intent(
        {"model": "auto", "messages": [{"role": "user", "content": "x" * 4000}], "max_tokens": 50},
        "chat",
    )
    assert intent.prompt_tokens == 1004
    assert intent.max_output_tokens == 50


def test_extension_fields_are_removed_before_forwarding() -> None:
    body = {
        "model": "auto",
        "messages": MSG,
        "prefer": "fast",
        "tier": "economy",
        "min_coding_score": 5,
        "models": ["x"],
        "temperature": 0,
    }
    assert forwarded_body(body) == {"model": "auto", "messages": MSG, "temperature": 0}


def _either(body: dict[str, Any], parse: Any) -> Any:
    try:
        return parse(body, "chat", DEFAULT_TASKS)
    except RouterError as err:
        return err.status, err.body()


@pytest.mark.parametrize(
    "body",
    [
        pytest.param({"model": "auto", "messages": MSG}, id="bare-auto"),
        pytest.param({"model": "auto:premium:fast", "messages": MSG * 2}, id="auto-route"),
        pytest.param({"model": "auto:auto", "messages": MSG, "stream": True}, id="auto-tier"),
        pytest.param({"model": "gpt-4o", "messages": MSG, "stream": None}, id="pinned"),
        pytest.param({"model": "autobahn", "messages": MSG}, id="auto-prefix-not-a-route"),
        pytest.param({"model": "auto:nope", "messages": [1]}, id="bad-message-before-bad-route"),
        pytest.param({"model": "auto", "messages": MSG, "stream": "yes"}, id="bad-stream"),
        pytest.param({"model": "", "messages": MSG}, id="empty-model"),
        pytest.param(
            {"model": "auto", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            id="vision-part",
        ),
        pytest.param(
            {"model": "auto", "messages": [{"role": "tool", "content": "x"}]}, id="tool-no-id"
        ),
        pytest.param(
            {"model": "auto", "messages": [{"role": ["user"], "content": "x"}]}, id="list-role"
        ),
        pytest.param(
            {"model": "auto", "messages": [{"role": "assistant", "tool_calls": "x"}]},
            id="bad-tool-calls",
        ),
    ],
)
def test_the_plain_chat_path_and_the_general_parser_agree(body: dict[str, Any]) -> None:
    assert _either(body, parse_intent) == _either(body, _parse_intent)


@pytest.mark.parametrize(
    "value", [5, -1, True, "x", "auto", [{"type": "function"}], {"type": "json_object"}]
)
def test_the_plain_chat_path_steps_aside_for_every_field_the_parser_reads(value: Any) -> None:
    """Any field the general parser reads (besides model, messages and stream) must be in
    ROUTING_INPUTS, or the plain path would ignore it: try every field a body may carry."""
    names = openai_fields()["chat"] | openai_fields()["completions"] | EXTENSION_FIELDS
    for name in sorted(names - {"model", "messages", "stream"}):
        body = {"model": "auto", "messages": MSG, name: value}
        assert _either(body, parse_intent) == _either(body, _parse_intent), name
