"""escalate: true — judge a non-streaming answer and, when a lower tier cut it off, left it
empty or refused, ask the next tier up once. The answer kept is the better of the two.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from proxy.catalog import DEFAULT_PREFER, TIERS, Model, Tier
from proxy.decide.policy import EscalationSettings
from proxy.decide.resolve import Resolution
from proxy.decide.routing import Plan, plan, spoken
from proxy.errors import RouterError

from .dispatch import Answer
from .record import RequestRecord
from .state import Router

log = logging.getLogger("model_router.escalation")

# Apostrophes as models type them, so one phrase list covers both.
_QUOTES = str.maketrans({"\u2019": "'", "\u2018": "'"})


def next_tier(tier: Tier) -> Tier | None:
    i = TIERS.index(tier)
    return TIERS[i + 1] if i + 1 < len(TIERS) else None


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str)
        )
    return ""


def trigger(data: Any, settings: EscalationSettings) -> str | None:
    """Why this answer deserves a higher tier: 'length', 'content_filter', 'refusal' or
    'empty'; None when it stands. Works on chat and legacy completions answers."""
    choices = data.get("choices") if isinstance(data, Mapping) else None
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        return "empty"
    choice = choices[0]
    finish = choice.get("finish_reason")
    if finish in ("length", "content_filter"):
        return str(finish)
    message = choice.get("message")
    if isinstance(message, Mapping):
        if message.get("refusal"):
            return "refusal"
        if message.get("tool_calls") or message.get("function_call"):
            return None
        text = _text(message.get("content"))
    else:
        text = _text(choice.get("text"))
    if not text.strip():
        return "empty"
    head = text.lstrip()[: settings.refusal_window_chars].lower().translate(_QUOTES)
    if any(phrase.translate(_QUOTES) in head for phrase in settings.refusal_phrases):
        return "refusal"
    return None


async def complete_escalating(
    router: Router,
    chosen: Resolution,
    decision: Plan,
    body: dict[str, Any],
    record: RequestRecord,
    allow: Callable[[Model], bool] | None = None,
) -> Answer:
    """Dispatch as usual; on a trigger, once more on the next tier up, within what ``allow``
    (the caller's key) permits. If the higher tier cannot answer, the first answer is
    returned (it is better than an error)."""
    intent, notes = chosen.intent, chosen.notes
    dispatcher = router.dispatcher
    first = await dispatcher.answer(intent, decision, body, record)
    why = trigger(first.data, router.config.policy.escalation)
    answered = first.candidate.model
    if why is None:
        return settled(first, record)
    up = next_tier(answered.tier)
    if up is None:
        first.note = f"none ({answered.tier} is the top tier)"
        return settled(first, record)
    higher = replace(intent, pinned=(), tier=up, prefer=intent.prefer or DEFAULT_PREFER)
    step = f"{answered.tier}->{up}"
    try:
        second_plan = plan(
            higher,
            router.catalog,
            router.health.snapshot(),
            router.config.routing.max_attempts,
            allow=allow,
        )
    except RouterError as err:
        first.note = f"none ({up}: {err.code or err.type})"
        return settled(first, record)
    reason = f"{notes} {second_plan.reason}" if notes else second_plan.reason
    second_plan = replace(second_plan, reason=f"{reason} escalated={step} trigger={why}")
    try:
        second = await dispatcher.answer(higher, second_plan, body, record)
    except RouterError as err:
        log.info("escalation %s failed: %s", step, err.code or err.type)
        record.error = None  # the first answer stands
        first.note = f"none ({step} failed: {err.code or err.type})"
        return settled(first, record)
    except asyncio.CancelledError:
        # The client left during the second try: the first answer was paid for all the same
        # (and the second's prompt, if its request had left: dispatch charged it).
        if record.model is None:
            record.answered_by(answered.id, first.candidate.deployment.provider, answered.tier)
        add_spent(first, record)
        raise
    record.escalated_from = answered.tier
    record.reason = spoken(second_plan)
    settled(second, record)
    # The usage log records what the request cost in all, the discarded answer included.
    add_spent(first, record)
    return second


def add_spent(answer: Answer, record: RequestRecord) -> None:
    """Add an answer the client does not get to what the request cost."""
    spent = answer.data.get("usage")
    if isinstance(spent, dict):
        record.prompt_tokens += int(spent.get("prompt_tokens") or 0)
        record.completion_tokens += int(spent.get("completion_tokens") or 0)
        record.cost += float(spent.get("cost") or 0.0)


def settled(answer: Answer, record: RequestRecord) -> Answer:
    answer.settle(record)
    return answer
