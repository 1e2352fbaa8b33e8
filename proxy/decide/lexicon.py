"""The learned part of the classifier: a table of word weights (a logistic regression over
which words a prompt uses), trained offline by benchmarks/train_lexicon.py on public
per-prompt outcome data and shipped beside this module as ``lexicon.tsv``.

Pure Python at run time: one dict lookup per distinct word of the sampled text.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

LEXICON_FILE = Path(__file__).with_name("lexicon.tsv")
# The knowledge-domain table: the same form, trained on which subject a prompt is about
# (its label is the subject's measured need for the strong model, not the prompt's own
# outcome), by benchmarks/train_domain.py.
DOMAIN_FILE = Path(__file__).with_name("domain.tsv")


class LexiconError(ValueError):
    """The weights file is malformed; the message names the line."""


@dataclass(frozen=True, slots=True)
class Lexicon:
    """logit = bias + sum(weight[w] for each distinct word w) / sqrt(distinct words)."""

    bias: float
    weights: Mapping[str, float]

    def logit(self, words: Iterable[str]) -> float:
        get = self.weights.get
        total = 0.0
        n = 0
        for w in words:
            n += 1
            total += get(w, 0.0)
        return self.bias + (total / math.sqrt(n) if n else 0.0)

    def value(self, words: Iterable[str]) -> float:
        """The model's probability, in [0, 1], that the strong model is needed."""
        z = max(-30.0, min(30.0, self.logit(words)))
        return 1.0 / (1.0 + math.exp(-z))


def parse_lexicon(text: str) -> Lexicon:
    """``# comments``, one ``bias<TAB>number`` line, then ``word<TAB>weight`` lines."""
    bias: float | None = None
    weights: dict[str, float] = {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split("\t")
        if len(parts) != 2:
            raise LexiconError(f"line {n}: expected 'word<TAB>weight'")
        try:
            value = float(parts[1])
        except ValueError:
            raise LexiconError(f"line {n}: {parts[1]!r} is not a number") from None
        if not math.isfinite(value):
            raise LexiconError(f"line {n}: weight must be finite")
        if bias is None:
            if parts[0] != "bias":
                raise LexiconError(f"line {n}: the first entry must be 'bias'")
            bias = value
        else:
            weights[parts[0]] = value
    if bias is None:
        raise LexiconError("no 'bias' line")
    return Lexicon(bias, weights)


@functools.cache
def bundled_lexicon() -> Lexicon:
    """The shipped weights, read once on first use (not at import)."""
    return parse_lexicon(LEXICON_FILE.read_text(encoding="utf-8"))


@functools.cache
def bundled_domain() -> Lexicon:
    """The shipped knowledge-domain table, read once on first use (not at import)."""
    return parse_lexicon(DOMAIN_FILE.read_text(encoding="utf-8"))
