"""Building a Router for a config: the enabled catalog, its providers and the dispatcher.
Pure: nothing live changes until the Router is swapped in (``proxy.service.reload``);
on a reload the latency table and breakers carry over and unchanged providers are shared.
"""

from __future__ import annotations

from collections.abc import Mapping

from proxy.config import Config
from proxy.http.access_log import access_log_sink
from proxy.providers.base import Provider
from proxy.providers.session import UpstreamSession
from proxy.serve.dispatch import Dispatcher
from proxy.serve.health import Health
from proxy.serve.state import Router
from proxy.service.discovery import aws_credentials_from, enabled_providers, provider_key

from .probing import make_probe_sender, probe_interval
from .providers import build_provider, provider_fingerprint

DEMO_KEY = "sim-key"


def build_router(
    config: Config,
    sessions: Mapping[str, UpstreamSession],
    *,
    environ: Mapping[str, str],
    demo: bool,
    previous: Router | None = None,
) -> Router:
    """The Router for ``config``. On reload, ``previous`` is the live Router: its latency
    table and breakers carry over, and providers built from the same settings and
    credentials are shared instead of rebuilt."""
    enabled = enabled_providers(config, environ)
    catalog = config.catalog.only_providers(enabled)
    providers: dict[str, Provider] = {}
    fingerprints: dict[str, str] = {}
    for name, pc in enabled.items():
        key = DEMO_KEY if demo else provider_key(pc, environ)
        aws = aws_credentials_from(environ, demo) if pc.kind == "bedrock" else None
        fingerprints[name] = provider_fingerprint(pc, key, aws, config.fields)
        if previous is not None and previous.provider_fingerprints.get(name) == fingerprints[name]:
            providers[name] = previous.providers[name]  # a reload that left it unchanged
        else:
            # botocore's read timeout is only a backstop: the relay's own idle deadline
            # (upstream_idle_s) must fire first, so a quiet Bedrock stream ends with the same
            # error event, kind and message as any other provider's.
            read_backstop = config.server.upstream_idle_s + 1.0
            timeouts = (config.server.connect_timeout_s, read_backstop)
            providers[name] = build_provider(pc, key, sessions, aws, timeouts, config.fields)
    if previous is None:
        health = Health.create(
            catalog,
            config.probes.half_life_s,
            config.breaker,
            p90_weight=config.probes.p90_weight,
            probe_interval_s=probe_interval(config, catalog),
            shift_samples=config.probes.shift_samples,
        )
    else:
        # Shared, and still pointed at the live catalog: the swap repoints it.
        health = previous.health
    dispatcher = Dispatcher(providers, health, config.routing, config.server, config.hedging)
    router = Router(config, catalog, providers, health, dispatcher, demo=demo)
    router.provider_fingerprints = fingerprints
    router.probe_loop = make_probe_sender(router)
    router.sinks.append(access_log_sink)
    return router
