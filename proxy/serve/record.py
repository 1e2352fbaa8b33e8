"""One record per request: what was asked (frozen once the request is parsed and decided)
and what happened (written as it is served). ``FIELDS`` is the one field list: the access
log's line, the usage log's row and schema, and ``report``'s groups are read from it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import FrozenInstanceError, dataclass
from dataclasses import fields as dataclass_fields
from operator import attrgetter
from typing import Any, NamedTuple

# Intents name client-given models; bound what one record (and one log line) holds.
MAX_TEXT = 256


class _AskedFields(NamedTuple):
    request_id: str
    endpoint: str
    key_id: str | None = None  # the client's API key id (never the key), once keys exist
    stream: bool = False
    intent: str = ""  # as requested, e.g. "auto prefer=fast tier=any"
    prefer: str | None = None  # as routed: after the classifier and an experiment
    tier: str | None = None  # as routed (None: any tier, or pinned)
    complexity: float | None = None  # the classifier's score when tier was auto
    arm: str | None = None  # experiment arm, "<name>:control" or "<name>:treatment"


class Asked(_AskedFields):
    """What the client asked for, as the router read it. Replaced whole, never edited: first
    with what is known on arrival, then once more when the body is parsed and decided.

    A named tuple that refuses assignment as a frozen dataclass does, rather than a frozen
    dataclass: it is built three times a request, and a frozen dataclass's ``__init__`` sets
    each field through ``object.__setattr__`` (74 bytecodes a build, against 19 here)."""

    __slots__ = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise FrozenInstanceError(f"cannot delete field {name!r}")


@dataclass(slots=True)
class RequestRecord:
    """One request: ``asked`` plus what happened to it. Logs, metrics and accounting read it
    after the answer (``Router.sinks``)."""

    asked: Asked
    model: str | None = None  # the model that answered
    provider: str | None = None
    model_tier: str | None = None  # the answering model's tier
    reason: str = ""
    attempts: int = 0
    status: int = 0
    ttft_ms: float | None = None
    total_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    error: str | None = None  # failure kind of the final error, if any
    escalated_from: str | None = None  # the tier whose answer was retried a tier up
    cache_hit: bool = False
    # Tokens and cost were estimated: the stream ended before the upstream's usage came.
    estimated: bool = False
    # A hedged race (serve/hedge.py): which attempt won ("primary", "hedge", or "neither"
    # when both failed and a later candidate answered; None when none started), and what
    # the cancelled one cost (its prompt, plus the content it had produced).
    hedged: str | None = None
    hedge_cost: float = 0.0
    hedge_tokens: int = 0

    @property
    def request_id(self) -> str:
        return self.asked.request_id

    @property
    def endpoint(self) -> str:
        return self.asked.endpoint

    @property
    def key_id(self) -> str | None:
        return self.asked.key_id

    @property
    def stream(self) -> bool:
        return self.asked.stream

    @property
    def intent(self) -> str:
        return self.asked.intent

    @property
    def prefer(self) -> str | None:
        return self.asked.prefer

    @property
    def tier(self) -> str | None:
        return self.asked.tier

    @property
    def complexity(self) -> float | None:
        return self.asked.complexity

    @property
    def arm(self) -> str | None:
        return self.asked.arm

    def answered_by(self, model: str, provider: str, tier: str | None) -> None:
        self.model, self.provider, self.model_tier = model, provider, tier

    def take_charge(self, charge: tuple[int, int, float, bool]) -> None:
        """A stream's (prompt, completion, cost, estimated), from ``SSERelay.charge``.
        ``cost`` is what the request cost us: a hedged race's cancelled attempt included (the
        answer's own ``usage.cost`` excludes it)."""
        self.prompt_tokens, self.completion_tokens, cost, self.estimated = charge
        self.cost = cost + self.hedge_cost

    def take_usage(self, usage: Mapping[str, Any] | None) -> None:
        if not usage:
            return
        # A negative count from the upstream is recorded as 0: a token count is never below,
        # and metrics and accounting refuse negatives.
        self.prompt_tokens = max(0, int(usage.get("prompt_tokens") or 0))
        self.completion_tokens = max(0, int(usage.get("completion_tokens") or 0))
        self.cost = float(usage.get("cost") or 0.0)


@dataclass(frozen=True, slots=True)
class Field:
    """One recorded fact: its usage-log column (``sql``), whether the access log carries
    it, and what it means."""

    name: str
    sql: str
    doc: str = ""
    logged: bool = True


# The usage log's column order; an older database gains the columns after the first release.
FIELDS: tuple[Field, ...] = (
    Field("ts", "REAL NOT NULL", "unix time (UTC) when the answer ended", logged=False),
    Field("request_id", "TEXT NOT NULL"),
    Field("key_id", "TEXT", "the client's API key id, never the key"),
    Field("endpoint", "TEXT NOT NULL", "chat | completions"),
    Field("stream", "INTEGER NOT NULL"),
    Field("intent", "TEXT NOT NULL", 'as requested, e.g. "auto prefer=fast tier=any"'),
    Field("prefer", "TEXT", "as routed: after the classifier and experiments", logged=False),
    Field("tier", "TEXT", "as routed (NULL: any, or pinned)", logged=False),
    Field("model", "TEXT", "the model that answered"),
    Field("provider", "TEXT"),
    Field("model_tier", "TEXT", "the answering model's tier", logged=False),
    Field("attempts", "INTEGER NOT NULL"),
    Field("status", "INTEGER NOT NULL"),
    Field("error", "TEXT"),
    Field("ttft_ms", "REAL"),
    Field("total_ms", "REAL NOT NULL"),
    Field("prompt_tokens", "INTEGER NOT NULL"),
    Field("completion_tokens", "INTEGER NOT NULL"),
    Field("cost", "REAL NOT NULL", "USD; 0 for cache hits"),
    Field("cache_hit", "INTEGER NOT NULL"),
    Field("arm", "TEXT", 'experiment arm, "<name>:control" / "<name>:treatment"'),
    Field("escalated_from", "TEXT", "the tier whose answer was retried a tier up"),
    Field("complexity", "REAL", "the classifier's score when the tier was auto"),
    Field("estimated", "INTEGER", "1: tokens and cost estimated (a stream cut short)"),
    Field("hedged", "TEXT", "a hedged race's winner: primary | hedge | neither (NULL: no race)"),
    Field("hedge_cost", "REAL", "USD the race's cancelled attempt cost (part of cost)"),
    Field("hedge_tokens", "INTEGER", "content tokens the cancelled attempt had produced"),
)
COLUMNS = tuple(f.name for f in FIELDS)
LOGGED = tuple(f.name for f in FIELDS if f.logged)


def _path(name: str) -> str:
    """Where a field lives: the record's own, else its ``asked``'s ("asked.key_id") — read
    there directly, the C getter skips the property's Python frame (4 bytecodes a field,
    16 properties per request between the row and the line: ``benchmarks.opcodes``)."""
    return name if name in _OWN else f"asked.{name}"


_OWN = frozenset(f.name for f in dataclass_fields(RequestRecord))
# Read in one C call per request; "ts" is the writer's clock, not the record's.
_ROW = attrgetter(*map(_path, COLUMNS[1:]))
_LOGGED = attrgetter(*map(_path, LOGGED))


def row(record: RequestRecord, ts: float) -> tuple[Any, ...]:
    """The usage log's row, in ``COLUMNS`` order."""
    return (ts, *_ROW(record))


def logged(record: RequestRecord) -> dict[str, Any]:
    """The access log's object; times rounded to 0.1 ms."""
    # Not strict=True: both come from LOGGED, so their lengths cannot differ (2 bytecodes).
    line = dict(zip(LOGGED, _LOGGED(record)))  # noqa: B905
    if record.ttft_ms is not None:
        line["ttft_ms"] = round(record.ttft_ms, 1)
    line["total_ms"] = round(record.total_ms, 1)
    return line
