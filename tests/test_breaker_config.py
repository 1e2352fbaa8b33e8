"""The [breaker] config section: mapped onto probes.breaker.BreakerPolicy, unknown keys and bad
values are errors naming their path, and the app builds its breakers from it."""

from __future__ import annotations

from typing import Any

import pytest

from probes.breaker import BreakerPolicy
from proxy.config import ConfigError, parse_config
from tests.conftest import StartProxy


def test_defaults_are_the_policy_defaults() -> None:
    assert parse_config({}).breaker == BreakerPolicy()


def test_every_key_maps_onto_the_policy() -> None:
    table = {
        "consecutive_failures": 3,
        "failure_rate": 0.25,
        "window_s": 10,
        "min_requests": 4,
        "slow_ttft_ms": 1500,
        "slow_rate": 0.75,
        "base_open_s": 0.5,
        "max_open_s": 8,
        "jitter": 0,
        "half_open_successes": 3,
        "max_retry_after_s": 90,
    }
    policy = parse_config({"breaker": table}).breaker
    for key, value in table.items():
        assert getattr(policy, key) == value, key
    assert isinstance(policy.window_s, float) and isinstance(policy.slow_ttft_ms, float)


@pytest.mark.parametrize(
    ("table", "message"),
    [
        pytest.param({"consecutive": 3}, "breaker.consecutive: unknown key", id="unknown-key"),
        pytest.param(
            {"trial_timeout_s": 1}, "breaker.trial_timeout_s: unknown key", id="internal-key"
        ),
        pytest.param(
            {"consecutive_failures": 2.5},
            "breaker.consecutive_failures: expected an integer",
            id="float-for-int",
        ),
        pytest.param(
            {"failure_rate": "half"},
            "breaker.failure_rate: expected a number",
            id="string-for-number",
        ),
        pytest.param(
            {"base_open_s": True}, "breaker.base_open_s: expected a number", id="bool-for-number"
        ),
        pytest.param(
            {"failure_rate": 1.5}, "failure_rate must be within (0, 1]", id="rate-above-one"
        ),
        pytest.param(
            {"base_open_s": 300}, "need 0 < base_open_s <= max_open_s", id="base-above-cap"
        ),
        pytest.param({"slow_ttft_ms": 0}, "slow_ttft_ms must be > 0", id="zero-threshold"),
    ],
)
def test_bad_breaker_settings_are_errors_that_name_the_key(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"breaker": table})
    assert str(err.value).startswith("breaker")
    assert message in str(err.value)


def test_breaker_must_be_a_table() -> None:
    with pytest.raises(ConfigError, match=r"^breaker: expected a table"):
        parse_config({"breaker": 5})


async def test_the_running_router_uses_the_configured_policy(start_proxy: StartProxy) -> None:
    proxy = await start_proxy({"breaker": {"consecutive_failures": 2, "base_open_s": 0.5}})
    policy = proxy.router.health.board.policy
    assert (policy.consecutive_failures, policy.base_open_s) == (2, 0.5)
