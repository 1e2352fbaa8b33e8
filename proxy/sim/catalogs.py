"""Config fragments that replace the bundled catalog with a few made-up models, for tests and
benchmarks that must control the routing pool exactly (and keep probe traffic small).
"""

from __future__ import annotations

from typing import Any

from proxy.catalog import load_bundled


def sim_model(
    model_id: str,
    *,
    provider: str = "openrouter",
    nominal_ttft_ms: float = 500.0,
    tier: str = "standard",
    price: float = 1.0,
) -> dict[str, Any]:
    """One ``[[models]]`` table served by ``provider`` under the upstream id ``sim/<id>``."""
    score = {"value": 50, "source": "made up for a simulation", "date": "2025-01"}
    return {
        "id": model_id,
        "tier": tier,
        "context_length": 128_000,
        "max_output_tokens": 8192,
        "input_price": price,
        "output_price": 2 * price,
        "pricing_source": "made up for a simulation",
        "capabilities": ["chat"],
        "quality": score,
        "coding": score,
        "nominal_ttft_ms": nominal_ttft_ms,
        "tokens_per_second": 100,
        "deployments": [{"provider": provider, "upstream_id": upstream_id(model_id)}],
    }


def upstream_id(model_id: str) -> str:
    return f"sim/{model_id}"


def only_models(*models: dict[str, Any]) -> dict[str, Any]:
    """Config data whose catalog is exactly ``models``: every bundled model is disabled."""
    return {
        "models": list(models),
        "overrides": {m.id: {"enabled": False} for m in load_bundled()},
    }
