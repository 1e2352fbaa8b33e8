"""An error answer built from one deployment's failure says which deployment gave it, as a
success would: ``x-router-model``, ``x-router-provider``, ``x-router-attempts`` and the
reason in its headers, the model and provider in its message (after the upstream's own), and
both in the access and usage logs. A relayed 4xx (the request's fault: no fallback), a 429
and a refusal of the router's credentials (502); failures of several deployments list them
all and name none. The proxy is the real app, the upstream a small aiohttp app on
127.0.0.1 (the simulator for the last), the clients the OpenAI SDK and raw HTTP."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import openai
import orjson
import pytest
from aiohttp import web
from multidict import CIMultiDict

from proxy.sim.script import Fault
from tests.conftest import Proxy, Sim, StartProxy, config_for
from tests.test_fault_matrix import (
    KEY,
    MSG,
    NANO,
    SMALL,
    eventually,
    outcomes,
    serve,
    with_base_url,
)
from tests.test_fault_matrix import settings as row_settings

# What LiteLLM answers a prompt past the model's context window.
TOO_LONG = "litellm.ContextWindowExceededError: prompt is too long for this model"


@dataclass
class Refuser:
    """An upstream that answers every request with ``status`` and an OpenAI error body."""

    status: int = 400
    message: str = TOO_LONG
    got: int = 0


REFUSER = web.AppKey("refuser", Refuser)


async def refuse(request: web.Request) -> web.Response:
    state = request.app[REFUSER]
    await request.read()
    state.got += 1
    error = {"message": state.message, "type": "invalid_request_error", "param": None, "code": None}
    headers = {"Retry-After": "7"} if state.status == 429 else None
    return web.json_response({"error": error}, status=state.status, headers=headers)


@pytest.fixture
async def refuser(start_proxy: StartProxy, sim: Sim) -> AsyncIterator[tuple[Refuser, Proxy]]:
    """The proxy with NANO's provider (openai) pointed at the refuser; SMALL stays on the sim."""
    state = Refuser()
    runner, url = await serve(refuse, REFUSER, state)
    config = with_base_url(config_for(sim.url, row_settings()), "openai", f"{url}/v1")
    yield state, await start_proxy(config=config)
    await runner.cleanup()


async def post(proxy: Proxy, body: dict[str, Any]) -> tuple[int, CIMultiDict[str], dict[str, Any]]:
    """As curl would: the status, the headers (any case) and the JSON body."""
    async with (
        aiohttp.ClientSession() as s,
        s.post(f"{proxy.url}/v1/chat/completions", json=body) as resp,
    ):
        return resp.status, resp.headers.copy(), orjson.loads(await resp.read())


def logged_model(db: Path) -> list[tuple[Any, ...]]:
    if not db.exists():
        return []
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT status, model, provider, attempts FROM usage").fetchall()


@pytest.mark.parametrize("stream", [False, True], ids=["non-stream", "stream"])
async def test_a_relayed_4xx_names_the_deployment_that_rejected_the_request(
    stream: bool, refuser: tuple[Refuser, Proxy], sim: Sim, tmp_path: Path
) -> None:
    state, proxy = refuser
    seen = outcomes(proxy)
    body = {"model": "auto", "models": [NANO, SMALL], "messages": MSG, "stream": stream}
    status, headers, answer = await post(proxy, body)
    assert status == 400 and state.got == 1
    assert sim.state.requests.total() == 0  # the request's fault: no fallback
    assert headers["x-router-model"] == NANO
    assert headers["x-router-provider"] == "openai"
    assert headers["x-router-attempts"] == "1"
    assert headers["x-router-reason"]
    assert headers["x-request-id"]
    error = answer["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "upstream_rejected")
    assert f"{NANO} via openai" in error["message"] and TOO_LONG in error["message"]
    (record,) = seen
    assert (record.status, record.model, record.provider) == (400, NANO, "openai")
    db = tmp_path / "model-router.db"
    await eventually(lambda: bool(logged_model(db)), "a usage row written")
    assert logged_model(db) == [(400, NANO, "openai", 1)]


async def test_the_sdk_reads_the_rejecting_deployment_from_a_400(
    refuser: tuple[Refuser, Proxy],
) -> None:
    _, proxy = refuser
    with pytest.raises(openai.BadRequestError) as info:
        await proxy.client().chat.completions.create(model=NANO, messages=MSG)  # type: ignore[arg-type]
    err = info.value
    assert err.code == "upstream_rejected"
    assert (
        f"{NANO} via openai rejected the request: upstream answered 400: {TOO_LONG}" in err.message
    )
    assert (err.response.headers["x-router-model"], err.response.headers["x-router-provider"]) == (
        NANO,
        "openai",
    )


LEAKY = "Incorrect API key provided: sk-test-up*****0001"


@pytest.mark.parametrize(
    ("upstream", "message", "expected"),
    [
        pytest.param(429, "Rate limit reached for requests", 429, id="429-relayed"),
        pytest.param(401, LEAKY, 502, id="401-is-a-502"),
        pytest.param(403, LEAKY, 502, id="403-is-a-502"),
    ],
)
async def test_a_single_deployments_failure_names_it(
    upstream: int, message: str, expected: int, refuser: tuple[Refuser, Proxy]
) -> None:
    state, proxy = refuser
    state.status, state.message = upstream, message
    seen = outcomes(proxy)
    status, headers, answer = await post(proxy, {"model": NANO, "messages": MSG})
    assert status == expected
    assert (headers["x-router-model"], headers["x-router-provider"]) == (NANO, "openai")
    assert headers["x-router-attempts"] == "1" and headers["x-should-retry"] == "false"
    assert headers["x-router-reason"]
    error = answer["error"]
    assert error["code"] == "upstream_unavailable" and KEY[NANO] in error["message"]
    if upstream == 429:
        assert headers["Retry-After"] == "7" and message in error["message"]
    else:
        assert "sk-test" not in error["message"]  # a refusal of our key is not echoed
    (record,) = seen
    assert (record.status, record.model, record.provider) == (expected, NANO, "openai")


async def test_failures_of_several_deployments_list_them_all_and_name_none(
    start_proxy: StartProxy, sim: Sim
) -> None:
    proxy = await start_proxy(row_settings())
    sim.state.set_fault("*", Fault(mode="status", status=500))
    seen = outcomes(proxy)
    body = {"model": NANO, "models": [SMALL], "messages": MSG}
    status, headers, answer = await post(proxy, body)
    assert status == 502 and headers["x-router-attempts"] == "2"
    assert "x-router-model" not in headers and headers["x-router-reason"]
    message = answer["error"]["message"]
    assert message.startswith("all 2 attempt(s) failed: ")
    assert KEY[NANO] in message and KEY[SMALL] in message
    (record,) = seen
    assert (record.status, record.model, record.attempts) == (502, None, 2)
