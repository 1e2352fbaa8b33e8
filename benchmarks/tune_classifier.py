"""Tune the classifier's signal weights on the *tune* half of RouteLLM's GSM8K and MMLU data
(the held-out half is never read), by coordinate ascent on the mean APGR of both sets.

    python benchmarks/tune_classifier.py [--without-lexicon] [--without-domain]
                                         [--only SIGNAL ...]

Prints weights: with --without-lexicon --without-domain, the defaults in
proxy/decide/classifier.py; with --without-domain alone, the set that switches the learned
lexicon on (WITH_LEXICON in routing_quality.py); with --without-lexicon --only domain, the
knowledge-domain table's weight with every other weight held (WITH_DOMAIN there).

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
import math
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from routing_quality import Item, apgr, body_of, curve, data_dir, held_out, load_gsm8k, load_mmlu
from train_domain import out_of_fold as domain_out_of_fold
from train_domain import tune_mmlu
from train_lexicon import out_of_fold

from proxy.decide.classifier import (
    DEFAULT_WEIGHTS,
    SIGNALS,
    domain_signal,
    signals_of,
    words_of,
)
from proxy.decide.lexicon import DOMAIN_FILE, LEXICON_FILE, bundled_domain

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
    "domain": (0.0, 16.0),
}
STEPS = (-0.8, -0.3, -0.1, 0.1, 0.3, 0.8)
BINS = 20  # a finer sweep than the report's 10 makes a smoother objective


def shipped_l2(path: Path = LEXICON_FILE) -> float:
    found = re.search(r"L2 ([0-9.e+-]+)", path.read_text(encoding="utf-8"))
    if found is None:
        raise SystemExit(f"{path}: no 'L2' in its header; run its training script first")
    return float(found.group(1))


def domain_values(gsm8k: list[Item], mmlu: list[Item]) -> tuple[list[float], list[float]]:
    """The domain signal as a held-out prompt would see it: on MMLU's tune half, out of fold
    (each prompt's value from a model trained without it, on the shipped model's scale);
    on GSM8K, which the domain table never trained on, the shipped table itself."""
    items, subjects = tune_mmlu()
    if [it.prompt for it in items] != [it.prompt for it in mmlu]:
        raise SystemExit("the MMLU tune half and train_domain.py's disagree on the prompts")
    logits = domain_out_of_fold(items, subjects, shipped_l2(DOMAIN_FILE))
    # The shipped table's rescaling (mean 0, s.d. 1 over the tune prompts) applied to the
    # out-of-fold logits, then the same logistic as Lexicon.value.
    mean = sum(logits) / len(logits)
    sd = (sum((x - mean) ** 2 for x in logits) / len(logits)) ** 0.5 or 1.0
    oof = [
        domain_signal(1.0 / (1.0 + math.exp(-max(-30.0, min(30.0, (x - mean) / sd)))))
        for x in logits
    ]
    shipped = bundled_domain()
    return [domain_signal(shipped.value(words_of(body_of(it.prompt)))) for it in gsm8k], oof


def prepare(
    items: list[Item], lexicon: list[float], domain: list[float]
) -> tuple[list[list[float]], list[Item], float, float]:
    rows = []
    for it, lex, dom in zip(items, lexicon, domain, strict=True):
        values = signals_of(body_of(it.prompt)) | {"lexicon": lex, "domain": dom}
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
    parser.add_argument(
        "--without-domain",
        action="store_true",
        help="leave the knowledge-domain signal out (weight 0): the first pass's defaults",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        default=None,
        metavar="SIGNAL",
        help="tune these weights and keep the others at the shipped defaults",
    )
    args = parser.parse_args(argv)
    if args.only:
        for name in list(BOUNDS):
            if name not in args.only:
                del BOUNDS[name]
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
    if args.without_domain:
        BOUNDS["domain"] = (0.0, 0.0)
        domain = ([0.0] * len(halves[0]), [0.0] * len(halves[1]))
    else:
        domain = domain_values(halves[0], halves[1])
    sets = [
        prepare(halves[0], lexicon[:cut], domain[0]),
        prepare(halves[1], lexicon[cut:], domain[1]),
    ]
    weights = [DEFAULT_WEIGHTS.by_signal[s] for s in SIGNALS]
    if not args.without_domain and weights[SIGNALS.index("domain")] == 0.0:
        weights[SIGNALS.index("domain")] = 8.0  # a start the coarse steps can leave
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
    print(f"bias: {DEFAULT_WEIGHTS.bias:g} - 0.5 * domain weight (neutral prompts stay put)")
    print("weights = {")
    for name, w in zip(SIGNALS, weights, strict=True):
        print(f'    "{name}": {w:g},')
    print("}")


if __name__ == "__main__":
    main()
