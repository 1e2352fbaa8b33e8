"""The complexity classifier: each signal on the prompts it is for, the score and its
explanation, bounded scanning, and thresholds and weights from config."""

from __future__ import annotations

from typing import Any

import pytest

from proxy.config import ConfigError, parse_config
from proxy.decide.classifier import (
    ASK_HEAD_CHARS,
    DEFAULT_WEIGHTS,
    SIGNALS,
    Weights,
    assess,
    score_signals,
    signals_of,
)
from proxy.decide.policy import ClassifierSettings


def chat(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}


PLAIN = chat("What time is it in Paris")
CODE = "```python\ndef add(a, b):\n    return a + b\n```\nWhy does add_one() fail? Fix it."
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {}}}
TURNS = [
    {"role": "user", "content": "first"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "second"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "third"},
    {"role": "assistant", "content": "ok"},
    {"role": "user", "content": "and now?"},
]


@pytest.mark.parametrize(
    ("body", "signal", "at_least"),
    [
        pytest.param(chat("word " * 4000), "length", 0.5, id="length-long-prompt"),
        pytest.param(
            chat("Solve 3x^2 + 2x - 5 = 0 and find x >= 1"), "math", 0.3, id="math-equation"
        ),
        pytest.param(
            chat("Is (∀x)(Px ⊃ Qx) ≡ ¬(∃x)(Px ∧ ¬Qx) valid?"), "math", 0.4, id="math-logic-notation"
        ),
        pytest.param(chat(CODE), "code", 0.5, id="code-fence-and-definitions"),
        pytest.param(
            chat(
                "Explain why the design fails, compare both approaches and justify the trade-offs"
            ),
            "reasoning",
            0.5,
            id="reasoning-markers",
        ),
        pytest.param(
            chat("Prove the theorem: every subgroup of a cyclic group is cyclic"),
            "technical",
            0.5,
            id="technical-vocabulary",
        ),
        pytest.param(
            chat(
                "Statement 1 | A is true. Statement 2 | B is false.\n1. first\n2. second\n3. third"
            ),
            "multi_part",
            0.5,
            id="multi-part-enumeration",
        ),
        pytest.param(
            chat("Ann has twice as many as Bob, who has 3 more than half of the rest"),
            "relations",
            0.5,
            id="relations-between-quantities",
        ),
        pytest.param(
            chat("I told my brother he could borrow my car; later he crashed it and they sued us"),
            "situation",
            0.5,
            id="situation-described",
        ),
        pytest.param(
            chat("You must answer in exactly three bullets, each under ten words, without jargon"),
            "constraints",
            0.5,
            id="constraints",
        ),
        pytest.param(
            chat("Which of these is NOT a prime?"), "negation", 0.5, id="negation-in-capitals"
        ),
        pytest.param({**PLAIN, "tools": [TOOL, TOOL, TOOL]}, "tools", 0.5, id="tools-defined"),
        pytest.param({"model": "auto", "messages": TURNS}, "depth", 0.4, id="depth-user-turns"),
        pytest.param({**PLAIN, "max_tokens": 16000}, "output", 0.9, id="output-large-max-tokens"),
        pytest.param(
            {**PLAIN, "reasoning_effort": "high"}, "output", 1.0, id="output-reasoning-effort"
        ),
        pytest.param(
            chat("hi, thanks! translate 'cat' to French"), "simple", 0.5, id="simple-lookup"
        ),
        pytest.param(
            chat("Summarize the following article in two lines: ..."), "reading", 0.5, id="reading"
        ),
    ],
)
def test_signal_fires_on_the_prompt_it_is_for_and_not_on_a_plain_one(
    body: dict[str, Any], signal: str, at_least: float
) -> None:
    assert signals_of(body)[signal] >= at_least
    assert signals_of(PLAIN)[signal] < at_least


def test_every_signal_is_within_zero_and_one() -> None:
    for body in (PLAIN, chat(CODE * 50), chat("x" * 400_000), {"model": "a", "prompt": "def f("}):
        values = signals_of(body)
        assert set(values) == set(SIGNALS)
        assert all(0.0 <= v <= 1.0 for v in values.values())


@pytest.mark.parametrize(
    ("easy", "hard"),
    [
        pytest.param(chat("hi there"), chat(CODE), id="code-over-greeting"),
        pytest.param(
            chat("What is the capital of France?"),
            chat(
                "Prove that the algorithm's complexity is O(n log n): derive the recurrence, "
                "justify each step and compare it with the naive approach."
            ),
            id="proof-over-lookup",
        ),
        pytest.param(PLAIN, {**PLAIN, "tools": [TOOL] * 4, "max_tokens": 8000}, id="shape-counts"),
        pytest.param(PLAIN, {"model": "auto", "messages": TURNS * 3}, id="deep-conversation"),
    ],
)
def test_harder_request_scores_higher(easy: dict[str, Any], hard: dict[str, Any]) -> None:
    assert assess(hard).score > assess(easy).score


def test_the_explanation_names_the_strongest_signals_and_is_header_safe() -> None:
    a = assess(chat(CODE))
    text = a.explain()
    assert text.startswith(f"complexity={a.score:.2f} signals=")
    assert a.contributions[0][0] in text
    assert text.isascii() and "\n" not in text
    strongest = [abs(v) for _, v in a.contributions]
    assert strongest == sorted(strongest, reverse=True)


def test_score_is_the_logistic_of_the_weighted_sum() -> None:
    weights = Weights(bias=0.0, by_signal={"code": 2.0})
    a = score_signals({"code": 1.0, "math": 1.0}, weights)
    assert a.score == pytest.approx(1 / (1 + 2.718281828459045**-2.0))
    assert a.contributions[0] == ("code", 2.0)


def test_scan_is_bounded_text_in_the_middle_of_a_huge_prompt_is_not_read() -> None:
    head, tail = "Please review this. ", " What do you think?"
    filler = "plain words only " * 20_000  # ~340 KB, beyond the sampled head and tail
    middle_code = "def f():\n    return g()\n" * 500
    quiet = signals_of(chat(head + filler + filler + tail))
    noisy = signals_of(chat(head + filler + middle_code + filler + tail))
    assert quiet["code"] == noisy["code"] == 0.0
    assert len(filler) > 2 * ASK_HEAD_CHARS


def test_completions_prompt_and_content_parts_are_read() -> None:
    parts = chat("")
    parts["messages"][0]["content"] = [{"type": "text", "text": CODE}, {"type": "image_url"}]
    assert signals_of(parts)["code"] > 0.5
    assert signals_of({"model": "auto", "prompt": CODE})["code"] > 0.5


@pytest.mark.parametrize(
    ("score", "tier"),
    [
        pytest.param(0.0, "economy", id="zero-economy"),
        pytest.param(0.3499, "economy", id="just-below-economy-threshold"),
        pytest.param(0.35, "standard", id="at-economy-threshold-standard"),
        pytest.param(0.6499, "standard", id="just-below-premium"),
        pytest.param(0.65, "premium", id="at-premium-threshold"),
        pytest.param(1.0, "premium", id="one-premium"),
    ],
)
def test_thresholds_map_score_to_tier(score: float, tier: str) -> None:
    assert ClassifierSettings(economy_below=0.35, premium_from=0.65).tier_for(score) == tier


def test_thresholds_and_weights_come_from_config() -> None:
    cfg = parse_config(
        {
            "classifier": {
                "economy_below": 0.2,
                "premium_from": 0.9,
                "bias": -1.0,
                "weights": {"code": 3.0},
            }
        }
    )
    c = cfg.policy.classifier
    assert (c.economy_below, c.premium_from, c.weights.bias) == (0.2, 0.9, -1.0)
    assert c.weights.by_signal["code"] == 3.0
    assert c.weights.by_signal["math"] == DEFAULT_WEIGHTS.by_signal["math"]


@pytest.mark.parametrize(
    ("table", "path"),
    [
        pytest.param(
            {"economy_below": 0.8, "premium_from": 0.5}, "classifier.economy_below", id="inverted"
        ),
        pytest.param({"premium_from": 1.5}, "classifier.premium_from", id="out-of-range"),
        pytest.param({"weights": {"vibes": 1.0}}, "classifier.weights.vibes", id="unknown-signal"),
        pytest.param(
            {"weights": {"code": "high"}}, "classifier.weights.code", id="weight-not-number"
        ),
        pytest.param({"threshold": 0.5}, "classifier.threshold", id="unknown-key"),
    ],
)
def test_bad_classifier_config_names_the_key(table: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError, match=f"^{path}"):
        parse_config({"classifier": table})
