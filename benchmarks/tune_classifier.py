"""Tune the classifier's signal weights on the *tune* half of RouteLLM's GSM8K and MMLU data
(the held-out half is never read), by coordinate ascent on the mean APGR of both sets.

    python benchmarks/tune_classifier.py [--without-lexicon]

Prints weights: with --without-lexicon, the defaults in proxy/decide/classifier.py; without
it, the set that switches the learned lexicon on (WITH_LEXICON in routing_quality.py).

Bounds encode what we hold
true beyond these benchmarks: complexity markers never count against a prompt, simple and
reading markers never for it, and math and technical vocabulary keep a floor: in this data
the strong model scores 3 % on high-school mathematics (an answer-extraction artefact), which
would otherwise teach the router that mathematics is easy; reasoning markers (why, compare,
trade-offs) keep one too, as multiple-choice questions rarely use them. Signals the data cannot measure
(code, tools, conversation depth, requested output) keep their hand-set weights; coding asked
in prose (code_task) keeps a floor for the same reason, and so do math asked in words
(math_task: every GSM8K prompt is one, so the data cannot rank by it) and chit-chat (simple:
these sets have none); lookups never count for a prompt.

The learned ``lexicon`` signal is trained on this same tune half, so its weight here is
tuned on out-of-fold values (benchmarks/train_lexicon.py): each prompt's value comes from
a model that never saw it, as a held-out prompt's will.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing_quality import Item, apgr, body_of, curve, data_dir, held_out, load_gsm8k, load_mmlu
from train_lexicon import out_of_fold

from proxy.decide.classifier import DEFAULT_WEIGHTS, SIGNALS, signals_of
from proxy.decide.lexicon import LEXICON_FILE

BOUNDS = {
    "length": (0.0, 5.0),
    "math": (0.5, 3.0),
    "reasoning": (1.0, 3.0),
    "technical": (0.5, 3.0),
    "multi_part": (0.0, 5.0),
    "relations": (0.0, 5.0),
    "situation": (0.0, 3.0),
    "constraints": (0.0, 3.0),
    "negation": (0.0, 3.0),
    "simple": (-3.0, -0.5),
    "reading": (-3.0, 0.0),
    "code_task": (1.5, 3.0),
    "math_task": (0.5, 3.0),
    "extraction": (-2.0, 0.0),
    "lookup": (-3.0, -0.5),
    "lexicon": (0.0, 8.0),
}
STEPS = (-0.8, -0.3, -0.1, 0.1, 0.3, 0.8)
BINS = 20  # a finer sweep than the report's 10 makes a smoother objective


def shipped_l2() -> float:
    found = re.search(r"L2 ([0-9.e+-]+)", LEXICON_FILE.read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit(f"{LEXICON_FILE}: no 'L2' in its header; run train_lexicon.py first")
    return float(found.group(1))


def prepare(
    items: list[Item], lexicon: list[float]
) -> tuple[list[list[float]], list[Item], float, float]:
    rows = []
    for it, lex in zip(items, lexicon, strict=True):
        values = signals_of(body_of(it.prompt)) | {"lexicon": lex}
        rows.append([values[s] for s in SIGNALS])
    weak = sum(it.weak for it in items) / len(items)
    strong = sum(it.strong for it in items) / len(items)
    return rows, items, weak, strong


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument(
        "--without-lexicon",
        action="store_true",
        help="tune the hand-written signals alone (lexicon weight 0): the ablation",
    )
    args = parser.parse_args(argv)
    if args.without_lexicon:
        BOUNDS["lexicon"] = (0.0, 0.0)
    root = data_dir()
    halves = [
        [it for it in load(root) if not held_out(it.prompt)] for load in (load_gsm8k, load_mmlu)
    ]
    if args.without_lexicon:
        lexicon = [0.0] * sum(map(len, halves))
    else:
        # One out-of-fold pass over both sets together, as the shipped model was trained.
        lexicon = out_of_fold([it for half in halves for it in half], shipped_l2())
    cut = len(halves[0])
    sets = [prepare(halves[0], lexicon[:cut]), prepare(halves[1], lexicon[cut:])]
    weights = [DEFAULT_WEIGHTS.by_signal[s] for s in SIGNALS]
    for i, name in enumerate(SIGNALS):
        if name in BOUNDS:  # start inside the bounds
            weights[i] = min(BOUNDS[name][1], max(BOUNDS[name][0], weights[i]))

    def objective(w: list[float]) -> float:
        total = 0.0
        for rows, items, weak, strong in sets:
            scores = [sum(a * b for a, b in zip(w, r, strict=True)) for r in rows]
            no_cost = ([0.0] * len(items), [0.0] * len(items))
            total += apgr(curve(scores, items, BINS, no_cost), weak, strong)
        return total / len(sets)

    best = objective(weights)
    print(f"start: mean tune APGR {best:.4f}")
    for rnd in range(8):
        improved = False
        for i, name in enumerate(SIGNALS):
            if name not in BOUNDS:
                continue
            lo, hi = BOUNDS[name]
            for step in STEPS:
                trial = list(weights)
                trial[i] = round(min(hi, max(lo, trial[i] + step)), 3)
                if trial[i] == weights[i]:
                    continue
                value = objective(trial)
                if value > best + 1e-4:
                    best, weights, improved = value, trial, True
        print(f"round {rnd}: mean tune APGR {best:.4f}")
        if not improved:
            break
    print("weights = {")
    for name, w in zip(SIGNALS, weights, strict=True):
        print(f'    "{name}": {w:g},')
    print("}")


if __name__ == "__main__":
    main()
