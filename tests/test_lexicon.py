"""The learned word-weight table: its file format, the shipped weights, and how a prompt's
words become the classifier's ``lexicon`` signal."""

from __future__ import annotations

import math

import pytest

from proxy.decide.classifier import DEFAULT_WEIGHTS, Weights, assess, signals_of, words_of
from proxy.decide.lexicon import LEXICON_FILE, Lexicon, LexiconError, bundled_lexicon, parse_lexicon


def chat(text: str) -> dict[str, object]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


def test_logit_is_bias_plus_weights_over_the_root_of_the_word_count() -> None:
    lex = parse_lexicon("# comment\nbias\t-1.0\nproof\t2.0\nhello\t-1.0\n")
    assert lex.logit([]) == -1.0
    assert lex.logit(["proof", "the", "hello", "cat"]) == pytest.approx(-1.0 + 1.0 / 2)
    assert lex.value(["proof"]) == pytest.approx(1 / (1 + math.exp(-1.0)))
    assert 0.0 < Lexicon(-500.0, {}).value([]) < 1e-12  # clamped, no overflow


@pytest.mark.parametrize(
    ("text", "where"),
    [
        pytest.param("word\t1.0\n", "line 1: the first entry must be 'bias'", id="no-bias-first"),
        pytest.param("bias\t0\nword 1.0\n", "line 2: expected", id="not-tab-separated"),
        pytest.param("bias\t0\nword\tmany\n", "line 2: 'many' is not a number", id="not-number"),
        pytest.param("bias\t0\nword\tnan\n", "line 2: weight must be finite", id="nan"),
        pytest.param("# only a comment\n", "no 'bias' line", id="empty"),
    ],
)
def test_a_malformed_file_names_the_line(text: str, where: str) -> None:
    with pytest.raises(LexiconError, match=where):
        parse_lexicon(text)


def test_the_shipped_weights_load_and_are_a_small_file() -> None:
    lex = bundled_lexicon()
    assert LEXICON_FILE.stat().st_size < 200_000
    assert 100 < len(lex.weights) <= 5000
    assert all(math.isfinite(w) for w in lex.weights.values())
    assert "train_lexicon.py" in LEXICON_FILE.read_text(encoding="utf-8")


def test_the_signal_is_the_shipped_model_on_the_prompts_words() -> None:
    body = chat("Which of the following statements about the enzyme is NOT correct?")
    assert signals_of(body)["lexicon"] == pytest.approx(bundled_lexicon().value(words_of(body)))
    assert words_of(body) >= {"enzyme", "not", "which"}
    assert not any(w[0].isdigit() for w in words_of(chat("in 2024 I paid 30 dollars")))


def test_an_injected_lexicon_moves_the_score() -> None:
    body = chat("please frobnicate the widget")
    low = signals_of(body, Lexicon(-5.0, {}))["lexicon"]
    high = signals_of(body, Lexicon(-5.0, {"frobnicate": 20.0}))["lexicon"]
    assert low < 0.01 < 0.99 < high


def test_the_signal_is_read_only_when_its_weight_is_not_zero() -> None:
    body = chat("Which of the following statements about the enzyme is NOT correct?")
    assert DEFAULT_WEIGHTS.by_signal["lexicon"] == 0.0
    assert assess(body).signals["lexicon"] == 0.0
    on = Weights(DEFAULT_WEIGHTS.bias, {**DEFAULT_WEIGHTS.by_signal, "lexicon": 3.0})
    switched = assess(body, on)
    assert switched.signals["lexicon"] == pytest.approx(signals_of(body)["lexicon"])
    assert switched.signals["lexicon"] > 0.0
    assert switched.score > assess(body).score
