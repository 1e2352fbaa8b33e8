"""Compare experiment arms over usage-log rows: calls, cost, TTFT, error and escalation
rates per arm, and treatment against control per experiment. Pure: rows in, figures out,
so `model-router report --by arm` only has to read the rows and print.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ArmStats:
    arm: str
    calls: int
    cost: float  # USD in all
    cost_per_call: float
    ttft_p50_ms: float | None
    ttft_p95_ms: float | None
    error_rate: float  # share of calls that did not end with 2xx
    escalation_rate: float  # share of calls retried a tier up

    def as_dict(self) -> dict[str, Any]:
        return {f: getattr(self, f) for f in self.__slots__}


@dataclass(frozen=True, slots=True)
class Comparison:
    experiment: str
    control: ArmStats
    treatment: ArmStats
    cost_per_call_change: float | None  # relative: +0.25 means 25 % dearer per call
    error_rate_z: float | None  # two-proportion z statistic, treatment minus control
    escalation_rate_z: float | None


def _percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile of sorted ``values``; None when there are none."""
    if not values:
        return None
    rank = max(1, math.ceil(q / 100 * len(values)))
    return values[rank - 1]


def _failed(row: Mapping[str, Any]) -> bool:
    status = row.get("status")
    return not isinstance(status, int) or not 200 <= status < 300


def arm_stats(rows: Iterable[Mapping[str, Any]]) -> list[ArmStats]:
    """One line per arm (rows without an arm are not in any experiment and are skipped)."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        arm = row.get("arm")
        if arm:
            groups.setdefault(str(arm), []).append(row)
    stats = []
    for arm, group in sorted(groups.items()):
        calls = len(group)
        cost = sum(float(r.get("cost") or 0.0) for r in group)
        ttfts = sorted(float(r["ttft_ms"]) for r in group if r.get("ttft_ms") is not None)
        stats.append(
            ArmStats(
                arm=arm,
                calls=calls,
                cost=cost,
                cost_per_call=cost / calls,
                ttft_p50_ms=_percentile(ttfts, 50),
                ttft_p95_ms=_percentile(ttfts, 95),
                error_rate=sum(_failed(r) for r in group) / calls,
                escalation_rate=sum(bool(r.get("escalated_from")) for r in group) / calls,
            )
        )
    return stats


def _z(p1: float, n1: int, p2: float, n2: int) -> float | None:
    """Two-proportion z statistic of p2 - p1 with the pooled variance; None if undefined."""
    pooled = (p1 * n1 + p2 * n2) / (n1 + n2)
    var = pooled * (1 - pooled) * (1 / n1 + 1 / n2)
    return (p2 - p1) / math.sqrt(var) if var > 0 else None


def compare(stats: Iterable[ArmStats]) -> list[Comparison]:
    """Treatment against control for every experiment that has both arms on record."""
    by_arm = {s.arm: s for s in stats}
    out = []
    for arm in sorted(by_arm):
        name, _, side = arm.rpartition(":")
        if side != "treatment" or f"{name}:control" not in by_arm:
            continue
        c, t = by_arm[f"{name}:control"], by_arm[arm]
        out.append(
            Comparison(
                experiment=name,
                control=c,
                treatment=t,
                cost_per_call_change=(
                    t.cost_per_call / c.cost_per_call - 1 if c.cost_per_call > 0 else None
                ),
                error_rate_z=_z(c.error_rate, c.calls, t.error_rate, t.calls),
                escalation_rate_z=_z(c.escalation_rate, c.calls, t.escalation_rate, t.calls),
            )
        )
    return out


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def format_table(stats: list[ArmStats], comparisons: list[Comparison]) -> str:
    """A terminal table: one row per arm, then one line per experiment."""
    lines = [
        f"{'arm':<32} {'calls':>7} {'cost $':>10} {'$/call':>10} {'ttft p50':>9} "
        f"{'ttft p95':>9} {'errors':>7} {'escal.':>7}"
    ]
    for s in stats:
        lines.append(
            f"{s.arm:<32} {s.calls:>7} {s.cost:>10.4f} {s.cost_per_call:>10.6f} "
            f"{_ms(s.ttft_p50_ms):>9} {_ms(s.ttft_p95_ms):>9} {s.error_rate:>7.1%} "
            f"{s.escalation_rate:>7.1%}"
        )
    for c in comparisons:
        change = "-" if c.cost_per_call_change is None else f"{c.cost_per_call_change:+.1%}"
        ez = "-" if c.error_rate_z is None else f"{c.error_rate_z:+.2f}"
        sz = "-" if c.escalation_rate_z is None else f"{c.escalation_rate_z:+.2f}"
        lines.append(
            f"{c.experiment}: treatment vs control: $/call {change}, error-rate z {ez}, "
            f"escalation-rate z {sz} (|z| > 1.96: unlikely to be chance at 95 %)"
        )
    return "\n".join(lines)
