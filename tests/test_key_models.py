"""What a key limited to some tiers or models sees and gets. Real sockets, the OpenAI SDK."""

from __future__ import annotations

from tests.conftest import Proxy, StartProxy
from tests.test_auth import ALPHA, MSG, key, keyed, sdk, upstream_calls


def tier_of(proxy: Proxy, model_id: str) -> str:
    model = proxy.router.catalog.get(model_id)
    assert model is not None
    return model.tier


async def test_escalation_stays_within_the_keys_tiers(start_proxy: StartProxy) -> None:
    proxy = await keyed(start_proxy, key("eco", ALPHA, allowed_tiers=["economy"]))
    raw = await sdk(proxy, ALPHA).chat.completions.with_raw_response.create(
        model="auto:economy",
        messages=MSG,  # type: ignore[arg-type]
        max_tokens=2,
        extra_body={"escalate": True},
    )
    assert raw.headers["x-router-escalated"] == "none (standard: model_not_allowed)"
    assert tier_of(proxy, raw.headers["x-router-model"]) == "economy"
    assert upstream_calls(proxy) == 1
