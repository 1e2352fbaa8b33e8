"""Train the classifier's learned signal, ``lexicon``: a logistic regression over the
distinct words of a prompt, fitted on the *tune* half of RouteLLM's GSM8K and MMLU data
(the held-out half is never read) and written to proxy/decide/lexicon.tsv.

    python benchmarks/train_lexicon.py [--l2 X] [--keep N] [--out PATH]

The label is "the strong model answered correctly and the weak one did not": the requests
worth sending to premium. Features are the distinct words of the sampled text (as
proxy.decide.classifier.words_of reads them), each 1/sqrt(distinct words), so a long prompt does
not outvote a short one by size alone. Plain Python (no numpy): full-batch gradient descent
with Adagrad steps on the L2-penalised log-loss. The regularisation is chosen by 5-fold
cross-validation inside the tune half; ``out_of_fold`` gives the weight tuner
(benchmarks/tune_classifier.py) values the model never trained on.
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing_quality import (
    Item,
    apgr,
    body_of,
    curve,
    data_dir,
    held_out,
    load_gsm8k,
    load_mmlu,
)

from proxy.decide.classifier import words_of
from proxy.decide.lexicon import LEXICON_FILE, Lexicon

MIN_DOCS = 3  # a word must appear in this many training prompts to get a weight
EPOCHS = 60
RATE = 0.5
L2_GRID = (3e-5, 1e-4, 3e-4)
FOLDS = 5


def tune_items() -> list[Item]:
    root = data_dir()
    return [it for load in (load_gsm8k, load_mmlu) for it in load(root) if not held_out(it.prompt)]


def label(it: Item) -> int:
    return int(it.strong and not it.weak)


def featurize(items: Sequence[Item]) -> list[list[str]]:
    return [sorted(words_of(body_of(it.prompt))) for it in items]


def fit(docs: Sequence[Sequence[str]], ys: Sequence[float], l2: float) -> Lexicon:
    df = Counter(w for d in docs for w in d)
    vocab = {w for w, n in df.items() if n >= MIN_DOCS and len(w) > 1}
    rows = []
    for d in docs:
        kept = [w for w in d if w in vocab]
        rows.append((kept, 1.0 / math.sqrt(len(d)) if d else 0.0))
    w: dict[str, float] = dict.fromkeys(vocab, 0.0)
    g2: dict[str, float] = dict.fromkeys(vocab, 1e-8)
    base = sum(ys) / len(ys)
    bias, gb2 = math.log(base / (1 - base)), 1e-8
    n = len(rows)
    for _ in range(EPOCHS):
        grad: dict[str, float] = dict.fromkeys(vocab, 0.0)
        gbias = 0.0
        for (kept, scale), y in zip(rows, ys, strict=True):
            z = bias + scale * sum(w[t] for t in kept)
            p = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z))))
            err = p - y
            gbias += err
            for t in kept:
                grad[t] += err * scale
        gbias /= n
        gb2 += gbias * gbias
        bias -= RATE * gbias / math.sqrt(gb2)
        for t in vocab:
            g = grad[t] / n + l2 * w[t]
            g2[t] += g * g
            w[t] -= RATE * g / math.sqrt(g2[t])
    return Lexicon(bias, w)


def folds(n: int, k: int) -> list[int]:
    order = list(range(n))
    random.Random(7).shuffle(order)
    fold = [0] * n
    for rank, i in enumerate(order):
        fold[i] = rank % k
    return fold


def out_of_fold(items: Sequence[Item], l2: float, k: int = FOLDS) -> list[float]:
    """The lexicon signal of each item from a model trained on the other folds only."""
    docs, ys = featurize(items), [label(it) for it in items]
    fold = folds(len(items), k)
    values = [0.0] * len(items)
    for f in range(k):
        train = [i for i in range(len(items)) if fold[i] != f]
        model = fit([docs[i] for i in train], [ys[i] for i in train], l2)
        for i in range(len(items)):
            if fold[i] == f:
                values[i] = model.value(docs[i])
    return values


def mean_apgr(items: Sequence[Item], scores: Sequence[float]) -> float:
    """Mean APGR over the datasets in ``items`` (told apart by their output-token field)."""
    groups: dict[bool, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(it.weak_out == 1 and it.strong_out == 1, []).append(i)
    total = 0.0
    for idx in groups.values():
        sub = [items[i] for i in idx]
        weak = sum(it.weak for it in sub) / len(sub)
        strong = sum(it.strong for it in sub) / len(sub)
        zero = ([0.0] * len(sub), [0.0] * len(sub))
        total += apgr(curve([scores[i] for i in idx], sub, 20, zero), weak, strong)
    return total / len(groups)


def write(model: Lexicon, keep: int, out: Path, l2: float, n_items: int) -> None:
    ranked = sorted(model.weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:keep]
    lines = [
        "# The classifier's learned word weights (proxy/decide/lexicon.py reads this file).",
        "# Written by benchmarks/train_lexicon.py: logistic regression on the tune half of",
        "# RouteLLM's GSM8K and MMLU per-prompt outcomes (Apache-2.0, benchmarks/data/routellm),",
        f"# {n_items} prompts, L2 {l2:g}, the {len(ranked)} largest weights kept.",
        "# Label: the strong model answered correctly and the weak one did not.",
        f"bias\t{model.bias:.4f}",
    ]
    lines += [f"{word}\t{weight:.4f}" for word, weight in sorted(ranked) if round(weight, 4)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--l2", type=float, default=None, help="skip the search, use this")
    parser.add_argument("--keep", type=int, default=3000, help="words kept in the file")
    parser.add_argument("--out", type=Path, default=LEXICON_FILE)
    args = parser.parse_args(argv)
    items = tune_items()
    print(f"tune half: {len(items)} prompts, {sum(map(label, items))} where only premium won")
    best = args.l2
    if best is None:
        scored = []
        for l2 in L2_GRID:
            value = mean_apgr(items, out_of_fold(items, l2))
            print(f"l2={l2:g}: out-of-fold mean tune APGR of the lexicon alone {value:.4f}")
            scored.append((value, l2))
        best = max(scored)[1]
    model = fit(featurize(items), [label(it) for it in items], best)
    write(model, args.keep, args.out, best, len(items))
    print(f"wrote {args.out} (l2={best:g})")


if __name__ == "__main__":
    main()
