"""Train the classifier's learned difficulty model, ``ngram``: a logistic regression over a
prompt's word unigrams, bigrams and structural counts (proxy/decide/ngram.py), fitted on the
*tune* half of RouteLLM's GSM8K and MMLU data together (the held-out half is never read) and
written to proxy/decide/ngram.tsv.

    python benchmarks/train_ngram.py [--l2 X] [--keep N] [--out PATH]

The label is the soft quality gap, (1 + strong correct - weak correct) / 2: 1 where only the
strong model answered right, 0 where only the weak one did, 0.5 where they agree. Unlike
"only the strong one was right" (the ``lexicon`` table's label) it also counts the prompts
the weak model gets right and the strong one misses, which is what ranking for APGR needs.

Plain Python, deterministic: stochastic gradient descent on the L2-penalised log-loss with a
seeded shuffle and a decaying step; features seen in fewer than MIN_DOCS prompts get no
weight and only the ``keep`` largest weights are kept (the cross-validation prunes the same
way, so its figures are the shipped model's). L2 is chosen by 5-fold cross-validation inside
the tune half on the mean of the two sets' out-of-fold APGR of the model alone. The bias is
then moved and every weight scaled so the median training prompt reads 0.5 (the classifier
counts the value from there) and the logits have unit spread. Last, the signal's weight in the classifier is chosen on the out-of-fold values with
every other weight held at its default, and printed.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing_quality import Item, body_of, data_dir, held_out, load_gsm8k, load_mmlu
from train_lexicon import folds, mean_apgr

from proxy.decide.classifier import (
    DEFAULT_WEIGHTS,
    Weights,
    assess,
    ngram_features_of,
    ngram_reads,
    signals_of,
)
from proxy.decide.lexicon import Lexicon
from proxy.decide.ngram import NGRAM_FILE

MIN_DOCS = 3
EPOCHS = 8
RATE = 0.1
L2_GRID = (1e-2, 3e-2, 1e-1, 3e-1)
KEEP = 8000
WEIGHT_GRID = tuple(float(w) for w in range(0, 21, 2))
FOLDS = 5


def tune_items() -> list[Item]:
    root = data_dir()
    return [it for load in (load_gsm8k, load_mmlu) for it in load(root) if not held_out(it.prompt)]


def label(it: Item) -> float:
    return (1 + int(it.strong) - int(it.weak)) / 2


def featurize(items: Sequence[Item]) -> list[list[str]]:
    return [sorted(ngram_features_of(body_of(it.prompt))) for it in items]


def fit(docs: Sequence[Sequence[str]], ys: Sequence[float], l2: float, keep: int) -> Lexicon:
    df = Counter(t for d in docs for t in d)
    vocab = {t for t, n in df.items() if n >= MIN_DOCS}
    rows = [([t for t in d if t in vocab], 1.0 / math.sqrt(len(d)) if d else 0.0) for d in docs]
    base = sum(ys) / len(ys)
    bias = math.log(base / (1 - base))
    w: dict[str, float] = {}
    order = list(range(len(rows)))
    rng = random.Random(0)
    for epoch in range(EPOCHS):
        rng.shuffle(order)
        rate = RATE / math.sqrt(1 + epoch)
        for i in order:
            kept, scale = rows[i]
            z = bias + scale * sum(w.get(t, 0.0) for t in kept)
            err = 1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, z)))) - ys[i]
            bias -= 0.1 * rate * err
            for t in kept:
                old = w.get(t, 0.0)
                w[t] = old - rate * (err * scale + l2 * old)
    ranked = sorted(w.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:keep]
    model = Lexicon(bias, dict(ranked))
    # Standardise: the median training prompt at logit 0, one s.d. of the logits at 1, so
    # the value spreads over [0, 1] and its classifier weight stays in config's range.
    logits = [model.logit(d) for d in docs]
    median, sd = statistics.median(logits), statistics.pstdev(logits) or 1.0
    scaled = {t: round(v / sd, 4) for t, v in ranked if round(v / sd, 4)}
    return Lexicon(round((bias - median) / sd, 4), scaled)


def out_of_fold(
    items: Sequence[Item], docs: Sequence[Sequence[str]], l2: float, keep: int
) -> list[float]:
    """The ngram value of each item from a model trained on the other folds only."""
    ys = [label(it) for it in items]
    fold = folds(len(items), FOLDS)
    values = [0.0] * len(items)
    for f in range(FOLDS):
        train = [i for i in range(len(items)) if fold[i] != f]
        model = fit([docs[i] for i in train], [ys[i] for i in train], l2, keep)
        for i in range(len(items)):
            if fold[i] == f:
                values[i] = model.value(docs[i])
    return values


def choose_weight(items: Sequence[Item], values: Sequence[float]) -> float:
    """The ngram weight that maximises mean tune APGR with every other weight held."""
    without = Weights(DEFAULT_WEIGHTS.bias, {**DEFAULT_WEIGHTS.by_signal, "ngram": 0.0})
    base = []
    gated = []
    for it, v in zip(items, values, strict=True):
        s = assess(body_of(it.prompt), without).score
        base.append(math.log(s / (1 - s)))
        sig = signals_of(body_of(it.prompt), grams=False)
        reads = ngram_reads(sig["code_task"], sig["simple"], sig["lookup"] == 1.0)
        gated.append(v if reads else 0.5)  # as the classifier reads it
    values = gated
    print(f"the model reads {sum(v != 0.5 for v in gated)} of {len(gated)} prompts")
    best = (-1.0, 0.0)
    for w in WEIGHT_GRID:
        scores = [z + w * (v - 0.5) for z, v in zip(base, values, strict=True)]
        value = mean_apgr(items, scores)
        cut = sum(1 for it in items if not (it.weak_out == 1 and it.strong_out == 1))
        each = [
            mean_apgr(part, scores[a:b])
            for part, a, b in ((items[:cut], 0, cut), (items[cut:], cut, len(items)))
        ]
        print(
            f"weight {w:g}: mean tune APGR (out of fold) {value:.4f} "
            f"(GSM8K {each[0]:.4f}, MMLU {each[1]:.4f})"
        )
        best = max(best, (value, w))
    return best[1]


def write(model: Lexicon, out: Path, l2: float, n_items: int, keep: int) -> None:
    lines = [
        "# The classifier's learned difficulty model (proxy/decide/ngram.py reads this file).",
        "# Written by benchmarks/train_ngram.py: logistic regression over word unigrams, bigrams",
        "# ('#' is any number) and '@' structural counts, on the tune half of RouteLLM's GSM8K",
        f"# and MMLU per-prompt outcomes (Apache-2.0, benchmarks/data/routellm), {n_items} prompts,",
        f"# L2 {l2:g}, the {keep} largest weights kept. Label: (1 + strong right - weak right) / 2.",
        "# Scaled so the median training prompt reads 0.5 and one s.d. of its logits is 1.",
        f"bias\t{model.bias:.4f}",
    ]
    lines += [f"{t}\t{v:.4f}" for t, v in sorted(model.weights.items())]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--l2", type=float, default=None, help="skip the search, use this")
    parser.add_argument("--keep", type=int, default=KEEP, help="features kept in the file")
    parser.add_argument("--out", type=Path, default=NGRAM_FILE)
    args = parser.parse_args(argv)
    items = tune_items()
    docs = featurize(items)
    print(f"tune half: {len(items)} prompts")
    best, values = args.l2, None
    if best is None:
        scored = []
        for l2 in L2_GRID:
            oof = out_of_fold(items, docs, l2, args.keep)
            value = mean_apgr(items, oof)
            print(f"l2={l2:g}: out-of-fold mean tune APGR of the model alone {value:.4f}")
            scored.append((value, l2, oof))
        _, best, values = max(scored, key=lambda s: (s[0], s[1]))
    if values is None:
        values = out_of_fold(items, docs, best, args.keep)
    weight = choose_weight(items, values)
    model = fit(docs, [label(it) for it in items], best, args.keep)
    write(model, args.out, best, len(items), args.keep)
    print(f"wrote {args.out} (l2={best:g}, {len(model.weights)} features)")
    print(f'classifier weight: "ngram": {weight:g}')


if __name__ == "__main__":
    main()
