"""The probe loop's sender: the smallest streaming request per deployment, sent through the
live adapters, and the probe interval stretched to fit the daily probe-spend cap."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import replace
from typing import Any

from probes.deadline import Deadline
from probes.kinds import Endpoint
from probes.loop import ProbeFailed, ProbeLoop, paced_interval_s
from proxy.catalog import Catalog, Deployment, Model
from proxy.config import Config, ProviderConfig
from proxy.providers.base import UpstreamError, UpstreamRequest, UpstreamStream
from proxy.serve.dispatch import FIRST_TOKEN_CHECK_S, first_content
from proxy.serve.relay import SSERelay
from proxy.serve.state import Router

log = logging.getLogger("model_router")

# What a probe is billed: "ping" in a chat template is ~8 input tokens, and 1 output token.
PROBE_TOKENS = (8, 1)


def probe_costs(catalog: Catalog) -> dict[str, float]:
    """Estimated USD per probe, per deployment key, from catalog prices."""
    return {d.key: m.cost_usd(*PROBE_TOKENS) for m in catalog.models for d in m.deployments}


def probe_interval(config: Config, catalog: Catalog) -> float:
    """The configured interval, stretched so a full day of probing fits the spend cap."""
    pc = config.probes
    per_round = sum(probe_costs(catalog).values())
    return paced_interval_s(per_round, pc.interval_s, pc.max_daily_spend_usd)


def probe_body(model: Model, d: Deployment, provider: ProviderConfig | None) -> dict[str, Any]:
    """The smallest streaming request that yields a first token."""
    body: dict[str, Any] = {"model": d.upstream_id, "stream": True}
    body["stream_options"] = {"include_usage": True}
    if "chat" in model.capabilities:
        body["messages"] = [{"role": "user", "content": "ping"}]
        # OpenAI's reasoning models refuse max_tokens; everywhere else (DeepSeek, and
        # OpenAI-compatible hosts) max_tokens is the one understood.
        official = provider is not None and provider.name == "openai"
        body["max_completion_tokens" if official else "max_tokens"] = 1
    else:
        body["prompt"] = "ping"
        body["max_tokens"] = 1
    return body


# How long a probe reads on after its first token so its connection goes back to the pool:
# a max_tokens=1 answer has a finish chunk, a usage chunk and [DONE] left.
PROBE_DRAIN_S = 1.0


async def drain(upstream: UpstreamStream, relay: SSERelay) -> None:
    """Read a probe's answer to its end (briefly) so its connection is pooled, not closed."""
    if relay.done:
        return
    with contextlib.suppress(TimeoutError, UpstreamError):
        async with asyncio.timeout(PROBE_DRAIN_S):
            async for chunk in upstream:
                relay.feed(chunk)


def make_probe_sender(router: Router) -> ProbeLoop | None:
    """The probe loop, handed a send-probe callable that uses the live adapters.

    It shares the adapters' connection pools with live traffic (so it measures what live
    requests see) but no queue or lock: the pools are unbounded and the loop's concurrency
    cap is its own.
    """
    pc = router.config.probes
    if not pc.enabled:
        return None
    by_key = {d.key: (m, d) for m in router.catalog.models for d in m.deployments}

    async def send(key: str) -> float:
        model, d = by_key[key]
        endpoint: Endpoint = "chat" if "chat" in model.capabilities else "completions"
        body = probe_body(model, d, router.config.providers.get(d.provider))
        request = UpstreamRequest(endpoint, d.upstream_id, body, True, fim_template=d.fim_template)
        loop = asyncio.get_running_loop()
        started = loop.time()
        upstream: UpstreamStream | None = None
        # A Deadline, not asyncio.timeout: time the process was stopped is not the upstream's.
        timer = Deadline(started + pc.timeout_s, min(pc.timeout_s, FIRST_TOKEN_CHECK_S))
        try:
            async with timer:
                upstream = await router.providers[d.provider].stream(request)
                relay = SSERelay(False, model.cost_usd)
                await first_content(upstream, relay)
                paused_s = timer.paused()
            ttft_ms = (loop.time() - started - paused_s) * 1000
            await drain(upstream, relay)
        except UpstreamError as exc:
            raise ProbeFailed(exc.kind, exc.retry_after, exc.message) from None
        except TimeoutError:
            raise ProbeFailed(
                "timeout", None, f"no first token within {pc.timeout_s:g} s"
            ) from None
        finally:
            if upstream is not None:
                await upstream.aclose()
        return ttft_ms

    # The [probes] table is the loop's own settings; only the interval is paced to the cap.
    settings = replace(pc, interval_s=probe_interval(router.config, router.catalog))
    costs = probe_costs(router.catalog)
    interval = settings.interval_s
    if interval > pc.interval_s:
        log.info(
            "probing every %.0f s instead of %g s to keep %d deployments within "
            "max_daily_spend_usd=%g",
            interval,
            pc.interval_s,
            len(costs),
            pc.max_daily_spend_usd,
        )
    return ProbeLoop(settings, send, router.health.table, router.health.board, cost_per_probe=costs)
