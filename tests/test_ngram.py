"""The learned difficulty model ``ngram``: its features, the shipped weights, where the
classifier lets it read (not coding requests or chit-chat) and how the explanation names it."""

from __future__ import annotations

import pytest

from proxy.config import parse_config
from proxy.decide.classifier import (
    CENTRES,
    DEFAULT_WEIGHTS,
    NGRAM_WEIGHT,
    Weights,
    assess,
    ngram_features_of,
    score_signals,
    signals_of,
)
from proxy.decide.lexicon import Lexicon
from proxy.decide.ngram import NGRAM_FILE, bundled_ngram, features, strongest


def chat(text: str) -> dict[str, object]:
    return {"model": "auto", "messages": [{"role": "user", "content": text}]}


WORD_PROBLEM = (
    "Tom buys 3 boxes of 12 pencils at $4.50 each and gives half of the pencils away. "
    "How many pencils does he keep, and what did 25% of the boxes cost?"
)


def test_features_are_words_pairs_with_numbers_as_hash_and_structural_counts() -> None:
    sample = "Ann has 3 cats. How many cats?"
    found = features(sample, ["ann", "has", "3", "cats", "how", "many", "cats"])
    assert {"ann", "cats", "how many", "has #", "# cats", "many cats"} <= found
    assert "3" not in found and "#" not in found
    assert {"@numbers1", "@sentences2", "@questions1", "@words3"} <= found
    assert not {"@percent", "@money", "@fraction_or_decimal"} & found
    rich = ngram_features_of(chat(WORD_PROBLEM))
    assert {"@percent", "@money", "@fraction_or_decimal", "@numbers4"} <= rich


def test_the_shipped_model_parses_and_reads_a_value_between_zero_and_one() -> None:
    model = bundled_ngram()
    assert NGRAM_FILE.is_file() and len(model.weights) > 1000
    assert any(" " in f for f in model.weights)  # bigrams were kept
    assert any(f.startswith("@") for f in model.weights)  # structural counts too
    value = signals_of(chat(WORD_PROBLEM))["ngram"]
    assert 0.0 < value < 1.0 and value != CENTRES["ngram"]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("Write a Python function that reverses a linked list.", id="coding"),
        pytest.param("hey, thanks a lot!", id="chit-chat"),
        pytest.param("Who discovered penicillin?", id="lookup"),
    ],
)
def test_outside_what_it_learned_from_the_model_reads_neutral(text: str) -> None:
    on = Weights(DEFAULT_WEIGHTS.bias, {**DEFAULT_WEIGHTS.by_signal, "ngram": NGRAM_WEIGHT})
    assert signals_of(chat(text))["ngram"] == CENTRES["ngram"]
    assert assess(chat(text), on).grams == set()


def test_a_typical_reading_neither_adds_nor_subtracts() -> None:
    neutral = {"ngram": CENTRES["ngram"], "length": 0.5}
    on = Weights(0.0, {"ngram": 8.0, "length": 1.0})
    off = Weights(0.0, {"ngram": 0.0, "length": 1.0})
    assert score_signals(neutral, on).score == pytest.approx(score_signals(neutral, off).score)
    assert score_signals({"ngram": 0.75}, on).contributions[0] == ("ngram", pytest.approx(2.0))


def test_the_explanation_names_the_features_behind_the_learned_reading() -> None:
    on = Weights(DEFAULT_WEIGHTS.bias, {**DEFAULT_WEIGHTS.by_signal, "ngram": NGRAM_WEIGHT})
    a = assess(chat(WORD_PROBLEM), on)
    assert a.grams
    forced = Weights(DEFAULT_WEIGHTS.bias, {**DEFAULT_WEIGHTS.by_signal, "ngram": 20.0})
    text = assess(chat(WORD_PROBLEM), forced).explain()
    part = next(p for p in text.split("signals=")[1].split(",") if p.startswith("ngram"))
    assert "(" in part and part.endswith(")")
    assert text.isascii() and "\n" not in text and " " not in text.split("signals=")[1]
    up = a.signals["ngram"] > CENTRES["ngram"]
    named = strongest(bundled_ngram(), a.grams, 1.0 if up else -1.0)
    weights = bundled_ngram().weights
    assert named and all((weights[f] > 0) == up for f in named)


def test_strongest_picks_the_largest_weights_in_the_asked_direction() -> None:
    model = Lexicon(0.0, {"a": 2.0, "b": -3.0, "c": 0.5, "d": 1.0})
    assert strongest(model, ["a", "b", "c", "d", "zz"], 1.0) == ["a", "d"]
    assert strongest(model, ["a", "b", "c"], -1.0) == ["b"]


def test_the_model_is_off_by_default_and_config_switches_it_on() -> None:
    off = assess(chat(WORD_PROBLEM))
    assert DEFAULT_WEIGHTS.by_signal["ngram"] == 0.0
    assert off.signals["ngram"] == CENTRES["ngram"] and off.grams == set()
    assert all(name != "ngram" or value == 0 for name, value in off.contributions)
    cfg = parse_config({"classifier": {"weights": {"ngram": NGRAM_WEIGHT}}})
    on = assess(chat(WORD_PROBLEM), cfg.policy.classifier.weights)
    assert on.signals["ngram"] != CENTRES["ngram"] and on.grams
    assert on.score != off.score


def test_the_trainer_learns_the_direction_and_centres_the_median() -> None:
    import importlib.util
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "train_ngram.py"
    spec = importlib.util.spec_from_file_location("train_ngram", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["train_ngram"] = module
    spec.loader.exec_module(module)
    docs = [["hard", "both"]] * 6 + [["easy", "both"]] * 6 + [["hard", "easy"]] * 3
    ys = [1.0] * 6 + [0.0] * 6 + [0.5] * 3
    model = module.fit(docs, ys, 1e-3, 10)
    assert model.weights["hard"] > 0 > model.weights["easy"]
    logits = sorted(model.logit(d) for d in docs)
    assert abs(logits[len(logits) // 2]) < 1e-3  # the median training prompt reads 0.5
    assert module.fit(docs, ys, 1e-3, 10) == model  # deterministic
