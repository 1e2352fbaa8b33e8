"""The learned word-weight tables: their file format, the shipped weights, and how a prompt's
words become the classifier's ``lexicon`` and ``domain`` signals."""

from __future__ import annotations

import math

import pytest

from proxy.decide.classifier import (
    DEFAULT_WEIGHTS,
    Weights,
    assess,
    domain_signal,
    signals_of,
    words_of,
)
from proxy.decide.lexicon import (
    DOMAIN_FILE,
    LEXICON_FILE,
    Lexicon,
    LexiconError,
    bundled_domain,
    bundled_lexicon,
    parse_lexicon,
)


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


def test_the_shipped_domain_table_loads_and_is_a_small_file() -> None:
    table = bundled_domain()
    assert DOMAIN_FILE.stat().st_size < 200_000
    assert 100 < len(table.weights) <= 5000
    assert all(math.isfinite(w) for w in table.weights.values())
    assert "train_domain.py" in DOMAIN_FILE.read_text(encoding="utf-8")


def test_the_domain_signal_when_switched_on_is_named_when_it_drives() -> None:
    body = chat(
        "In which of these two scenarios does the main character do something clearly "
        "morally wrong, according to ordinary moral standards?"
    )
    assert DEFAULT_WEIGHTS.by_signal["domain"] == 0.0  # off by default: RESULTS-routing.md
    probability = bundled_domain().value(words_of(body))
    assert signals_of(body)["domain"] == pytest.approx(domain_signal(probability))
    assert assess(body).signals["domain"] == 0.5  # not read while its weight is 0
    on = Weights(DEFAULT_WEIGHTS.bias - 4.0, {**DEFAULT_WEIGHTS.by_signal, "domain": 8.0})
    moral = assess(body, on)
    capital = assess(chat("What is the capital of France?"), on)
    assert moral.signals["domain"] > 0.9 > 0.5 > capital.signals["domain"]
    assert moral.score > assess(body).score > capital.score
    assert "domain+" in moral.explain()


def test_an_injected_domain_table_moves_the_signal() -> None:
    body = chat("please frobnicate the widget")
    low = signals_of(body, domain=Lexicon(-8.0, {}))["domain"]
    high = signals_of(body, domain=Lexicon(-8.0, {"frobnicate": 30.0}))["domain"]
    assert low < 0.01 < 0.99 < high


def test_the_domain_signal_is_neutral_inside_its_dead_zone() -> None:
    assert domain_signal(0.5) == domain_signal(0.6) == domain_signal(0.4) == 0.5
    assert domain_signal(1.0) == pytest.approx(1.0)
    assert domain_signal(0.0) == pytest.approx(0.0)
    assert domain_signal(0.3) < domain_signal(0.8) < domain_signal(0.9)
