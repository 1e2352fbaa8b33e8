"""What one API key may use (its allowed tiers and models), as routing and /v1/models see it:
the filter on models, the tiers it can reach, narrowing a tier the client did not name, and
the ``auto…`` names that route within it. Pure."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from proxy.catalog import PREFERS, TIERS, Catalog, Model, Tier

from .intent import Intent


@dataclass(frozen=True, slots=True)
class Allowance:
    tiers: frozenset[str] = frozenset()  # empty: every tier
    models: frozenset[str] = frozenset()  # catalog ids; empty: every model

    def allows(self, m: Model) -> bool:
        return (not self.tiers or m.tier in self.tiers) and (not self.models or m.id in self.models)

    def reach(self, catalog: Catalog) -> tuple[Tier, ...]:
        """The tiers holding at least one model this key may use, cheapest first."""
        found = {m.tier for m in catalog.models if self.allows(m)}
        return tuple(t for t in TIERS if t in found)

    def narrow(self, intent: Intent, reach: Sequence[Tier]) -> tuple[Intent, str]:
        """``intent`` routed within ``reach`` (this key's tiers) and a note for the reason
        header, or ``intent`` and "" when nothing needed narrowing.

        A tier the client named is left alone: the key's check refuses it with a 403 that
        names the limit. Any other tier (a bare auto's standard, a task's, the classifier's,
        an experiment's) becomes the nearest tier the key reaches, the cheaper on a tie, as
        LiteLLM and OpenRouter serve a restricted key within what it may use."""
        tier = intent.tier
        if intent.pinned or not reach or len(reach) == len(TIERS):
            return intent, ""
        if tier is None:
            # The pool is every tier; the key's filter leaves only its own. One tier is
            # named in the plan so the reason reads tier=economy, not tier=any.
            one = reach[0] if len(reach) == 1 else None
            return replace(intent, tier=one), f"narrowed=any->{','.join(reach)}"
        if tier in reach or tier == intent.named_tier:
            return intent, ""
        at = TIERS.index(tier)
        to = min(reach, key=lambda t: (abs(TIERS.index(t) - at), TIERS.index(t)))
        return replace(intent, tier=to), f"narrowed={tier}->{to}"


def auto_names(reach: Sequence[Tier]) -> list[str]:
    """The ``auto…`` model names that route within ``reach``, in /v1/models order: every
    name without a tier (a key's limits narrow it) and those naming a reachable tier."""
    if not reach:
        return []
    names = ["auto", *(f"auto:{p}" for p in PREFERS), *(f"auto:{t}" for t in reach)]
    names += [f"auto:{t}:{p}" for t in reach for p in PREFERS]
    names += ["auto:auto", *(f"auto:auto:{p}" for p in PREFERS)]  # tier chosen by the classifier
    return names
