"""The classifier's learned difficulty model, ``ngram``: a logistic regression over a prompt's
word unigrams and bigrams and a few structural counts, trained offline by
benchmarks/train_ngram.py on public per-prompt outcome data and shipped as ``ngram.tsv``.

Its target is how much the strong model beats the weak one on the prompt, so its value says
how much a request stands to gain from premium. Pure Python at run time: one dict lookup per
distinct feature of the sampled text; the file's bias is set so the median training prompt
reads 0.5, and the classifier counts the value relative to that.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path

from .lexicon import Lexicon, parse_lexicon

NGRAM_FILE = Path(__file__).with_name("ngram.tsv")
NUMBER = "#"  # every number reads as this token in bigrams: "# percent", "each #"


# A fraction or a decimal: a digit, a slash or point, a digit.
_FRACTION_OR_DECIMAL = re.compile(r"[0-9][./][0-9]")


def features(sample: str, tokens: Sequence[str]) -> set[str]:
    """The model's features of one sampled text: its distinct words, its adjacent token pairs
    (numbers as ``#``), and ``@``-prefixed structural counts (numbers, words, sentences,
    questions, and whether it has percentages, money, fractions or decimals). ``tokens`` are
    the lower-cased words and numbers in order, as the classifier's tokenizer finds them."""
    norm = [NUMBER if t[0].isdigit() else t for t in tokens]
    found = set(norm)
    found.discard(NUMBER)
    found.update([f"{a} {b}" for a, b in itertools.pairwise(norm)])
    found.add(f"@numbers{min(norm.count(NUMBER), 12)}")
    found.add(f"@words{len(norm).bit_length()}")  # doublings: 0, 1, 2-3, 4-7, ...
    found.add(f"@sentences{min(sample.count('. ') + 1, 10)}")
    found.add(f"@questions{min(sample.count('?'), 4)}")
    if "%" in sample:
        found.add("@percent")
    if "$" in sample:
        found.add("@money")
    if _FRACTION_OR_DECIMAL.search(sample):
        found.add("@fraction_or_decimal")
    return found


def strongest(model: Lexicon, found: Iterable[str], sign: float, top: int = 2) -> list[str]:
    """The features that pushed the model's value furthest in the direction of ``sign``."""
    get = model.weights.get
    pushed = [(sign * w, f) for f in found if (w := get(f, 0.0)) and sign * w > 0]
    return [f for _, f in heapq.nlargest(top, pushed)]


@functools.cache
def bundled_ngram() -> Lexicon:
    """The shipped weights, read once on first use (not at import)."""
    return parse_lexicon(NGRAM_FILE.read_text(encoding="utf-8"))
