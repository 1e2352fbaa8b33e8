"""Train the classifier's knowledge-domain signal, ``domain``: which subject a prompt is
about, scored by how much that subject needs the strong model. Fitted on the *tune* half of
RouteLLM's MMLU data (the held-out half is never read) and written to proxy/decide/domain.tsv.

    python benchmarks/train_domain.py [--l2 X] [--keep N] [--out PATH]

A per-prompt outcome is a noisy label (the learned ``lexicon`` overfits it). A subject's
outcome rate is not: over a subject's ~120 tune prompts, how much more often the strong
model is right than the weak one (smoothed towards the mean of all subjects). Each prompt's
soft label is its subject's rate, (1 + gap) / 2, and a logistic regression over the
prompt's distinct words (each 1/sqrt(distinct words), the lexicon's trainer) learns which
words mark the subjects where the weak model falls behind: a subject detector folded into
one weight per word, so a request about law, moral philosophy or physics reads as a
harder domain whether or not it came from MMLU. The weights are rescaled so the tune
prompts' logits have mean 0 and standard deviation 1: the signal spreads over [0, 1].

The regularisation is chosen by 5-fold cross-validation inside the tune half (subject
rates recomputed from the training folds only); ``out_of_fold`` gives the weight tuner
(benchmarks/tune_classifier.py) values the model never trained on.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing_quality import STRONG, WEAK, Item, data_dir, held_out
from train_lexicon import featurize, fit, folds, mean_apgr

from proxy.decide.lexicon import DOMAIN_FILE, Lexicon

L2_GRID = (3e-5, 1e-4, 3e-4)
FOLDS = 5
SMOOTHING = 20  # prompts' worth of the all-subject mean mixed into each subject's rate
# A subject where the strong model scores below chance (25 % on four choices) measures
# answer extraction, not knowledge: in RouteLLM's data GPT-4 scores 3 % on high-school
# mathematics. Training on it would teach the table that mathematics is easy, and route
# real math requests to economy; such subjects are left out of the training.
BELOW_CHANCE = 0.25


def tune_mmlu() -> tuple[list[Item], list[str]]:
    """The tune half of MMLU (contaminated prompts excluded) and each prompt's subject."""
    root = data_dir()
    with (root / "mmlu_contaminated_prompts.jsonl").open(encoding="utf-8") as f:
        skip = {json.loads(line)["eval_prompt"] for line in f if line.strip()}
    items, subjects = [], []
    for path in sorted((root / "mmlu").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with path.open(encoding="utf-8", newline="") as f:
            for row in csv.DictReader(f):
                if row["prompt"] in skip or held_out(row["prompt"]):
                    continue
                items.append(Item(row["prompt"], row[WEAK] == "True", row[STRONG] == "True", 1, 1))
                subjects.append(subject)
    return items, subjects


def trainable(items: Sequence[Item], subjects: Sequence[str]) -> list[bool]:
    """False for the prompts of subjects where the strong model is below chance."""
    by: dict[str, list[bool]] = {}
    for it, s in zip(items, subjects, strict=True):
        by.setdefault(s, []).append(it.strong)
    broken = {s for s, v in by.items() if sum(v) / len(v) < BELOW_CHANCE}
    return [s not in broken for s in subjects]


def soft_labels(
    items: Sequence[Item], subjects: Sequence[str], train: Sequence[int]
) -> list[float]:
    """(1 + the smoothed strong-minus-weak accuracy of the prompt's subject) / 2, with the
    subjects' rates measured on ``train`` only; a subject absent there gets the mean."""
    overall = sum(items[i].strong - items[i].weak for i in train) / len(train)
    by: dict[str, list[int]] = {}
    for i in train:
        by.setdefault(subjects[i], []).append(items[i].strong - items[i].weak)
    rate = {s: (sum(v) + SMOOTHING * overall) / (len(v) + SMOOTHING) for s, v in by.items()}
    return [(1.0 + rate.get(s, overall)) / 2.0 for s in subjects]


def out_of_fold(
    items: Sequence[Item], subjects: Sequence[str], l2: float, k: int = FOLDS
) -> list[float]:
    """The domain logit of each item from a model trained on the other folds only."""
    docs = featurize(items)
    fold = folds(len(items), k)
    usable = trainable(items, subjects)
    values = [0.0] * len(items)
    for f in range(k):
        train = [i for i in range(len(items)) if fold[i] != f and usable[i]]
        ys = soft_labels(items, subjects, train)
        model = fit([docs[i] for i in train], [ys[i] for i in train], l2)
        for i in range(len(items)):
            if fold[i] == f:
                values[i] = model.logit(docs[i])
    return values


def standardise(model: Lexicon, docs: Sequence[Sequence[str]]) -> Lexicon:
    """The same ranking, rescaled so the logits over ``docs`` have mean 0 and s.d. 1."""
    logits = [model.logit(d) for d in docs]
    mean, sd = statistics.fmean(logits), statistics.pstdev(logits) or 1.0
    return Lexicon((model.bias - mean) / sd, {w: v / sd for w, v in model.weights.items()})


def write(model: Lexicon, keep: int, out: Path, l2: float, n_items: int) -> None:
    ranked = sorted(model.weights.items(), key=lambda kv: (-abs(kv[1]), kv[0]))[:keep]
    lines = [
        "# The classifier's knowledge-domain word weights (proxy/decide/lexicon.py reads it).",
        "# Written by benchmarks/train_domain.py: logistic regression on the tune half of",
        "# RouteLLM's MMLU per-prompt data (Apache-2.0, benchmarks/data/routellm),",
        f"# {n_items} prompts, L2 {l2:g}, the {len(ranked)} largest weights kept.",
        "# Soft label: the prompt's subject's strong-minus-weak accuracy, (1 + gap) / 2;",
        "# subjects where the strong model scored below chance (an extraction artefact) left out;",
        "# rescaled so the tune prompts' logits have mean 0 and standard deviation 1.",
        f"bias\t{model.bias:.4f}",
    ]
    lines += [f"{word}\t{weight:.4f}" for word, weight in sorted(ranked) if round(weight, 4)]
    out.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--l2", type=float, default=None, help="skip the search, use this")
    parser.add_argument("--keep", type=int, default=4000, help="words kept in the file")
    parser.add_argument("--out", type=Path, default=DOMAIN_FILE)
    args = parser.parse_args(argv)
    items, subjects = tune_mmlu()
    usable = trainable(items, subjects)
    left_out = sorted({s for s, ok in zip(subjects, usable, strict=True) if not ok})
    print(f"tune half of MMLU: {len(items)} prompts, {len(set(subjects))} subjects")
    print(f"left out of training (strong model below chance): {', '.join(left_out) or 'none'}")
    best = args.l2
    if best is None:
        scored = []
        for l2 in L2_GRID:
            value = mean_apgr(items, out_of_fold(items, subjects, l2))
            print(f"l2={l2:g}: out-of-fold tune APGR of the domain signal alone {value:.4f}")
            scored.append((value, l2))
        best = max(scored)[1]
    docs = featurize(items)
    train = [i for i, ok in enumerate(trainable(items, subjects)) if ok]
    ys = soft_labels(items, subjects, train)
    model = fit([docs[i] for i in train], [ys[i] for i in train], best)
    kept = dict(sorted(model.weights.items(), key=lambda kv: -abs(kv[1]))[: args.keep])
    model = standardise(Lexicon(model.bias, kept), docs)
    write(model, args.keep, args.out, best, len(items))
    print(f"wrote {args.out} (l2={best:g})")


if __name__ == "__main__":
    main()
