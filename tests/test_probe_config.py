"""The [probes] config section, the probe request each deployment gets, and probe pacing."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import pytest

from probes.loop import ProbeSettings, ProbeSettingsError
from proxy.assembly.probing import probe_body, probe_costs, probe_interval
from proxy.config import ConfigError, ProbeConfig, parse_config
from proxy.sim.catalogs import only_models, sim_model
from tests.conftest import StartProxy

DAY_S = 86_400.0


def test_defaults_are_the_documented_ones() -> None:
    probes = parse_config({}).probes
    assert probes == ProbeConfig()
    assert (probes.interval_s, probes.half_life_s, probes.max_daily_spend_usd) == (
        30.0,
        300.0,
        1.0,
    )
    # The serving layer's defaults agree with the probe loop's own.
    loop_defaults = ProbeSettings()
    for name in ("interval_s", "jitter", "concurrency", "live_quiet_s", "live_interval_factor"):
        assert getattr(probes, name) == getattr(loop_defaults, name), name


def test_every_key_is_read() -> None:
    raw = {
        "enabled": False,
        "interval_s": 5,
        "jitter": 0.5,
        "half_life_s": 60,
        "concurrency": 2,
        "max_daily_spend_usd": 0.25,
        "timeout_s": 3,
        "live_quiet_s": 10,
        "live_interval_factor": 2,
        "p90_weight": 0.0,
        "shift_samples": 3,
    }
    probes = parse_config({"probes": raw}).probes
    assert {k: getattr(probes, k) for k in raw} == raw


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"interval_s": 0}, "probes.interval_s: must be > 0", id="zero-interval"),
        pytest.param({"half_life_s": 0}, "probes.half_life_s: must be > 0", id="zero-half-life"),
        pytest.param({"timeout_s": 0.0}, "probes.timeout_s: must be > 0", id="zero-timeout"),
        pytest.param({"concurrency": 0}, "probes.concurrency: must be at least 1", id="no-slots"),
        pytest.param({"jitter": 1.0}, "probes.jitter: must be within [0, 1)", id="jitter-one"),
        pytest.param(
            {"live_interval_factor": 0.5},
            "probes.live_interval_factor: must be at least 1",
            id="factor-below-one",
        ),
        pytest.param({"p90_weight": 1.5}, "probes.p90_weight: must be within", id="mix-over-one"),
        pytest.param({"interval_s": -1}, "probes.interval_s: must not be negative", id="negative"),
        pytest.param({"shift_samples": 1.5}, "probes.shift_samples: expected int", id="fraction"),
        pytest.param({"interval_s": "30s"}, "probes.interval_s: expected float", id="string"),
        pytest.param({"half_life": 300}, "probes.half_life: unknown key", id="unknown-key"),
    ],
)
def test_bad_probe_settings_name_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"probes": raw})


def test_overriding_a_nominal_moves_every_deployment_of_the_model() -> None:
    before = parse_config({}).catalog.get("claude-haiku-4-5")
    after = parse_config({"overrides": {"claude-haiku-4-5": {"nominal_ttft_ms": 350}}}).catalog.get(
        "claude-haiku-4-5"
    )
    assert before is not None and after is not None
    assert after.nominal_ttft_ms == 350.0
    for old, new in zip(before.deployments, after.deployments, strict=True):
        assert new.nominal_ttft_ms == pytest.approx(old.nominal_ttft_ms / 2)


def test_a_non_positive_nominal_override_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"overrides\.gpt-4o\.nominal_ttft_ms"):
        parse_config({"overrides": {"gpt-4o": {"nominal_ttft_ms": 0}}})


@pytest.mark.parametrize(
    ("model_id", "provider", "expected"),
    [
        # OpenAI's reasoning models refuse max_tokens; every OpenAI chat model takes this one.
        pytest.param("gpt-5", "openai", {"max_completion_tokens": 1}, id="openai-chat"),
        pytest.param("gpt-5", "openrouter", {"max_tokens": 1}, id="openrouter-chat"),
        pytest.param("deepseek-v3.2", "deepseek", {"max_tokens": 1}, id="deepseek"),
        pytest.param("claude-haiku-4-5", "anthropic", {"max_tokens": 1}, id="anthropic"),
        pytest.param(
            "gpt-3.5-turbo-instruct", "openai", {"max_tokens": 1, "prompt": "ping"}, id="legacy"
        ),
    ],
)
def test_a_probe_asks_each_provider_for_one_token_in_its_own_terms(
    model_id: str, provider: str, expected: dict[str, Any]
) -> None:
    config = parse_config({})
    model = config.catalog.get(model_id)
    assert model is not None
    (d,) = (d for d in model.deployments if d.provider == provider)
    body = probe_body(model, d, config.providers[provider])
    assert body["model"] == d.upstream_id
    assert body["stream"] is True
    assert {k: body[k] for k in expected} == expected
    other = {"max_tokens", "max_completion_tokens"} - expected.keys()
    assert not other & body.keys()
    assert ("messages" in body) != ("prompt" in body)


def test_probing_the_whole_catalog_is_paced_to_fit_the_daily_cap() -> None:
    config = parse_config({})
    interval = probe_interval(config, config.catalog)
    per_round = sum(probe_costs(config.catalog).values())
    assert interval > config.probes.interval_s
    assert per_round * DAY_S / interval <= config.probes.max_daily_spend_usd


def test_a_small_catalog_is_probed_at_the_configured_interval() -> None:
    config = parse_config(only_models(sim_model("a"), sim_model("b")))
    assert probe_interval(config, config.catalog) == config.probes.interval_s


def test_the_probes_table_is_the_probe_loops_own_settings() -> None:
    """No mirrored copy in the serving layer: what the config fills is probes.loop's dataclass,
    every key of it settable, and the loop the app builds runs on it (interval paced)."""
    raw = {"half_open_gap_s": 0.5, "max_sleep_s": 2, "timeout_s": 4, "concurrency": 3}
    config = parse_config(only_models(sim_model("a")) | {"probes": raw})
    assert type(config.probes) is ProbeSettings
    assert {k: getattr(config.probes, k) for k in raw} == raw
    assert config.probes == ProbeSettings(
        half_open_gap_s=0.5, max_sleep_s=2.0, timeout_s=4.0, concurrency=3
    )


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        pytest.param({"half_open_gap_s": 0}, "probes.half_open_gap_s: must be > 0", id="gap"),
        pytest.param({"max_sleep_s": 0.0}, "probes.max_sleep_s: must be > 0", id="sleep"),
        pytest.param(
            {"interval_s": 0, "p90_weight": 2.0},
            "probes.interval_s: must be > 0; probes.p90_weight: must be within [0, 1]",
            id="every-problem-named",
        ),
    ],
)
def test_the_loops_own_checks_name_the_config_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"probes": raw})


def test_probe_settings_errors_list_each_field_and_its_limit() -> None:
    with pytest.raises(ProbeSettingsError) as caught:
        ProbeSettings(jitter=1.0, shift_samples=-1)
    assert caught.value.problems == [
        ("jitter", "must be within [0, 1)"),
        ("shift_samples", "must not be negative"),
    ]
    assert str(caught.value).startswith("invalid ProbeSettings: jitter must be within [0, 1)")


async def test_the_app_runs_its_probe_loop_on_the_configured_settings(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy({"probes": {"half_open_gap_s": 0.5, "max_sleep_s": 0.25}})
    loop = proxy.router.probe_loop
    assert loop is not None
    configured = proxy.router.config.probes
    paced = probe_interval(proxy.router.config, proxy.router.catalog)
    assert loop.settings == replace(configured, interval_s=paced)
    assert (loop.settings.half_open_gap_s, loop.settings.max_sleep_s) == (0.5, 0.25)
