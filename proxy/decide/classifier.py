# Over 400 lines: its word lists are data, kept beside the signals that read them.
"""Prompt complexity in [0, 1] from the request body alone: local, pure and bounded in cost.

Each signal is a number in [0, 1] computed from a bounded sample of the text (the newest
user turn first) and from the request's shape; the score is a logistic of their weighted
sum, so every decision can be explained by the few signals that pushed it most.

Two kinds of signal read the words rather than the syntax: task-type lexicons written by
hand (a program asked for in prose, a math word problem, extraction and formatting, a
lookup or chit-chat) and the learned tables: ``lexicon`` and ``domain`` (word weights,
proxy/decide/lexicon.py) and ``ngram`` (a difficulty model over word pairs and structural
counts, proxy/decide/ngram.py), each off unless its weight is set.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .lexicon import Lexicon, bundled_domain, bundled_lexicon
from .ngram import bundled_ngram, strongest
from .ngram import features as ngram_features

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
    "code_task",
    "math_task",
    "extraction",
    "lookup",
    "lexicon",
    "domain",
    "ngram",
)
# Signals whose neutral value is not 0: they count as weight * (value - centre), so a prompt
# the learned model reads as typical neither gains nor loses, and the explanation shows the
# push, not the constant.
CENTRES: Mapping[str, float] = {"ngram": 0.5}


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
    """hi hello hey hiya howdy thanks thank thx cheers bye goodbye goodnight morning evening
    lol haha cool awesome nice weather joke jokes fun funny favourite favorite recommend
    movie movies song songs weekend birthday translate translation synonym synonyms antonym
    spell spelling define definition meaning rephrase reword paraphrase capital greet
    summarize summarise summary tldr"""
)
CONSTRAINTS = _words(
    """must should exactly least most only each every ensure require requires required
    requirement requirements constraint constraints without unless format"""
)
# Words that say the request is about software even before any code is pasted: languages
# and tools count double, the things a program is made of once; a build or fix verb beside
# them says the request asks for work on software rather than about it.
CODE_LANGS = _words(
    """python javascript typescript java rust golang kotlin swift sql regex regexp bash shell
    powershell html css php ruby perl scala haskell elixir clojure lua dart julia matlab
    fortran cobol assembly solidity verilog react vue angular svelte django flask fastapi
    rails spring nodejs node npm pandas numpy pytorch tensorflow sklearn jquery graphql
    docker dockerfile kubernetes terraform ansible nginx postgres postgresql mysql sqlite
    mongodb redis kafka linux unix git github vba excel cpp csharp"""
)
CODE_NOUNS = _words(
    """code coding program programs programming script scripts function functions method
    methods class classes snippet api apis endpoint endpoints query queries database
    databases schema server servers backend frontend website webpage app apps component
    components module modules library libraries package packages framework repo repository
    commit branch container deployment cli terminal compiler interpreter runtime bug bugs
    error errors exception exceptions stacktrace traceback segfault crash crashes variable
    variables loop loops recursion recursive array arrays string strings dict dictionary
    hashmap hashtable linked stack queue heap sort sorting algorithm algorithms unittest
    pytest test tests testing leetcode parser parsing async await codebase compile
    compiles compiled refactor refactoring debug debugging implementation interface
    struct enum pointer pointers thread threads callback callbacks regex widget gui button
    form login authentication cache caching microservice webhook cron sdk tool tools
    command http https url"""
)
CODE_VERBS = _words(
    """write implement implementing create build code make fix debug refactor optimize
    optimise review rewrite port convert deploy compile generate design develop program
    automate scrape parse"""
)
# Math asked in words: a word problem or a computation, even without notation.
MATH_INTENT = _words(
    """calculate calculates calculating calculation compute computing solve solving equation
    equations sum product total average mean median percent percentage probability ratio
    profit loss cost costs price prices earn earns earned spend spends spent pay pays paid
    remainder divided multiplied minus plus times fraction fractions area perimeter volume
    speed distance interest discount cents dollars miles hours minutes"""
)
_MATH_PHRASES = ("how many", "how much", "how long", "how far", "how old", "what is the value")
# Extraction and formatting: the answer is already in the prompt and needs reshaping.
EXTRACTION = _words(
    """extract extracting extraction reformat format formatted formatting convert tabulate
    table json csv yaml xml markdown bullet bullets bulleted fields columns categorize
    categorise classify alphabetize alphabetise capitalize lowercase uppercase"""
)
# A short question that asks for a fact (who, when, where...) rather than for work.
_LOOKUP_STARTS = _words("who what when where which whats what's who's where's how is are was")
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
            # (benchmarks/tune_classifier.py --without-lexicon --without-domain); code, tools,
            # depth and output are hand-set because that data never exercises them. The learned
            # lexicon is off: with it, held-out APGR rose on MMLU and fell on GSM8K
            # (benchmarks/RESULTS-routing.md gives the weights that switch it on). The
            # knowledge-domain table is off for the same reason: with it (weight 8, tuned
            # alone by tune_classifier.py --without-lexicon --only domain, and bias -6 so a
            # neutral prompt scores as before) held-out APGR rose on MMLU, fell on GSM8K.
            "length": 0.9,
            "math": 0.5,
            "code": 1.2,
            "reasoning": 1.1,
            "technical": 0.6,
            "multi_part": 5.0,
            "relations": 2.8,
            "situation": 0.6,
            "constraints": 0.0,
            "negation": 2.2,
            "tools": 1.0,
            "depth": 0.8,
            "output": 1.0,
            "simple": -0.5,
            "reading": -0.4,
            "code_task": 1.6,
            "math_task": 0.5,
            "extraction": -0.1,
            "lookup": -1.0,
            "lexicon": 0.0,
            "domain": 0.0,
            # The learned difficulty model (proxy/decide/ngram.py) is off by the rule that put
            # the lexicon and the domain table off: on held-out data it raised MMLU (0.607 ->
            # 0.658) but not GSM8K (0.625 -> 0.605), so it does not beat the hand-written
            # signals on both. Its weight, chosen on out-of-fold values of the tune half with
            # every other weight held (benchmarks/train_ngram.py), is 8.0 (NGRAM_WEIGHT);
            # [classifier.weights] ngram = 8.0 switches it on.
            "ngram": 0.0,
        }
    )


DEFAULT_WEIGHTS = Weights()
# The ngram model's weight when it is switched on (benchmarks/train_ngram.py chose it).
NGRAM_WEIGHT = 8.0


@dataclass(frozen=True, slots=True)
class Assessment:
    score: float  # complexity in [0, 1]
    signals: Mapping[str, float]  # each in [0, 1]
    # (signal, weight * (value - centre)), largest |x| first
    contributions: tuple[tuple[str, float], ...]
    # The shipped ngram model's features of the request (empty where it did not read it):
    # the explanation names the strongest of them, looked up only when it shows the signal.
    grams: Collection[str] = ()

    def explain(self, top: int = 3) -> str:
        """'complexity=0.62 signals=ngram+0.90(how_much/@money),length+0.50,simple-0.40'
        (header-safe: features are lower-case ASCII words)."""
        shown = [
            f"{name}{value:+.2f}" + (self._grams_note() if name == "ngram" else "")
            for name, value in self.contributions[:top]
            if value
        ]
        return f"complexity={self.score:.2f} signals={','.join(shown) or 'none'}"

    def _grams_note(self) -> str:
        """'(how_much/@money)': the features behind the model's reading, numbers as N."""
        if not self.grams:
            return ""
        reading = self.signals.get("ngram", CENTRES["ngram"]) - CENTRES["ngram"]
        terms = strongest(bundled_ngram(), self.grams, 1.0 if reading > 0 else -1.0)
        names = "/".join(t.replace(" ", "_").replace("#", "N") for t in terms)
        return f"({names})" if names else ""


# The domain table's probability within this distance of 0.5 says nothing: on math word
# problems, which it never trained on, its values scatter around 0.5 by word choice alone
# (s.d. 0.10 on GSM8K's tune half against 0.18 on MMLU's) and ranked them worse than no
# signal. Only a clear reading outside the band counts, mapped onto [0, 1] with 0.5 neutral.
DOMAIN_DEAD_ZONE = 0.2


def domain_signal(probability: float) -> float:
    """The ``domain`` signal from the table's probability: 0.5 inside the dead zone."""
    x = probability - 0.5
    beyond = max(0.0, abs(x) - DOMAIN_DEAD_ZONE)
    return 0.5 + (beyond if x > 0 else -beyond) / (1.0 - 2.0 * DOMAIN_DEAD_ZONE)


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


# Every word list, and for each word the lists it is in: one pass over a prompt's words
# counts them all.
_LEXICONS = {
    "reasoning": REASONING,
    "technical": TECHNICAL,
    "simple": SIMPLE,
    "constraints": CONSTRAINTS,
    "relations": RELATIONS,
    "persons": PERSONS,
    "reading": READING,
    "langs": CODE_LANGS,
    "nouns": CODE_NOUNS,
    "math": MATH_INTENT,
    "extraction": EXTRACTION,
}
_MEMBERSHIP: Mapping[str, tuple[str, ...]] = {
    word: tuple(name for name, words in _LEXICONS.items() if word in words)
    for word in frozenset().union(*_LEXICONS.values())
}


def _counts(words: Counter[str]) -> tuple[dict[str, int], int]:
    """How many of the words are in each list, and how many look past-tense."""
    counts = dict.fromkeys(_LEXICONS, 0)
    past = 0
    get = _MEMBERSHIP.get
    for w, n in words.items():
        lists = get(w)
        if lists:
            for name in lists:
                counts[name] += n
        if len(w) > 3 and w.endswith("ed"):
            past += n
    return counts, past


def words_of(body: Mapping[str, Any]) -> set[str]:
    """The distinct words of the sampled text, as the ``lexicon`` signal reads them."""
    shape = _shape(body)
    low = "\n".join([shape.ask, *shape.context]).lower()
    return {t for t in _TOKEN.findall(low) if not t[0].isdigit()}


# The ngram model learned from math word problems and multiple-choice knowledge questions;
# on a coding request or chit-chat, which it never saw, its reading is noise (it sent prose
# coding requests down and a movie recommendation up), so there it reads neutral.
NGRAM_OUT_OF_DOMAIN = 0.5


def ngram_reads(code_task: float, simple: float, lookup: bool) -> bool:
    """Whether the ngram model reads a request with these task-type signals."""
    return code_task < NGRAM_OUT_OF_DOMAIN and simple < NGRAM_OUT_OF_DOMAIN and not lookup


def _is_lookup(ask: str, code_task: float, math_marks: int) -> bool:
    """A short question that starts like a lookup and asks for no code or math."""
    ask_words = ask.split()
    return (
        (
            len(ask_words) <= 12
            and ask_words[0].lower() in _LOOKUP_STARTS
            and code_task == 0
            and math_marks == 0
        )
        if ask_words
        else False
    )


def _asks_for(body: Mapping[str, Any]) -> tuple[int, float]:
    """(tools offered, the ``output`` signal) from the request's fields, not its text."""
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
    return n_tools, max(output, 0.5 if structured else 0.0, effort)


@dataclass(frozen=True, slots=True)
class _Reads:
    """Which learned tables a call reads, and any given in place of the shipped ones."""

    lexicon: Lexicon | None = None
    learned: bool = True
    domain: Lexicon | None = None
    knowledge: bool = True
    grams: bool = True


def _tables(
    words: Iterable[str], reads: _Reads, sample: str, tokens: list[str], grams: bool
) -> tuple[dict[str, float], set[str]]:
    """The learned signals: ``lexicon`` (the shipped word weights unless one is given; 0 and
    not read unless ``reads.learned``), ``domain`` (the shipped knowledge-domain table unless
    one is given; the neutral 0.5 and not read unless ``reads.knowledge``) and ``ngram`` (the
    shipped difficulty model, neutral and not computed unless ``grams``), with the ngram
    model's features."""
    words = list(words)
    found = ngram_features(sample, tokens) if grams else set()
    return {
        "lexicon": (reads.lexicon or bundled_lexicon()).value(words) if reads.learned else 0.0,
        "domain": (
            domain_signal((reads.domain or bundled_domain()).value(words))
            if reads.knowledge
            else 0.5
        ),
        "ngram": bundled_ngram().value(found) if grams else CENTRES["ngram"],
    }, found


def signals_of(
    body: Mapping[str, Any],
    lexicon: Lexicon | None = None,
    *,
    learned: bool = True,
    domain: Lexicon | None = None,
    knowledge: bool = True,
    grams: bool = True,
) -> dict[str, float]:
    """Every signal in [0, 1] for one request body (chat or legacy completions); ``ngram``
    is the neutral 0.5 and not computed when ``grams`` is false."""
    return _signals(body, _Reads(lexicon, learned, domain, knowledge, grams))[0]


def ngram_features_of(body: Mapping[str, Any]) -> set[str]:
    """The ``ngram`` model's features of a request, as the classifier computes them."""
    shape = _shape(body)
    sample = "\n".join([shape.ask, *shape.context])
    return ngram_features(sample, _TOKEN.findall(sample.lower()))


def _signals(body: Mapping[str, Any], reads: _Reads) -> tuple[dict[str, float], set[str]]:
    """The signals and, when the ngram model read the request, its features (else empty)."""
    shape = _shape(body)
    sample = "\n".join([shape.ask, *shape.context])
    low = sample.lower()
    found = _TOKEN.findall(low)
    words = Counter(t for t in found if not t[0].isdigit())
    n_words = max(1, sum(words.values()))
    tokens = shape.chars / CHARS_PER_TOKEN
    # 0 below ~16 tokens, 1 at ~16k: each doubling of the prompt adds the same amount.
    length = min(1.0, max(0.0, math.log2(max(tokens, 1.0) / 16.0) / 10.0))
    c, past = _counts(words)
    extraction = _saturate(c["extraction"], 1.0)
    numbers = len(found) - sum(words.values())
    math_marks = sum(sample.count(m) for m in _MATH_MARKS)
    phrases = sum(low.count(p) for p in _PHRASES)
    code_lines, list_items = _line_marks(sample)
    code_marks = code_lines + len(_SNAKE.findall(low)) + sum(sample.count(m) for m in _CODE_MARKS)
    upper = sum(sample.count(f" {w} ") for w in NEGATIONS)
    langs = c["langs"]
    nouns = c["nouns"]
    wants = (langs or nouns) and not words.keys().isdisjoint(CODE_VERBS)
    code_task = 1.5 * min(langs, 2) + min(nouns, 4) + (1.0 if wants else 0.0)
    math_task = c["math"] + 2 * sum(low.count(p) for p in _MATH_PHRASES)
    lookup = _is_lookup(shape.ask, code_task, math_marks)
    n_tools, output = _asks_for(body)
    simple = _saturate(c["simple"], 1.0) * (1.0 if n_words < 400 else 0.5)
    code = _saturate(code_task, 2.0)
    grams = reads.grams and ngram_reads(code, simple, lookup)
    learned, found_grams = _tables(words.keys(), reads, sample, found, grams)
    return {
        "length": length,
        "math": _saturate(math_marks + 0.25 * numbers, 6.0),
        "code": _saturate(code_marks + 0.5 * langs, 4.0),
        "reasoning": _saturate(c["reasoning"] + 2 * phrases, 3.0),
        "technical": _saturate(c["technical"], 2.0),
        # Items to extract or reshape are not parts to solve: a list under "extract",
        # "format as a table" or "return JSON" counts for half or less.
        "multi_part": _saturate(
            len(_ENUMERATED.findall(low)) + list_items * (1.0 - extraction) + sample.count("?") - 1,
            3.0,
        ),
        "relations": _saturate(c["relations"], 4.0),
        "situation": _saturate(c["persons"] + past, 8.0),
        "constraints": _saturate(c["constraints"], 4.0),
        "negation": _saturate(upper, 1.0),
        "tools": _saturate(n_tools, 2.0),
        "depth": _saturate(shape.user_turns - 1, 4.0),
        "output": output,
        "simple": simple,
        "reading": _saturate(c["reading"] + 2 * len(_READING.findall(low)), 2.0),
        "code_task": code,
        "math_task": _saturate(math_task + 0.25 * numbers, 4.0),
        "extraction": extraction,
        "lookup": 1.0 if lookup else 0.0,
        **learned,
    }, found_grams


def score_signals(
    signals: Mapping[str, float],
    weights: Weights = DEFAULT_WEIGHTS,
    grams: Collection[str] = (),
) -> Assessment:
    contributions = [
        (name, weights.by_signal.get(name, 0.0) * (v - CENTRES.get(name, 0.0)))
        for name, v in signals.items()
    ]
    z = weights.bias + sum(c for _, c in contributions)
    score = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
    contributions.sort(key=lambda c: -abs(c[1]))
    return Assessment(score, dict(signals), tuple(contributions), grams)


def assess(body: Mapping[str, Any], weights: Weights = DEFAULT_WEIGHTS) -> Assessment:
    on = {name: weight != 0.0 for name, weight in weights.by_signal.items()}
    reads = _Reads(
        learned=on.get("lexicon", False),
        knowledge=on.get("domain", False),
        grams=on.get("ngram", False),
    )
    signals, found = _signals(body, reads)
    return score_signals(signals, weights, found)


def unknown_signals(names: Iterable[str]) -> list[str]:
    return sorted(set(names) - set(SIGNALS))
