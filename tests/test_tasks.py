"""The task table: defaults, precedence against explicit fields, config overrides, bad input."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.decide.intent import parse_intent
from proxy.decide.policy import DEFAULT_TASKS
from proxy.errors import RouterError

MSG = [{"role": "user", "content": "hello"}]
TASKS = [
    "classification",
    "translation",
    "summarization",
    "code_generation",
    "code_review",
    "analysis",
    "creative_writing",
    "deep_reasoning",
    "simple_qa",
    "chat",
]


def test_every_documented_task_has_a_default_route() -> None:
    assert sorted(DEFAULT_TASKS) == sorted(TASKS)


@pytest.mark.parametrize(
    ("body", "tier", "prefer", "auto_tier"),
    [
        pytest.param({"task": "code_review"}, "premium", "coding", False, id="task-alone"),
        pytest.param({"task": "simple_qa"}, "economy", "fast", False, id="simple-qa"),
        pytest.param(
            {"task": "code_review", "prefer": "cheap"},
            "premium",
            "cheap",
            False,
            id="prefer-field-wins",
        ),
        pytest.param(
            {"task": "code_review", "tier": "economy"},
            "economy",
            "coding",
            False,
            id="tier-field-wins",
        ),
        pytest.param(
            {"model": "auto:standard", "task": "deep_reasoning"},
            "standard",
            "quality",
            False,
            id="shorthand-tier-wins",
        ),
        pytest.param(
            {"task": "deep_reasoning", "tier": "auto"},
            None,
            "quality",
            True,
            id="auto-tier-keeps-task-prefer",
        ),
        pytest.param({"tier": "auto"}, None, "balanced", True, id="auto-tier-alone"),
        pytest.param({"model": "auto:auto"}, None, "balanced", True, id="auto-auto-shorthand"),
        pytest.param(
            {"model": "auto:auto:fast"}, None, "fast", True, id="auto-auto-prefer-shorthand"
        ),
        pytest.param(
            {"model": "gpt-4o", "task": "code_review"}, None, None, False, id="pinned-ignores-task"
        ),
    ],
)
def test_task_and_auto_tier_resolve_to_an_intent(
    body: dict[str, Any], tier: str | None, prefer: str | None, auto_tier: bool
) -> None:
    intent = parse_intent({"model": "auto", **body, "messages": MSG}, "chat")
    assert (intent.tier, intent.prefer, intent.tier_auto) == (tier, prefer, auto_tier)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        pytest.param({"task": "astrology"}, "task", id="unknown-task"),
        pytest.param({"task": 3}, "task", id="task-not-string"),
        pytest.param({"tier": "smart"}, "tier", id="unknown-tier"),
        pytest.param({"model": "auto:auto:auto"}, "model", id="auto-twice-in-shorthand"),
        pytest.param({"model": "auto:fast:auto"}, "model", id="auto-tier-in-prefer-slot"),
    ],
)
def test_bad_task_or_tier_names_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(RouterError) as err:
        parse_intent({"model": "auto", **body, "messages": MSG}, "chat")
    assert err.value.status == 400 and err.value.param == param


def test_unknown_task_message_lists_the_known_ones() -> None:
    with pytest.raises(RouterError) as err:
        parse_intent({"model": "auto", "task": "astrology", "messages": MSG}, "chat")
    assert "'astrology'" in err.value.message and "code_review" in err.value.message


def test_config_overrides_a_task_and_adds_one() -> None:
    cfg = parse_config(
        {"tasks": {"chat": {"tier": "economy"}, "sql": {"tier": "premium", "prefer": "coding"}}}
    )
    tasks = cfg.policy.tasks
    assert (tasks["chat"].tier, tasks["chat"].prefer) == ("economy", DEFAULT_TASKS["chat"].prefer)
    intent = parse_intent({"model": "auto", "task": "sql", "messages": MSG}, "chat", tasks)
    assert (intent.tier, intent.prefer) == ("premium", "coding")


@pytest.mark.parametrize(
    ("tasks", "path"),
    [
        pytest.param({"sql": {"tier": "premium"}}, "tasks.sql", id="new-task-needs-both"),
        pytest.param({"chat": {"tier": "gold"}}, "tasks.chat.tier", id="bad-tier"),
        pytest.param({"chat": {"prefer": "vibes"}}, "tasks.chat.prefer", id="bad-prefer"),
        pytest.param({"chat": {"model": "x"}}, "tasks.chat.model", id="unknown-key"),
    ],
)
def test_bad_task_config_names_the_key(tasks: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=f"^{path}"):
        parse_config({"tasks": tasks})
