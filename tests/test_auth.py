"""Client API keys and per-key limits, upstream hygiene and secrets kept out of logs, over real
sockets: the proxy app, the simulated providers and the OpenAI SDK."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web

from proxy.accounting.ledger import ACCOUNTING
from proxy.config import ConfigError, parse_config
from proxy.http.auth import hash_key
from proxy.http.cross_site import is_loopback
from proxy.sim.anthropic_api import add_anthropic_routes
from proxy.sim.bedrock_api import add_bedrock_routes
from proxy.sim.launch import bound_port, make_sim_app
from proxy.sim.script import Fault, Profile
from proxy.sim.server import SimState
from tests.conftest import (
    UPSTREAM_ENV,
    Proxy,
    Sim,
    StartProxy,
    config_for,
    server_log,
    spawn_server,
    stop_server,
)
from tests.openapi_schema import assert_valid

ALPHA = "mr-test-client-alpha-0101"
BETA = "mr-test-client-beta-0202"
MSG = [{"role": "user", "content": "say something"}]


def key(key_id: str, secret: str, **limits: Any) -> dict[str, Any]:
    return {"id": key_id, "sha256": hash_key(secret), **limits}


async def keyed(start_proxy: StartProxy, *keys: dict[str, Any], **extra: Any) -> Proxy:
    return await start_proxy({"keys": list(keys), **extra})


def sdk(proxy: Proxy, secret: str) -> openai.AsyncOpenAI:
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=secret, max_retries=0)
    proxy.clients.append(client)
    return client


async def call(
    proxy: Proxy,
    body: Any,
    secret: str | None = None,
    path: str = "/v1/chat/completions",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    hdrs = dict(headers or {})
    if secret is not None:
        hdrs["Authorization"] = f"Bearer {secret}"
    async with (
        aiohttp.ClientSession() as s,
        s.request(
            "GET" if body is None else "POST",
            proxy.url + path,
            data=None if body is None else orjson.dumps(body),
            headers=hdrs,
        ) as resp,
    ):
        raw = await resp.read()
    is_json = resp.content_type == "application/json"
    return resp.status, dict(resp.headers), orjson.loads(raw) if is_json else raw


def upstream_calls(proxy: Proxy) -> int:
    return sum(proxy.sim.state.requests.values())


def upstream_id(proxy: Proxy, model: str) -> str:
    m = proxy.router.catalog.get(model)
    assert m is not None
    return m.deployments[0].upstream_id


# --- keys and the Bearer check ---------------------------------------------------------------


def test_hash_key_reads_stdin_and_prints_the_sha256_digest() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "proxy", "hash-key"],
        input=ALPHA + "\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == hashlib.sha256(ALPHA.encode()).hexdigest()
    empty = subprocess.run(
        [sys.executable, "-m", "proxy", "hash-key"],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert empty.returncode == 2 and "no key" in empty.stderr


@pytest.mark.parametrize(
    ("header", "code"),
    [
        pytest.param(None, "missing_api_key", id="no-header"),
        pytest.param("Bearer ", "missing_api_key", id="empty-bearer"),
        pytest.param(f"Basic {ALPHA}", "missing_api_key", id="wrong-scheme"),
        pytest.param(f"Bearer {BETA}", "invalid_api_key", id="unknown-key"),
        pytest.param(f"Bearer {ALPHA}x", "invalid_api_key", id="key-plus-one-char"),
        pytest.param(f"Bearer {hash_key(ALPHA)}", "invalid_api_key", id="the-digest-itself"),
    ],
)
async def test_a_missing_or_wrong_key_gets_401_in_openai_shape_and_nothing_goes_upstream(
    start_proxy: StartProxy, header: str | None, code: str
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA))
    headers = {"Authorization": header} if header is not None else {}
    status, hdrs, payload = await call(proxy, {"model": "auto", "messages": MSG}, headers=headers)
    assert status == 401
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == code
    assert hdrs["WWW-Authenticate"].startswith("Bearer")
    assert ALPHA not in orjson.dumps(payload).decode()
    assert upstream_calls(proxy) == 0


@pytest.mark.parametrize("first", [ALPHA, BETA], ids=["valid-first", "valid-second"])
async def test_two_authorization_headers_are_refused_whichever_comes_first(
    start_proxy: StartProxy, first: str
) -> None:
    """Authorization is a single-valued field: a proxy in front may read the last of two
    while the router read the first, so neither order may authenticate."""
    proxy = await keyed(start_proxy, key("alpha", ALPHA))
    second = BETA if first == ALPHA else ALPHA
    body = orjson.dumps({"model": "auto", "messages": MSG})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + f"Authorization: Bearer {first}\r\nAuthorization: Bearer {second}\r\n".encode()
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, payload = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401"), head
    error = orjson.loads(payload)
    assert_valid("ErrorResponse", error)
    assert error["error"]["code"] == "invalid_api_key"
    assert "Authorization" in error["error"]["message"]
    assert ALPHA.encode() not in raw and BETA.encode() not in raw
    assert upstream_calls(proxy) == 0


async def test_the_sdk_with_the_right_key_is_served_and_with_a_wrong_one_is_refused(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA), key("beta", BETA))
    for secret in (ALPHA, BETA):
        answer = await sdk(proxy, secret).chat.completions.create(model="auto", messages=MSG)  # type: ignore[arg-type]
        assert answer.choices[0].message.content
    with pytest.raises(openai.AuthenticationError) as err:
        await sdk(proxy, "sk-not-a-key").chat.completions.create(model="auto", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "invalid_api_key"
    assert upstream_calls(proxy) == 2


async def test_health_and_readiness_are_open_while_models_and_status_need_a_key(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA))
    for path in ("/healthz", "/readyz"):
        assert (await call(proxy, None, path=path))[0] == 200
    for path in ("/v1/models", "/v1/router/status", "/metrics", "/no/such/path"):
        assert (await call(proxy, None, path=path))[0] == 401, path
    assert (await call(proxy, None, ALPHA, path="/v1/models"))[0] == 200
    assert (await call(proxy, None, ALPHA, path="/v1/router/status"))[0] == 200


async def test_without_keys_configured_requests_need_no_key(proxy: Proxy) -> None:
    status, _, _ = await call(proxy, {"model": "auto", "messages": MSG})
    assert status == 200


KEY_ERRORS: list[Any] = [
    pytest.param(
        {"id": "a", "sha256": "0" * 64, "rpms": 5}, "keys[0].rpms: unknown key", id="unknown-field"
    ),
    pytest.param({"sha256": "0" * 64}, "keys[0].id: required", id="no-id"),
    pytest.param(
        {"id": "a", "sha256": "sk-live-plaintext"}, "keys[0].sha256: expected", id="plaintext-key"
    ),
    pytest.param(
        {"id": "a", "sha256": "0" * 64, "allowed_tiers": ["gold"]},
        "keys[0].allowed_tiers: 'gold'",
        id="unknown-tier",
    ),
    pytest.param(
        {"id": "a", "sha256": "0" * 64, "allowed_models": ["gpt-99"]},
        "keys[0].allowed_models: no catalog model named 'gpt-99'",
        id="unknown-model",
    ),
    pytest.param(
        {"id": "a", "sha256": "0" * 64, "rpm": -1},
        "keys[0].rpm: must not be negative",
        id="negative-rpm",
    ),
    pytest.param(
        {"id": "a", "sha256": "0" * 64, "tpm": "lots"},
        "keys[0].tpm: expected int",
        id="tpm-not-int",
    ),
]


@pytest.mark.parametrize(("table", "message"), KEY_ERRORS)
def test_a_bad_key_table_is_a_config_error_naming_its_path(
    table: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config({"keys": [table]})
    assert str(err.value).startswith(message)
    assert "plaintext" not in str(err.value)  # the sha256 value is never echoed


def test_keys_parse_to_digests_with_aliases_resolved_and_duplicates_refused() -> None:
    cfg = parse_config(
        {"keys": [key("a", ALPHA, allowed_models=["gpt-5-nano"], rpm=60, daily_usd=2)]}
    )
    (k,) = cfg.keys
    assert (k.id, k.sha256, k.rpm, k.daily_usd) == ("a", hash_key(ALPHA), 60, 2.0)
    assert k.allowed_models == ("gpt-5-nano",)
    with pytest.raises(ConfigError, match=r"keys\[1\]\.id: same as keys\[0\]"):
        parse_config({"keys": [key("a", ALPHA), key("a", BETA)]})
    with pytest.raises(ConfigError, match=r"keys\[1\]\.sha256: same as keys\[0\]"):
        parse_config({"keys": [key("a", ALPHA), key("b", ALPHA)]})


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("10.0.0.5", False),
        ("router.example.internal", False),
    ],
)
def test_is_loopback(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_serve_refuses_a_non_loopback_address_without_keys(tmp_path: Path) -> None:
    # 192.0.2.1 (TEST-NET-1) is assigned to no interface: past the key check the bind fails,
    # so these tests never listen beyond loopback.
    def serve(*extra: str, config: str | None = None) -> subprocess.CompletedProcess[str]:
        args = ["serve", "--demo", "--host", "192.0.2.1", "--port", "0", *extra]
        if config:
            args += ["--config", config]
        # A state folder of its own: past the checks serve opens its usage log, by default
        # ./model-router.db in the checkout (the one `make serve` uses).
        env = {**os.environ, "STATE_DIRECTORY": str(tmp_path)}
        return subprocess.run(
            [sys.executable, "-m", "proxy", *args],
            capture_output=True,
            text=True,
            timeout=30,
            env=env,
        )

    refused = serve()
    assert refused.returncode == 2
    assert "refusing to serve '192.0.2.1' without client keys" in refused.stderr
    assert "--insecure-no-auth" in refused.stderr
    forced = serve("--insecure-no-auth")
    assert "refusing" not in forced.stderr and "192.0.2.1" in forced.stderr  # the bind error
    cfg = tmp_path / "keys.toml"
    cfg.write_text(f'[[keys]]\nid = "alpha"\nsha256 = "{hash_key(ALPHA)}"\n')
    keyed_run = serve(config=str(cfg))
    assert "refusing" not in keyed_run.stderr and "192.0.2.1" in keyed_run.stderr
    assert (tmp_path / "model-router.db").exists()  # its usage log was there, not in ./


# --- per-key models and tiers ------------------------------------------------------------


async def test_a_pinned_model_the_key_may_not_use_is_403_naming_it(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    premium = next(m for m in proxy.router.catalog.models if m.tier == "premium")
    status, _, payload = await call(proxy, {"model": premium.id, "messages": MSG}, ALPHA)
    assert status == 403
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["code"] == "model_not_allowed"
    assert payload["error"]["param"] == "model"
    assert premium.id in payload["error"]["message"] and "economy" in payload["error"]["message"]
    # A disallowed model in the fallback list is refused too, not silently skipped.
    economy = next(m for m in proxy.router.catalog.models if m.tier == "economy")
    body = {"model": economy.id, "models": [premium.id], "messages": MSG}
    status, _, payload = await call(proxy, body, ALPHA)
    assert status == 403 and premium.id in payload["error"]["message"]
    assert upstream_calls(proxy) == 0


async def test_auto_routes_only_within_the_keys_tiers_and_an_explicit_other_tier_is_403(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    client = sdk(proxy, ALPHA)
    for model in ("auto:quality", "auto:fast", "auto:coding", "auto:economy"):
        raw = await client.chat.completions.with_raw_response.create(model=model, messages=MSG)  # type: ignore[arg-type]
        chosen = proxy.router.catalog.get(raw.headers["x-router-model"])
        assert chosen is not None and chosen.tier == "economy", model
    with pytest.raises(openai.PermissionDeniedError) as err:
        await client.chat.completions.create(model="auto:premium", messages=MSG)  # type: ignore[arg-type]
    assert err.value.code == "tier_not_allowed" and "premium" in err.value.message
    assert "'auto:economy'" in err.value.message  # says what works
    # A bare auto (standard by default) is narrowed, not refused: tests/test_key_models.py.
    assert upstream_calls(proxy) == 4


async def test_a_key_limited_to_models_gets_the_best_of_them_for_any_intent(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("nano", ALPHA, allowed_models=["gpt-5-nano"]))
    raw = await sdk(proxy, ALPHA).chat.completions.with_raw_response.create(
        model="auto:quality",
        messages=MSG,  # type: ignore[arg-type]
    )
    assert raw.headers["x-router-model"] == "gpt-5-nano"
    status, _, payload = await call(proxy, {"model": "auto:premium", "messages": MSG}, ALPHA)
    assert status == 403 and payload["error"]["code"] == "model_not_allowed"
    assert payload["error"]["param"] == "tier"


# --- per-key rate limits, budget and streams ----------------------------------------------


async def test_rpm_answers_429_with_retry_after_naming_the_limit(start_proxy: StartProxy) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA, rpm=2), key("beta", BETA))
    body = {"model": "gpt-5-nano", "messages": MSG}
    assert [(await call(proxy, body, ALPHA))[0] for _ in range(2)] == [200, 200]
    status, headers, payload = await call(proxy, body, ALPHA)
    assert status == 429
    assert_valid("ErrorResponse", payload)
    assert "rpm limit (2 requests per minute)" in payload["error"]["message"]
    assert int(headers["Retry-After"]) == 30  # one request refills in 60 s / 2
    assert upstream_calls(proxy) == 2
    assert (await call(proxy, body, BETA))[0] == 200  # limits are per key


async def test_tpm_reserves_prompt_plus_max_tokens_and_settles_to_real_usage(
    sim: Sim, start_proxy: StartProxy
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA, tpm=2000))
    sim.state.profiles[upstream_id(proxy, "gpt-5-nano")] = Profile(ttft_ms=5, gap_ms=30, tokens=8)
    big = {"model": "gpt-5-nano", "messages": MSG, "max_tokens": 1500}
    async with aiohttp.ClientSession() as s:
        auth = {"Authorization": f"Bearer {ALPHA}"}
        async with s.post(
            f"{proxy.url}/v1/chat/completions", json={**big, "stream": True}, headers=auth
        ) as stream:
            assert stream.status == 200
            await stream.content.readline()
            # The open stream holds ~1500 tokens of the 2000: another 1500 must wait.
            status, headers, payload = await call(proxy, big, ALPHA)
            assert status == 429
            assert "tpm limit (2000 tokens per minute" in payload["error"]["message"]
            assert int(headers["Retry-After"]) >= 1
            await stream.read()
    # The stream used a few dozen tokens; the rest of its reservation came back.
    status, _, payload = await call(proxy, big, ALPHA)
    assert status == 200, payload
    assert upstream_calls(proxy) == 2


async def test_daily_usd_budget_trips_with_retry_after_until_utc_midnight(
    start_proxy: StartProxy,
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA, daily_usd=1e-9))
    budget = proxy.app[ACCOUNTING].budget
    now = [1_700_000_000.0]  # 2023-11-14 22:13:20 UTC
    budget._clock = lambda: now[0]
    body = {"model": "gpt-5-nano", "messages": MSG}
    assert (await call(proxy, body, ALPHA))[0] == 200
    assert budget.by_key["alpha"] > 1e-9
    status, headers, payload = await call(proxy, body, ALPHA)
    assert status == 429
    assert payload["error"]["code"] == "budget_exceeded"
    assert "daily_usd budget" in payload["error"]["message"]
    assert "00:00 UTC" in payload["error"]["message"]
    assert int(headers["Retry-After"]) == 86_400 - 80_000  # to the next UTC midnight
    assert headers["x-should-retry"] == "false"
    now[0] += 86_400
    assert (await call(proxy, body, ALPHA))[0] == 200
    assert upstream_calls(proxy) == 2


async def test_max_concurrent_streams_caps_open_streams_per_key(
    sim: Sim, start_proxy: StartProxy
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA, max_concurrent_streams=1))
    sim.state.profiles[upstream_id(proxy, "gpt-5-nano")] = Profile(ttft_ms=5, gap_ms=30, tokens=8)
    body = {"model": "gpt-5-nano", "messages": MSG, "stream": True}
    auth = {"Authorization": f"Bearer {ALPHA}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(f"{proxy.url}/v1/chat/completions", json=body, headers=auth) as first:
            await first.content.readline()
            status, headers, payload = await call(proxy, body, ALPHA)
            assert status == 429 and headers["Retry-After"] == "1"
            assert "max_concurrent_streams limit (1 open streams)" in payload["error"]["message"]
            # Non-streaming requests are not streams.
            assert (await call(proxy, {**body, "stream": False}, ALPHA))[0] == 200
            await first.read()
        async with s.post(f"{proxy.url}/v1/chat/completions", json=body, headers=auth) as again:
            assert again.status == 200
            assert (await again.read()).endswith(b"data: [DONE]\n\n")


async def test_a_stream_the_client_abandons_frees_its_slot(
    sim: Sim, start_proxy: StartProxy
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA, max_concurrent_streams=1))
    sim.state.profiles[upstream_id(proxy, "gpt-5-nano")] = Profile(ttft_ms=5, gap_ms=500, tokens=50)
    body = {"model": "gpt-5-nano", "messages": MSG, "stream": True}
    auth = {"Authorization": f"Bearer {ALPHA}"}
    async with aiohttp.ClientSession() as s:
        resp = await s.post(f"{proxy.url}/v1/chat/completions", json=body, headers=auth)
        await resp.content.readline()
        resp.close()  # leave mid-stream
    for _ in range(100):
        status, _, _ = await call(proxy, {**body, "max_tokens": 2}, ALPHA)
        if status == 200:
            break
        await asyncio.sleep(0.02)
    assert status == 200


async def test_the_key_id_not_the_key_is_on_the_outcome_and_in_the_access_log(
    start_proxy: StartProxy, caplog: pytest.LogCaptureFixture
) -> None:
    proxy = await keyed(start_proxy, key("alpha", ALPHA))
    seen: list[str | None] = []
    proxy.router.sinks.append(lambda outcome, _s: seen.append(outcome.key_id))
    caplog.set_level(logging.INFO, logger="model_router")
    await call(proxy, {"model": "auto", "messages": MSG}, ALPHA)
    await call(proxy, {"model": "auto", "messages": MSG}, BETA)  # 401: no outcome
    assert seen == ["alpha"]
    served, refused = [
        orjson.loads(r.getMessage()) for r in caplog.records if r.name == "model_router.access"
    ]
    assert served["key_id"] == "alpha"
    # The refusal has the edge's shorter line: no key id, what was called, why it was refused.
    assert refused["key_id"] is None and refused["status"] == 401
    assert refused["error"] == "invalid_api_key" and refused["path"] == "/v1/chat/completions"
    assert ALPHA not in caplog.text and BETA not in caplog.text


# --- upstream hygiene -------------------------------------------------------------------------


@pytest.fixture
async def full_sim() -> AsyncIterator[Sim]:
    """The simulator speaking all three wire formats (OpenAI, Anthropic, Bedrock)."""
    state = SimState(scale=1.0, default=Profile(ttft_ms=5.0, gap_ms=1.0, tokens=8))
    app = make_sim_app(state)
    add_anthropic_routes(app)
    add_bedrock_routes(app)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield Sim(state, f"http://127.0.0.1:{bound_port(site)}")
    await runner.cleanup()


CLIENT_HEADERS = {
    "x-api-key": "client-x-api-key-0303",
    "Cookie": "session=client-cookie-0404",
    "OpenAI-Organization": "org-client",
    "X-Forwarded-For": "203.0.113.9",
    "anthropic-beta": "client-beta-flag",
}


@pytest.mark.parametrize(
    ("model", "secret_header", "upstream_key"),
    [
        pytest.param(
            "gpt-5-nano", "authorization", f"Bearer {UPSTREAM_ENV['OPENAI_API_KEY']}", id="openai"
        ),
        pytest.param(
            "claude-haiku-4-5", "x-api-key", UPSTREAM_ENV["ANTHROPIC_API_KEY"], id="anthropic"
        ),
    ],
)
async def test_client_credentials_and_cookies_never_reach_the_upstream(
    full_sim: Sim, start_proxy: StartProxy, model: str, secret_header: str, upstream_key: str
) -> None:
    proxy = await start_proxy(config=config_for(full_sim.url, {"keys": [key("alpha", ALPHA)]}))
    status, _, payload = await call(
        proxy, {"model": model, "messages": MSG}, ALPHA, headers=CLIENT_HEADERS
    )
    assert status == 200, payload
    (sent,) = full_sim.state.last_headers.values()
    names = {name.lower() for name in sent}
    assert sent.get(secret_header) or sent.get(secret_header.title()) == upstream_key
    assert {h.lower() for h in CLIENT_HEADERS}.isdisjoint(names - {secret_header})
    assert "cookie" not in names
    everything = orjson.dumps({str(k): v for k, v in sent.items()}).decode()
    for value in (ALPHA, *CLIENT_HEADERS.values()):
        assert value not in everything
    allowed = {
        "host",
        "authorization",
        "x-api-key",
        "anthropic-version",
        "content-type",
        "content-length",
        "user-agent",
        "accept",
        "accept-encoding",
    }
    assert names <= allowed, names - allowed


@pytest.fixture
async def attacker() -> AsyncIterator[tuple[str, list[str]]]:
    """An upstream nobody configured: it records anything that reaches it."""
    hits: list[str] = []

    async def record(request: web.Request) -> web.Response:
        hits.append(request.headers.get("Authorization", ""))
        return web.json_response({"error": {"message": "gotcha"}}, status=500)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{bound_port(site)}", hits
    await runner.cleanup()


@pytest.mark.parametrize("field", ["api_base", "base_url", "api_key", "extra_headers"])
async def test_request_fields_that_steer_the_upstream_are_refused(
    start_proxy: StartProxy, attacker: tuple[str, list[str]], field: str
) -> None:
    proxy = await start_proxy()
    url, hits = attacker
    value: Any = {"Authorization": "x"} if field == "extra_headers" else f"{url}/v1"
    status, _, payload = await call(proxy, {"model": "gpt-5-nano", "messages": MSG, field: value})
    assert status == 400
    assert_valid("ErrorResponse", payload)
    assert payload["error"]["param"] == field
    assert payload["error"]["code"] == "unsupported_parameter"
    assert hits == [] and upstream_calls(proxy) == 0


@pytest.fixture
async def key_echoing_upstream() -> AsyncIterator[str]:
    """An OpenAI-shaped upstream that refuses our key and quotes it back, as providers do."""

    async def refuse(request: web.Request) -> web.Response:
        got = request.headers.get("Authorization", "")
        body = {
            "error": {"message": f"Incorrect API key provided: {got}", "code": "invalid_api_key"}
        }
        return web.json_response(body, status=401)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", refuse)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    yield f"http://127.0.0.1:{bound_port(site)}/v1"
    await runner.cleanup()


async def test_an_upstream_quoting_our_key_back_does_not_pass_it_to_the_client(
    sim: Sim,
    start_proxy: StartProxy,
    key_echoing_upstream: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    cfg = config_for(sim.url)
    providers = dict(cfg.providers)
    providers["openai"] = replace(providers["openai"], base_url=key_echoing_upstream)
    proxy = await start_proxy(config=cfg.with_providers(providers))
    caplog.set_level(logging.DEBUG)
    status, _, payload = await call(proxy, {"model": "gpt-5-nano", "messages": MSG})
    assert status == 502
    assert "refused the router's credentials (HTTP 401)" in payload["error"]["message"]
    assert UPSTREAM_ENV["OPENAI_API_KEY"] not in orjson.dumps(payload).decode()
    assert UPSTREAM_ENV["OPENAI_API_KEY"] not in caplog.text


# --- nothing secret in any log line ---------------------------------------------------------------

PROMPT = "the secret launch code is tangerine-42"


async def test_a_full_request_mix_leaves_no_key_or_prompt_in_any_log_line(
    full_sim: Sim, tmp_path: Path
) -> None:
    sim = full_sim
    providers = "\n".join(
        f'[providers.{name}]\nbase_url = "{sim.url}/v1"\n'
        for name in ("openai", "google", "deepseek")
    )
    config = tmp_path / "router.toml"
    # OpenRouter off, so Anthropic and Bedrock models are served on their own wires.
    config.write_text(
        f'{providers}\n[providers.anthropic]\nbase_url = "{sim.url}"\n'
        f'[providers.bedrock]\nendpoint_url = "{sim.url}"\n'
        "[providers.openrouter]\nenabled = false\n"
        "[probes]\nenabled = false\n"
        "[[keys]]\n"
        f'id = "alpha"\nsha256 = "{hash_key(ALPHA)}"\nrpm = 1000\n'
    )
    env = {
        **UPSTREAM_ENV,
        "MODEL_ROUTER_LOG_LEVEL": "DEBUG",
        "STATE_DIRECTORY": str(tmp_path),
    }
    proc, url = await asyncio.to_thread(
        spawn_server, ["serve", "--config", str(config), "--port", "0"], env
    )
    try:
        client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=ALPHA, max_retries=0)
        msgs = [{"role": "user", "content": PROMPT}]
        nano = "gpt-5-nano"
        async with client:
            for model in ("auto", "auto:fast", "claude-haiku-4-5", "qwen3-32b", nano):
                await client.chat.completions.create(model=model, messages=msgs)  # type: ignore[arg-type]
            stream = await client.chat.completions.create(
                model="auto:cheap",
                messages=msgs,  # type: ignore[arg-type]
                stream=True,
                stream_options={"include_usage": True},
            )
            async for _ in stream:
                pass
            await client.completions.create(model="auto", prompt=PROMPT, suffix=PROMPT)
            # Fallback: the first choice fails before its first byte.
            sim.state.set_fault(nano, Fault(mode="status", status=500, remaining=1))
            await client.chat.completions.create(
                model=nano, messages=msgs, extra_body={"models": ["gpt-5-mini"]}
            )  # type: ignore[arg-type]
            # Every attempt fails; then a mid-stream failure after the first byte.
            sim.state.set_fault("*", Fault(mode="status", status=503))
            with pytest.raises(openai.APIStatusError):
                await client.chat.completions.create(model=nano, messages=msgs)  # type: ignore[arg-type]
            sim.state.set_fault("*", Fault(mode="error_event", after_chunks=1))
            with pytest.raises(openai.APIError):
                async for _ in await client.chat.completions.create(
                    model=nano,
                    messages=msgs,  # type: ignore[arg-type]
                    stream=True,
                ):
                    pass
            sim.state.faults.clear()
            # Refusals: a wrong key, a bad body, a steering field.
            with pytest.raises(openai.AuthenticationError):
                async with openai.AsyncOpenAI(
                    base_url=f"{url}/v1", api_key=BETA, max_retries=0
                ) as wrong:
                    await wrong.chat.completions.create(model="auto", messages=msgs)  # type: ignore[arg-type]
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="auto", messages=msgs, extra_body={"api_key": ALPHA}
                )  # type: ignore[arg-type]
            with pytest.raises(openai.BadRequestError):
                await client.chat.completions.create(
                    model="auto", messages=[{"role": "user", "content": PROMPT, "tool_calls": 5}]
                )  # type: ignore[list-item]
        assert sum(sim.state.requests.values()) >= 9
    finally:
        await asyncio.to_thread(stop_server, proc)
    log = server_log(proc)
    # The log was really captured, at DEBUG.
    assert '{"request_id"' in log and "DEBUG model_router.auth" in log
    secrets = [ALPHA, BETA, hash_key(ALPHA), PROMPT, "tangerine", *UPSTREAM_ENV.values()]
    for secret in secrets:
        assert secret not in log, f"{secret!r} is in the log"
    assert "Traceback" not in log
    assert await asyncio.to_thread(files_holding, tmp_path, secrets, skip=config) == []


def files_holding(root: Path, secrets: list[str], skip: Path) -> list[tuple[str, str]]:
    """(file, secret) for every secret found in a file under ``root`` (a usage database or
    anything else the server wrote there)."""
    found = []
    for path in root.rglob("*"):
        if path.is_file() and path != skip:
            data = path.read_bytes()
            found += [(path.name, s) for s in secrets if s.encode() in data]
    return found
