"""Provider adapters built by kind: a table from ``kind`` to its implementation (imported
only when a provider of that kind is configured), the shared client sessions, and a
fingerprint that lets a reload keep the adapters whose settings did not change."""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Mapping
from typing import Any

import aiohttp

from proxy.config import Config, ProviderConfig
from proxy.decide.fields import FieldPolicy
from proxy.providers.base import Provider

# kind -> "module:Class"; each takes (name, settings...) as its ``build`` below passes them.
IMPLEMENTATIONS = {
    "openai": "proxy.providers.openai:OpenAIProvider",
    "anthropic": "proxy.providers.anthropic:AnthropicProvider",
    "bedrock": "proxy.providers.bedrock:BedrockProvider",
}
# The client session each HTTP wire family shares (Bedrock brings its own aioboto3 client).
SESSION_OF = {"openai": "openai", "anthropic": "anthropic"}


def implementation(kind: str) -> Any:
    module, _, cls = IMPLEMENTATIONS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_provider(
    pc: ProviderConfig,
    key: str | None,
    sessions: Mapping[str, aiohttp.ClientSession],
    aws_credentials: dict[str, str] | None,
    timeouts: tuple[float, float] = (5.0, 60.0),
    fields: FieldPolicy | None = None,
) -> Provider:
    cls = implementation(pc.kind)
    provider: Provider
    if pc.kind == "openai":
        # The extra body fields this provider takes ([providers.x] extra_body_fields).
        forwarded = (fields or FieldPolicy.build((), {pc.name: pc.extra_body_fields})).forwarded
        provider = cls(
            pc.name,
            base_url=pc.base_url,
            api_key=key or "",
            session=sessions[SESSION_OF[pc.kind]],
            fields=forwarded.get(pc.name),
        )
        return provider
    if pc.kind in SESSION_OF:
        session = sessions[SESSION_OF[pc.kind]]
        provider = cls(pc.name, base_url=pc.base_url, api_key=key or "", session=session)
        return provider
    provider = cls(
        pc.name,
        region=pc.region,
        endpoint_url=pc.endpoint_url or None,
        credentials=aws_credentials,
        connect_timeout_s=timeouts[0],
        read_timeout_s=timeouts[1],
    )
    return provider


def make_session(config: Config) -> aiohttp.ClientSession:
    # No pool limit: 512 concurrent streams must not queue behind aiohttp's default of 100.
    connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=config.server.connect_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout)


def provider_fingerprint(
    pc: ProviderConfig,
    key: str | None,
    aws_credentials: Mapping[str, str] | None,
    fields: FieldPolicy | None = None,
) -> str:
    """A digest of everything a provider is built from; secrets enter only hashed."""
    forwarded = fields.forwarded.get(pc.name, {}) if fields is not None else {}
    allow = sorted((e, sorted(f)) for e, f in forwarded.items())
    material = repr((pc, key, sorted((aws_credentials or {}).items()), allow))
    return hashlib.sha256(material.encode()).hexdigest()
