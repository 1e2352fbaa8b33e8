"""Config: TOML -> dataclasses, unknown keys named by path; the CLI's refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from proxy.config import ConfigError, parse_config


@pytest.mark.parametrize(
    ("data", "path"),
    [
        pytest.param({"sever": {}}, "sever", id="top-level-typo"),
        pytest.param({"server": {"prot": 1}}, "server.prot", id="server-key-typo"),
        pytest.param({"server": {"port": "80"}}, "server.port", id="server-wrong-type"),
        pytest.param({"routing": {"max_attempts": 0}}, "routing.max_attempts", id="zero-attempts"),
        pytest.param(
            {"routing": {"ttft_deadline_ms": {"speedy": 5}}},
            "routing.ttft_deadline_ms.speedy",
            id="deadline-unknown-prefer",
        ),
        pytest.param(
            {"providers": {"openai": {"api_key": "sk-x"}}},
            "providers.openai.api_key",
            id="inline-key-refused",
        ),
        pytest.param(
            {"providers": {"mine": {"base_url": "http://x"}}},
            "providers.mine.kind",
            id="new-provider-needs-kind",
        ),
        pytest.param(
            {"overrides": {"gpt-4o": {"price": 1}}},
            "overrides.gpt-4o.price",
            id="override-key-typo",
        ),
        pytest.param(
            {"overrides": {"gpt-99": {"tier": "economy"}}},
            "overrides.gpt-99",
            id="override-unknown-model",
        ),
        pytest.param({"models": [{"id": "x"}]}, "models[0]", id="added-model-incomplete"),
        pytest.param({"probes": {"interval_s": -1}}, "probes.interval_s", id="negative-interval"),
    ],
)
def test_invalid_config_names_the_offending_key(data: dict[str, Any], path: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert str(err.value).startswith(path), str(err.value)


def test_overrides_change_a_model_and_can_disable_one() -> None:
    cfg = parse_config(
        {
            "overrides": {
                "gpt-4o": {"input_price": 0.01, "tier": "economy"},
                "gpt-4.1": {"enabled": False},
            }
        }
    )
    m = cfg.catalog.get("gpt-4o")
    assert m is not None and m.input_price == 0.01 and m.tier == "economy"
    assert cfg.catalog.get("gpt-4.1") is None


def test_user_provider_and_model_are_added() -> None:
    cfg = parse_config(
        {
            "providers": {
                "local": {
                    "kind": "openai",
                    "base_url": "http://127.0.0.1:9/v1",
                    "api_key_env": "LOCAL_KEY",
                }
            },
            "models": [
                {
                    "id": "my-llama",
                    "tier": "economy",
                    "context_length": 8192,
                    "max_output_tokens": 2048,
                    "input_price": 0,
                    "output_price": 0,
                    "pricing_source": "self-hosted",
                    "capabilities": ["chat"],
                    "quality": {"value": 30, "source": "guess", "date": "2026-01"},
                    "coding": {"value": 10, "source": "guess", "date": "2026-01"},
                    "nominal_ttft_ms": 100,
                    "tokens_per_second": 50,
                    "deployments": [{"provider": "local", "upstream_id": "llama"}],
                }
            ],
        }
    )
    assert cfg.providers["local"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.catalog.get("my-llama") is not None


def test_built_in_provider_base_url_can_be_overridden() -> None:
    cfg = parse_config({"providers": {"openai": {"base_url": "http://127.0.0.1:9/v1"}}})
    assert cfg.providers["openai"].base_url == "http://127.0.0.1:9/v1"
    assert cfg.providers["openai"].api_key_env == "OPENAI_API_KEY"
    assert cfg.providers["openai"].enabled is None


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.endswith("_API_KEY") and not k.startswith("AWS_")
    }
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        capture_output=True,
        text=True,
        env={**clean, **(env or {})},
        timeout=60,
    )


def test_check_config_lists_enabled_models(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[server]\nport = 9000\n")
    out = cli("check-config", str(path), env={"OPENAI_API_KEY": "sk-test"})
    assert out.returncode == 0, out.stderr
    assert "gpt-4o-mini" in out.stdout and "providers with credentials: openai" in out.stdout
    assert "claude-opus-4-5" not in out.stdout.split("providers with credentials")[1]


def test_check_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text("[routing]\nmax_attempt = 2\n")
    out = cli("check-config", str(path))
    assert out.returncode == 2 and "routing.max_attempt: unknown key" in out.stderr


def test_serve_without_credentials_refuses_and_says_how_to_configure() -> None:
    out = cli("serve", "--port", "0")
    assert out.returncode == 2
    assert (
        "OPENAI_API_KEY" in out.stderr
        and "ANTHROPIC_API_KEY" in out.stderr
        and "--demo" in out.stderr
    )
    assert "ready on" not in out.stdout


@pytest.mark.parametrize(
    ("url", "says"),
    [
        pytest.param("http://127.0.0.1:6379", "the scheme must be one of", id="scheme"),
        pytest.param("redis://:hunter2@", "no host", id="no-host"),
        pytest.param("rediss://u:hunter2@h:99999/0", "not a valid URL", id="port"),
        pytest.param("redis://u:hunter2@h/zero", "database number", id="db"),
    ],
)
def test_check_config_names_a_malformed_redis_url_without_its_password(
    tmp_path: Path, url: str, says: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[cluster]\nredis_url = "{url}"\n')
    out = cli("check-config", str(path))
    assert out.returncode == 2
    assert "cluster.redis_url:" in out.stderr and says in out.stderr
    assert "hunter2" not in out.stderr


# redis-py reads options from the URL's query; one it cannot use made `serve` die with a
# traceback at start while check-config called the file valid.
BAD_QUERIES = [
    pytest.param("redis://u:hunter2@127.0.0.1:6379/0?db=x", "'db'", id="db-not-a-number"),
    pytest.param("redis://u:hunter2@127.0.0.1:6379/0?foo=bar", "'foo'", id="unknown-option"),
    pytest.param(
        "redis://u:hunter2@127.0.0.1:6379/0?ssl_cert_reqs=none", "ssl_cert_reqs", id="tls-opt"
    ),
    pytest.param("redis://u:hunter2@127.0.0.1:6379/0?protocol=9", "protocol", id="protocol"),
]


@pytest.mark.parametrize(("url", "says"), BAD_QUERIES)
def test_check_config_names_a_redis_url_option_redis_py_cannot_use(
    tmp_path: Path, url: str, says: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[cluster]\nredis_url = "{url}"\n')
    out = cli("check-config", "--demo", str(path))
    assert out.returncode == 2, out.stdout
    assert "cluster.redis_url:" in out.stderr and says in out.stderr, out.stderr
    assert "hunter2" not in out.stderr + out.stdout


@pytest.mark.parametrize(("url", "says"), BAD_QUERIES[:2])
def test_serve_refuses_a_redis_url_option_redis_py_cannot_use_in_one_line(
    tmp_path: Path, url: str, says: str
) -> None:
    path = tmp_path / "config.toml"
    path.write_text(f'[probes]\nenabled = false\n[cluster]\nredis_url = "{url}"\n')
    out = cli("serve", "--demo", "--port", "0", "--config", str(path))
    assert out.returncode == 2, out.stderr[-2000:]
    assert "cluster.redis_url:" in out.stderr and says in out.stderr
    assert "Traceback" not in out.stderr and "hunter2" not in out.stderr
    assert "ready on" not in out.stdout


def test_a_redis_url_with_options_redis_py_takes_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    url = "rediss://u:hunter2@127.0.0.1:6379/0?ssl_cert_reqs=none&socket_keepalive=true"
    path.write_text(f'[cluster]\nredis_url = "{url}"\n')
    out = cli("check-config", "--demo", str(path))
    assert out.returncode == 0, out.stderr
    assert "hunter2" not in out.stderr + out.stdout


@pytest.mark.parametrize(
    "bedrock, expected",
    [
        pytest.param({}, "us.anthropic.claude-haiku-4-5-20251001-v1:0", id="default-us-east-1"),
        pytest.param(
            {"region": "eu-central-1"}, "eu.anthropic.claude-haiku-4-5-20251001-v1:0", id="eu"
        ),
        pytest.param(
            {"region": "ap-southeast-2"},
            "apac.anthropic.claude-haiku-4-5-20251001-v1:0",
            id="apac",
        ),
        pytest.param(
            {"region": "eu-west-1", "inference_profile": "none"},
            "us.anthropic.claude-haiku-4-5-20251001-v1:0",
            id="explicit-none",
        ),
        pytest.param(
            {"region": "ap-northeast-1", "inference_profile": "jp"},
            "jp.anthropic.claude-haiku-4-5-20251001-v1:0",
            id="explicit-jp",
        ),
    ],
)
def test_bedrock_inference_profiles_follow_the_region(
    bedrock: dict[str, Any], expected: str
) -> None:
    config = parse_config({"providers": {"bedrock": bedrock}})
    model = config.catalog.get("claude-haiku-4-5")
    assert model is not None
    (dep,) = [d for d in model.deployments if d.provider == "bedrock"]
    assert dep.upstream_id == expected
    # Ids that are not US profiles (in-region model ids) are left as they are.
    qwen = config.catalog.get("qwen3-32b")
    assert qwen is not None and qwen.deployments[0].upstream_id == "qwen.qwen3-32b-v1:0"


def test_a_malformed_inference_profile_names_the_key() -> None:
    with pytest.raises(ConfigError, match=r"providers.bedrock.inference_profile"):
        parse_config({"providers": {"bedrock": {"inference_profile": "eu."}}})
