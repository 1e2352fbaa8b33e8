"""systemd/config.example.toml: it loads as shipped and with its examples uncommented, shows
the real defaults, and names every setting the code knows."""

from __future__ import annotations

import re
import tomllib
from dataclasses import fields
from pathlib import Path

from proxy.app import SHUTDOWN_TIMEOUT_S
from proxy.config import (
    TOP_LEVEL,
    ProbeConfig,
    RoutingSettings,
    ServerSettings,
    load_config,
    parse_config,
)
from proxy.serve.drain import CUT_GRACE_S
from tests.test_systemd_unit import service_values

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "systemd" / "config.example.toml"
# "#" directly followed by TOML is an example to uncomment; "# " starts prose.
EXAMPLE_LINE = re.compile(r"^#(?=[\[a-z_])", re.MULTILINE)


def uncommented() -> str:
    return EXAMPLE_LINE.sub("", EXAMPLE.read_text())


def test_example_loads_as_shipped_with_the_built_in_defaults() -> None:
    config = load_config(EXAMPLE)
    assert config.server == ServerSettings()
    assert config.routing == RoutingSettings()
    assert config.probes == ProbeConfig()
    assert config.catalog == parse_config({}).catalog


def test_example_names_every_setting() -> None:
    raw = tomllib.loads(EXAMPLE.read_text())
    for section, cls in (("server", ServerSettings), ("routing", RoutingSettings)):
        missing = {f.name for f in fields(cls)} - raw[section].keys()
        assert not missing, f"add {section}.{sorted(missing)} to {EXAMPLE.name}"
    missing = {f.name for f in fields(ProbeConfig)} - raw["probes"].keys()
    assert not missing, f"add probes.{sorted(missing)} to {EXAMPLE.name}"
    assert tomllib.loads(uncommented()).keys() == TOP_LEVEL


def test_example_blocks_load_when_uncommented() -> None:
    config = parse_config(tomllib.loads(uncommented()), "example")
    local = config.providers["local"]
    assert (local.kind, local.base_url, local.enabled) == (
        "openai",
        "http://127.0.0.1:8000/v1",
        True,
    )
    model = config.catalog.get("local-qwen-coder")
    assert model is not None and model.deployments[0].provider == "local"
    gpt4o = config.catalog.get("gpt-4o")
    assert gpt4o is not None and (gpt4o.input_price, gpt4o.output_price) == (2.0, 8.0)
    assert config.catalog.get("o3") is None
    assert config.providers["google"].enabled is False


def test_overriding_a_built_in_provider_keeps_enabled_by_credentials() -> None:
    config = parse_config({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}})
    assert config.providers["openai"].enabled is None


def test_the_unit_waits_longer_than_the_whole_drain() -> None:
    (stop,) = service_values("TimeoutStopSec")
    drain = ServerSettings().drain_s + CUT_GRACE_S + SHUTDOWN_TIMEOUT_S
    assert float(stop) > drain
