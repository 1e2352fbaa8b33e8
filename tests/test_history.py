"""The status page's history (proxy/status/history.py) and GET /v1/router/history over a real socket:
what it counts, who may read it, and that it never shows a key or its digest."""

from __future__ import annotations

import re
from typing import Any

import aiohttp
import openai
import pytest

from proxy.config import ConfigError, parse_config
from proxy.http.auth import hash_key
from proxy.sim.script import Fault
from proxy.status.history import HISTORY, POINTS, History, _worst_state
from tests.conftest import Proxy, StartProxy

ADMIN, CLIENT = "sk-history-admin-1", "sk-history-client-2"
KEYS = {
    "keys": [
        {"id": "ops", "sha256": hash_key(ADMIN), "admin": True},
        {"id": "autocomplete", "sha256": hash_key(CLIENT), "daily_usd": 5.0},
    ]
}
MSG = [{"role": "user", "content": "say something"}]


async def get(proxy: Proxy, path: str, key: str | None) -> tuple[int, Any, str]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}{path}", headers=headers) as r:
        text = await r.text()
        return r.status, await r.json(content_type=None), text


def by(items: list[dict[str, Any]], field: str) -> dict[str, dict[str, Any]]:
    return {item[field]: item for item in items}


async def test_history_counts_requests_errors_samples_and_spend_per_deployment_model_and_key(
    start_proxy: StartProxy,
) -> None:
    proxy = await start_proxy(KEYS)
    client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=CLIENT, max_retries=0)
    proxy.clients.append(client)
    for _ in range(3):
        chunks = await client.chat.completions.create(model="gpt-5-nano", messages=MSG, stream=True)  # type: ignore[arg-type]
        async for _chunk in chunks:
            pass
    # Fails on openai, falls back to gpt-4o-mini@openrouter.
    proxy.sim.state.set_fault("gpt-4o-mini", Fault(mode="status", status=500))
    await client.chat.completions.create(model="gpt-4o-mini", messages=MSG)  # type: ignore[arg-type]
    with pytest.raises(openai.BadRequestError):  # answered by no deployment
        await client.chat.completions.create(model="auto", messages=[])
    # The background task samples on the 10 s grid too: sums over points are what is exact.
    proxy.app[HISTORY].sample(proxy.router)

    status, body, text = await get(proxy, "/v1/router/history", ADMIN)
    assert status == 200
    assert body["interval_s"] == 10.0 and body["points"] == POINTS
    assert body["times"] == sorted(body["times"]) and body["times"]
    deps = by(body["deployments"], "deployment")
    nano = deps["gpt-5-nano@openai"]
    assert sum(nano["requests"]) == 3
    assert sum(nano["live_samples"]) == 3
    assert sum(nano["errors"]) == 0
    assert nano["ttft_estimate_ms"][-1] is not None and nano["breaker"][-1] == 0
    assert nano["tier"] == "economy"
    assert sum(deps["gpt-4o-mini@openai"]["errors"]) >= 1
    assert sum(deps["gpt-4o-mini@openai"]["requests"]) == 0
    assert sum(deps["gpt-4o-mini@openrouter"]["requests"]) == 1
    assert sum(deps["gpt-4o-mini@openrouter"]["errors"]) == 0
    models = by(body["models"], "model")
    assert sum(models["gpt-5-nano"]["requests"]) == 3
    assert sum(models["gpt-5-nano"]["spend_usd"]) > 0
    assert sum(models["gpt-4o-mini"]["requests"]) == 1
    assert sum(models["(none)"]["requests"]) == 1
    keys = by(body["keys"], "key")
    assert set(keys) == {"ops", "autocomplete"}
    assert sum(keys["autocomplete"]["requests"]) == 5
    assert keys["autocomplete"]["spend_today_usd"] > 0
    assert keys["autocomplete"]["daily_usd"] == 5.0
    assert sum(keys["ops"]["requests"]) == 0
    for secret in (ADMIN, CLIENT, hash_key(ADMIN), hash_key(CLIENT)):
        assert secret not in text

    # Only newer points with ?since=.
    _, newer, _ = await get(proxy, f"/v1/router/history?since={body['times'][-1]}", ADMIN)
    assert newer["times"] == []
    assert all(d["requests"] == [] for d in newer["deployments"])


async def test_a_client_key_reads_its_own_spend_in_the_status_never_another_keys(
    start_proxy: StartProxy,
) -> None:
    """Every key's spend is the admin's data (README: the status page's data needs an admin
    key); /v1/router/status, open to every client key for the latency table, shows a client
    key its own budget line only."""
    other = "sk-history-client-3"
    keys = {"keys": [*KEYS["keys"], {"id": "batch", "sha256": hash_key(other), "daily_usd": 7.0}]}
    proxy = await start_proxy(keys)
    for key in (CLIENT, other):
        client = openai.AsyncOpenAI(base_url=f"{proxy.url}/v1", api_key=key, max_retries=0)
        proxy.clients.append(client)
        await client.chat.completions.create(model="gpt-5-nano", messages=MSG)  # type: ignore[arg-type]

    status, body, text = await get(proxy, "/v1/router/status", CLIENT)
    assert status == 200 and body["deployments"]
    assert set(body["spend"]["keys"]) == {"autocomplete"}, body["spend"]
    assert body["spend"]["keys"]["autocomplete"]["today_usd"] > 0
    assert "batch" not in text
    status, body, _ = await get(proxy, "/v1/router/status", ADMIN)
    assert status == 200
    assert set(body["spend"]["keys"]) == {"autocomplete", "batch"}, body["spend"]


@pytest.mark.parametrize(
    ("key", "status", "code"),
    [
        pytest.param(None, 401, "missing_api_key", id="no-key"),
        pytest.param(CLIENT, 403, "admin_key_required", id="client-key"),
    ],
)
async def test_history_needs_an_admin_key_when_keys_are_configured(
    start_proxy: StartProxy, key: str | None, status: int, code: str
) -> None:
    proxy = await start_proxy(KEYS)
    got, body, _ = await get(proxy, "/v1/router/history", key)
    assert got == status
    assert body["error"]["code"] == code


async def test_the_page_itself_is_open_and_holds_no_data(start_proxy: StartProxy) -> None:
    proxy = await start_proxy(KEYS)
    async with aiohttp.ClientSession() as s, s.get(f"{proxy.url}/status") as r:
        assert r.status == 200
        assert r.content_type == "text/html"
        csp = r.headers["Content-Security-Policy"]
        html = await r.text()
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp
    # Self-contained: nothing is loaded from anywhere else.
    assert "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "https://" not in html and "@import" not in html and '<link rel="stylesheet"' not in html
    assert "gpt-5-nano" not in html


async def test_since_must_be_a_number(start_proxy: StartProxy) -> None:
    proxy = await start_proxy()
    got, body, _ = await get(proxy, "/v1/router/history?since=yesterday", None)
    assert got == 400
    assert body["error"]["param"] == "since"


async def test_status_rows_carry_the_fast_rank_and_lose_it_when_the_breaker_opens(
    proxy: Proxy,
) -> None:
    _, body, _ = await get(proxy, "/v1/router/status", None)
    rows = by(body["deployments"], "deployment")
    ranks = sorted(r["fast_rank"] for r in rows.values())
    assert ranks == list(range(1, len(rows) + 1))
    first = next(k for k, r in rows.items() if r["fast_rank"] == 1)
    for _ in range(proxy.router.config.breaker.consecutive_failures):
        proxy.router.health.failure(first, "server")
    _, body, _ = await get(proxy, "/v1/router/status", None)
    rows = by(body["deployments"], "deployment")
    assert rows[first]["breaker"] == "open" and rows[first]["fast_rank"] is None
    assert sorted(r["fast_rank"] for r in rows.values() if r["fast_rank"]) == list(
        range(1, len(rows))
    )


async def test_the_rings_keep_one_hour_oldest_first(proxy: Proxy) -> None:
    clock = [1_000_000.0]
    history = History(wall=lambda: clock[0])
    for _ in range(POINTS + 25):
        clock[0] += 10.0
        history.sample(proxy.router)
    payload = history.payload(proxy.router)
    assert len(payload["times"]) == POINTS
    assert payload["times"][0] == 1_000_000.0 + 10.0 * 26
    assert payload["times"][-1] == clock[0]
    assert all(len(d["ttft_estimate_ms"]) == POINTS for d in payload["deployments"])


@pytest.mark.parametrize(
    ("now", "changes", "since", "worst"),
    [
        pytest.param("closed", [], 100.0, 0, id="quiet"),
        pytest.param("open", [(105.0, "open")], 100.0, 2, id="opened-in-interval"),
        pytest.param(
            "closed",
            [(101.0, "open"), (103.0, "half_open"), (104.0, "closed")],
            100.0,
            2,
            id="opened-and-closed-between-samples",
        ),
        pytest.param(
            "half_open", [(50.0, "open"), (99.0, "half_open")], 100.0, 1, id="half-open-all-along"
        ),
        pytest.param("closed", [(50.0, "open"), (60.0, "closed")], 100.0, 0, id="old-opening"),
        pytest.param("open", [], None, 2, id="first-sample"),
    ],
)
def test_a_point_records_the_worst_breaker_state_of_its_interval(
    now: str, changes: list[tuple[float, str]], since: float | None, worst: int
) -> None:
    assert _worst_state(now, changes, since) == worst


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param({"admin": "yes"}, "keys[0].admin", id="not-a-boolean"),
        pytest.param({"admn": True}, "keys[0].admn: unknown key", id="misspelt"),
    ],
)
def test_the_admin_flag_is_checked_like_every_key_setting(
    entry: dict[str, Any], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        parse_config({"keys": [{"id": "ops", "sha256": hash_key(ADMIN), **entry}]})
    config = parse_config({"keys": [{"id": "ops", "sha256": hash_key(ADMIN), "admin": True}]})
    assert config.keys[0].admin is True
