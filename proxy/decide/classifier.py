"""Prompt complexity in [0, 1] from the request body alone: local, pure and bounded in cost.

Each signal is a number in [0, 1] computed from a bounded sample of the text (the newest
user turn first) and from the request's shape; the score is a logistic of their weighted
sum, so every decision can be explained by the few signals that pushed it most.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

# Text scanned per request, whatever the prompt's size: the head and tail of the newest
# user turn plus the tail of the turns before it. 80k-token prompts cost what 3k do.
ASK_HEAD_CHARS = 4096
ASK_TAIL_CHARS = 2048
CONTEXT_TAIL_CHARS = 2048
CHARS_PER_TOKEN = 4

SIGNALS = (
    "length",
    "math",
    "code",
    "reasoning",
    "technical",
    "multi_part",
    "relations",
    "situation",
    "constraints",
    "negation",
    "tools",
    "depth",
    "output",
    "simple",
    "reading",
)


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Lexicons are general vocabulary, not benchmark answers: words that mark a request as
# needing deliberate reasoning or expert knowledge, or as a quick lookup.
REASONING = _words(
    """why explain explains explaining analyze analyse analyzing analysis compare contrast
    evaluate assess justify derive deduce infer inference implication implications implies
    imply therefore hence thus consequently suppose supposing assume assuming assumption
    consider hypothetical hypothetically tradeoff tradeoffs argue argument arguments critique
    prove proof demonstrate determine optimize optimise reasoning rationale whether
    counterargument counterexample plausible likely unlikely best worst"""
)
TECHNICAL = _words(
    # mathematics and statistics
    """theorem lemma corollary axiom axioms algebra algebraic subgroup subgroups homomorphism
    isomorphism isomorphic polynomial polynomials matrix matrices eigenvalue eigenvalues
    eigenvector determinant integral integrals derivative derivatives differentiable
    differential convergent converges diverges probability probabilities stochastic variance
    covariance deviation regression hypothesis estimator unbiased modulo prime primes integer
    integers rational irrational logarithm exponential inequality inequalities quadratic
    asymptotic vector vectors scalar tensor topology manifold permutation permutations
    factorial binomial poisson gaussian bayes bayesian posterior likelihood infinite finite
    abelian cyclic field fields ring rings
    """
    # computing
    """algorithm algorithms complexity turing automaton automata compiler recursion recursive
    pointer pointers hashing mutex semaphore deadlock concurrency concurrent asynchronous
    runtime boolean bytecode kernel heuristic backpropagation overfitting underfitting neural
    perceptron convolutional classifier regularization gradient entropy bitwise binary
    """
    # logic
    """syllogism fallacy premise premises tautology entail entails entailment valid validity
    invalid predicate quantifier propositional contrapositive converse biconditional
    sufficient necessary symbolization
    """
    # law
    """plaintiff defendant statute statutes tort negligence negligent liable liability
    jurisdiction hearsay admissible inadmissible prosecution prosecutor felony misdemeanor
    appellate testimony breach injunction easement covenant mortgagee mortgagor grantor
    grantee lessee lessor trespass burglary larceny indictment constitutional
    unconstitutional estoppel contractual damages
    """
    # physical sciences
    """velocity acceleration momentum kinetic friction torque voltage capacitor resistor
    inductance magnetic wavelength photon electron electrons proton neutron quantum
    relativity thermodynamic thermodynamics enthalpy molar molarity stoichiometry oxidation
    equilibrium isotope orbital covalent ionic catalyst titration
    """
    # economics and accounting
    """depreciation amortization accrual ledger liabilities dividend dividends receivable
    receivables payable elasticity marginal monopoly oligopoly inflation deflation fiscal
    monetary macroeconomic aggregate annuity collateral"""
)
SIMPLE = _words(
    """hi hello hey thanks thank translate translation synonym synonyms antonym spell
    spelling define definition rephrase rewrite reword paraphrase capital greet joke
    summarize summarise summary tldr"""
)
CONSTRAINTS = _words(
    """must should exactly least most only each every ensure require requires required
    requirement requirements constraint constraints without unless format"""
)
# Words that say the request is about software even before any code is pasted.
CODE_WORDS = _words(
    """python javascript typescript java rust golang kotlin swift sql regex bash shell script
    compile compiler refactor debug bug bugs stacktrace traceback api endpoint json yaml
    dockerfile kubernetes repo git unittest pytest async await codebase"""
)
# Quantities tied to each other (more than, half of, the third, the rest): each relation is
# a step a weak model can drop.
RELATIONS = _words(
    """than more less fewer twice thrice half third quarter double triple remaining rest left
    first second last next previous between older younger each per every respectively
    average total difference ratio"""
)
# A described situation (people, what they did) that the answer must reason about, rather
# than a fact to recall.
PERSONS = _words("""i me my mine he she his her him they their them we our us""")
READING = _words("""passage excerpt paragraph article document text transcript quoted""")
# Upper-case only: how multiple-choice and instruction writers flag the trap.
NEGATIONS = ("NOT", "EXCEPT", "LEAST", "NEVER", "FALSE")

# Patterns run on the lower-cased sample and start with a literal or a narrow class where
# they can: Python's re tries every alternative at every position otherwise (a 6 kB sample
# took ~5 ms with case-insensitive alternations, ~0.5 ms without).
# Words and numbers in one pass (a number starts with a digit).
_TOKEN = re.compile(r"[a-z]+(?:'[a-z]+)?|[0-9]+(?:[.,][0-9]+)*%?")
# Arithmetic and formal notation, logic connectives included: counted with str.count, which
# is far cheaper than a character-class scan. '-' and '/' are left out: prose is full of them.
_MATH_MARKS = (
    "=", "+", "*", "^", "<", ">", "\\frac", "\\sum", "\\int", "\\sqrt",
    "\u00b1", "\u00d7", "\u00f7", "\u221a", "\u2211", "\u222b", "\u03c0", "\u2264",
    "\u2265", "\u221e", "\u2200", "\u2203", "\u2227", "\u2228", "\u00ac", "\u2283",
    "\u2261", "\u22a2", "\u22a8", "\u2194",
)  # fmt: skip
_SNAKE = re.compile(r"[a-z0-9]_[a-z0-9]")
_CODE_MARKS = ("```", "=>", "->", "::", "()")
_CODE_LINE_STARTS = _words(
    "def class import from return public private fn func function const let var #include "
    "select package"
)
_ENUMERATED = re.compile(
    r"(?:statement|scenario|premise|claim|case|part|step) ?(?:[0-9]+|[ivx]+\b|[a-d]\b)"
)
_LIST_ITEM = re.compile(r"(?:[0-9]+|[ivx]+)[.)] |[-*\u2022] ")
_READING = re.compile(
    r"the (?:following |above |preceding )?"
    r"(?:passage|excerpt|text|article|document|information|paragraph|transcript|email)\b"
)
_PHRASES = (
    "step by step",
    "step-by-step",
    "which of the following",
    "true or false",
    "if and only if",
    "prove that",
    "show that",
    "what would happen",
    "how would",
    "trade-off",
    "tradeoff",
    "edge case",
    "most likely",
    "least likely",
    "best explains",
    "best describes",
)


def _line_marks(sample: str) -> tuple[int, int]:
    """(code-shaped lines, list items) in one pass over the lines."""
    code = items = 0
    for line in sample.split("\n"):
        stripped = line.strip()
        if not stripped:
            continue
        if stripped[-1] in ";{}" or stripped.split(None, 1)[0].lower() in _CODE_LINE_STARTS:
            code += 1
        if _LIST_ITEM.match(stripped):
            items += 1
    return code, items


@dataclass(frozen=True, slots=True)
class Weights:
    """Logistic weights: score = sigmoid(bias + sum(weight[s] * signal[s]))."""

    bias: float = -2.0
    by_signal: Mapping[str, float] = field(
        default_factory=lambda: {
            # Tuned on the tune half of RouteLLM's GSM8K and MMLU data within sign bounds
            # (benchmarks/tune_classifier.py); code, tools, depth and output are hand-set
            # because that data never exercises them.
            "length": 1.8,
            "math": 0.5,
            "code": 1.2,
            "reasoning": 1.0,
            "technical": 0.5,
            "multi_part": 3.0,
            "relations": 1.0,
            "situation": 0.1,
            "constraints": 0.0,
            "negation": 1.1,
            "tools": 1.0,
            "depth": 0.8,
            "output": 1.0,
            "simple": -0.8,
            "reading": -0.6,
        }
    )


DEFAULT_WEIGHTS = Weights()


@dataclass(frozen=True, slots=True)
class Assessment:
    score: float  # complexity in [0, 1]
    signals: Mapping[str, float]  # each in [0, 1]
    contributions: tuple[tuple[str, float], ...]  # (signal, weight * value), largest |x| first

    def explain(self, top: int = 3) -> str:
        """'complexity=0.62 signals=technical+0.9,length+0.5,simple-0.4' (header-safe)."""
        shown = [f"{name}{value:+.2f}" for name, value in self.contributions[:top] if value]
        return f"complexity={self.score:.2f} signals={','.join(shown) or 'none'}"


def _saturate(count: float, half: float) -> float:
    """0 at 0, 0.5 at ``half``, approaching 1: counts matter less as they grow."""
    return count / (count + half) if count > 0 else 0.0


def _text_of(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def _clip(text: str, head: int, tail: int) -> str:
    if len(text) <= head + tail:
        return text
    return text[:head] + "\n" + text[-tail:] if tail else text[:head]


@dataclass(slots=True)
class _Shape:
    chars: int = 0
    user_turns: int = 0
    ask: str = ""
    context: list[str] = field(default_factory=list)


def _shape(body: Mapping[str, Any]) -> _Shape:
    shape = _Shape()
    messages = body.get("messages")
    if not isinstance(messages, list):
        prompt = body.get("prompt")
        text = prompt if isinstance(prompt, str) else _text_of(prompt)
        suffix = body.get("suffix")
        shape.chars = len(text) + (len(suffix) if isinstance(suffix, str) else 0)
        shape.user_turns, shape.ask = 1, _clip(text, ASK_HEAD_CHARS, ASK_TAIL_CHARS)
        return shape
    last_user = -1
    for i, msg in enumerate(messages):
        if isinstance(msg, dict) and msg.get("role") == "user":
            last_user, shape.user_turns = i, shape.user_turns + 1
    budget = CONTEXT_TAIL_CHARS
    for i in range(len(messages) - 1, -1, -1):
        msg = messages[i]
        if not isinstance(msg, dict):
            continue
        text = _text_of(msg.get("content"))
        shape.chars += len(text)
        if i == last_user:
            shape.ask = _clip(text, ASK_HEAD_CHARS, ASK_TAIL_CHARS)
        elif budget > 0 and text:
            shape.context.append(text[-budget:])
            budget -= min(len(text), budget)
    return shape


def _count(words: Counter[str], lexicon: frozenset[str]) -> int:
    return sum(n for w, n in words.items() if w in lexicon)


def signals_of(body: Mapping[str, Any]) -> dict[str, float]:
    """Every signal in [0, 1] for one request body (chat or legacy completions)."""
    shape = _shape(body)
    sample = "\n".join([shape.ask, *shape.context])
    low = sample.lower()
    found = _TOKEN.findall(low)
    words = Counter(t for t in found if not t[0].isdigit())
    n_words = max(1, sum(words.values()))
    tokens = shape.chars / CHARS_PER_TOKEN
    # 0 below ~16 tokens, 1 at ~16k: each doubling of the prompt adds the same amount.
    length = min(1.0, max(0.0, math.log2(max(tokens, 1.0) / 16.0) / 10.0))

    past = sum(n for w, n in words.items() if w.endswith("ed") and len(w) > 3)
    numbers = len(found) - sum(words.values())
    math_marks = sum(sample.count(m) for m in _MATH_MARKS)
    phrases = sum(low.count(p) for p in _PHRASES)
    code_lines, list_items = _line_marks(sample)
    code_marks = code_lines + len(_SNAKE.findall(low)) + sum(sample.count(m) for m in _CODE_MARKS)
    upper = sum(sample.count(f" {w} ") for w in NEGATIONS)
    tools = body.get("tools")
    n_tools = len(tools) if isinstance(tools, list) else 0
    if body.get("functions"):
        n_tools += 1
    max_out = body.get("max_completion_tokens") or body.get("max_tokens") or 0
    max_out = max_out if isinstance(max_out, int) and not isinstance(max_out, bool) else 0
    fmt = body.get("response_format")
    structured = isinstance(fmt, dict) and fmt.get("type") == "json_schema"
    effort = {"high": 1.0, "medium": 0.5}.get(str(body.get("reasoning_effort")), 0.0)
    # 0 up to 256 output tokens, 1 at 16k: a long answer is a bigger job.
    output = min(1.0, max(0.0, math.log2(max(max_out, 1) / 256.0) / 6.0))
    output = max(output, 0.5 if structured else 0.0, effort)
    return {
        "length": length,
        "math": _saturate(math_marks + 0.25 * numbers, 6.0),
        "code": _saturate(code_marks + 0.5 * _count(words, CODE_WORDS), 4.0),
        "reasoning": _saturate(_count(words, REASONING) + 2 * phrases, 3.0),
        "technical": _saturate(_count(words, TECHNICAL), 2.0),
        "multi_part": _saturate(
            len(_ENUMERATED.findall(low)) + list_items + sample.count("?") - 1, 3.0
        ),
        "relations": _saturate(_count(words, RELATIONS), 4.0),
        "situation": _saturate(_count(words, PERSONS) + past, 8.0),
        "constraints": _saturate(_count(words, CONSTRAINTS), 4.0),
        "negation": _saturate(upper, 1.0),
        "tools": _saturate(n_tools, 2.0),
        "depth": _saturate(shape.user_turns - 1, 4.0),
        "output": output,
        "simple": _saturate(_count(words, SIMPLE), 1.0) * (1.0 if n_words < 400 else 0.5),
        "reading": _saturate(_count(words, READING) + 2 * len(_READING.findall(low)), 2.0),
    }


def score_signals(signals: Mapping[str, float], weights: Weights = DEFAULT_WEIGHTS) -> Assessment:
    contributions = [(name, weights.by_signal.get(name, 0.0) * v) for name, v in signals.items()]
    z = weights.bias + sum(c for _, c in contributions)
    score = 1.0 / (1.0 + math.exp(-z))
    contributions.sort(key=lambda c: -abs(c[1]))
    return Assessment(score, dict(signals), tuple(contributions))


def assess(body: Mapping[str, Any], weights: Weights = DEFAULT_WEIGHTS) -> Assessment:
    return score_signals(signals_of(body), weights)


def unknown_signals(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - set(SIGNALS))
