"""``serve --demo``: the simulated providers started beside the router, and every provider
pointed at them. Imported only when the demo is asked for."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import replace

from aiohttp import web

from proxy.catalog import Catalog
from proxy.config import Config
from proxy.errors import SimPortError
from proxy.sim.launch import start_sim
from proxy.sim.script import Profile
from proxy.sim.server import SimState

SIM = web.AppKey("sim", SimState)
SIM_URL = web.AppKey("sim_url", str)


def demo_config(config: Config, sim_url: str, ca_file: str = "") -> Config:
    """Every provider pointed at the local simulator (unless the config disabled it); the
    catalog is unchanged. ``ca_file``: the simulator's CA when it serves TLS."""
    providers = {}
    for name, pc in config.providers.items():
        on = pc.enabled is not False
        pc = replace(pc, ca_file=ca_file or pc.ca_file)
        if pc.kind in ("openai", "mistral"):
            providers[name] = replace(pc, base_url=f"{sim_url}/v1", enabled=on)
        elif pc.kind == "anthropic":
            providers[name] = replace(pc, base_url=sim_url, enabled=on)
        else:
            providers[name] = replace(
                pc, endpoint_url=sim_url, region=pc.region or "us-east-1", enabled=on
            )
    return config.with_providers(providers)


def demo_profiles(catalog: Catalog) -> dict[str, Profile]:
    """Simulated latency per upstream id, from each deployment's nominal figures."""
    profiles = {}
    for m in catalog.models:
        gap = 1000.0 / m.tokens_per_second if m.tokens_per_second > 0 else 10.0
        for d in m.deployments:
            profiles[d.upstream_id] = Profile(ttft_ms=d.nominal_ttft_ms, gap_ms=gap, tokens=24)
    return profiles


def sim_ctx(scale: float, port: int) -> Callable[[web.Application], AsyncIterator[None]]:
    """A ``cleanup_ctx`` entry: the simulator, up before the router is built."""

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        state = SimState(scale=scale)
        try:
            runner, url = await start_sim(state, port=port)
        except OSError as exc:
            raise SimPortError(exc) from exc
        app[SIM], app[SIM_URL] = state, url
        try:
            yield
        finally:
            await runner.cleanup()

    return ctx


def demo_build(app: web.Application) -> Callable[[Config], Config]:
    """What building a router for ``config`` does in the demo: the simulator learns each
    model's latency profile, and every provider points at it."""
    state, url = app[SIM], app[SIM_URL]

    def prepare(config: Config) -> Config:
        state.profiles.update(demo_profiles(config.catalog))
        # Deployments sent a FIM template stand for servers that take no suffix.
        state.no_suffix.update(
            d.upstream_id for d in config.catalog.deployments() if d.fim_template
        )
        return demo_config(config, url)

    return prepare
