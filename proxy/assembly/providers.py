"""Provider adapters built by kind: a table from ``kind`` to its implementation (imported
only when a provider of that kind is configured), the shared client sessions, and a
fingerprint that lets a reload keep the adapters whose settings did not change."""

from __future__ import annotations

import hashlib
import importlib
import ssl
from collections.abc import Mapping
from typing import Any

from proxy.config import Config, ProviderConfig
from proxy.decide.fields import FieldPolicy
from proxy.providers.base import Provider
from proxy.providers.session import UpstreamSession
from proxy.serve.warm import Warmer

# kind -> "module:Class"; each takes (name, settings...) as its ``build`` below passes them.
IMPLEMENTATIONS = {
    "openai": "proxy.providers.openai:OpenAIProvider",
    "anthropic": "proxy.providers.anthropic:AnthropicProvider",
    "bedrock": "proxy.providers.bedrock:BedrockProvider",
    # OpenAI's wire for chat; FIM (Codestral) on /v1/fim/completions.
    "mistral": "proxy.providers.mistral:MistralProvider",
}
# The client session each HTTP wire family shares (Bedrock brings its own aioboto3 client).
SESSION_OF = {"openai": "openai", "anthropic": "anthropic", "mistral": "openai"}
# Kinds that speak OpenAI's wire and take the forwarding allowlist's extra body fields. The
# local servers (ollama, vllm, llamacpp) are built-in providers of kind "openai"
# (``proxy.config.BUILTIN_PROVIDERS``), with a catalog ``fim_template`` where they need one.
OPENAI_WIRE = ("openai", "mistral")


def implementation(kind: str) -> Any:
    module, _, cls = IMPLEMENTATIONS[kind].partition(":")
    return getattr(importlib.import_module(module), cls)


def build_provider(
    pc: ProviderConfig,
    key: str | None,
    sessions: Mapping[str, UpstreamSession],
    aws_credentials: dict[str, str] | None,
    timeouts: tuple[float, float] = (5.0, 60.0),
    fields: FieldPolicy | None = None,
) -> Provider:
    cls = implementation(pc.kind)
    provider: Provider
    # [providers.x] ca_file: the CAs to trust instead of the system store.
    context = ssl.create_default_context(cafile=pc.ca_file) if pc.ca_file else None
    if pc.kind in OPENAI_WIRE:
        # The extra body fields this provider takes ([providers.x] extra_body_fields).
        forwarded = (fields or FieldPolicy.build((), {pc.name: pc.extra_body_fields})).forwarded
        provider = cls(
            pc.name,
            base_url=pc.base_url,
            api_key=key or "",
            session=sessions[SESSION_OF[pc.kind]],
            ssl_context=context,
            fields=forwarded.get(pc.name),
        )
        return provider
    if pc.kind in SESSION_OF:
        session = sessions[SESSION_OF[pc.kind]]
        provider = cls(
            pc.name, base_url=pc.base_url, api_key=key or "", session=session, ssl_context=context
        )
        return provider
    provider = cls(
        pc.name,
        region=pc.region,
        endpoint_url=pc.endpoint_url or None,
        credentials=aws_credentials,
        timeouts=timeouts,
        ca_file=pc.ca_file or None,
    )
    return provider


def make_session(config: Config, warmer: Warmer | None = None) -> UpstreamSession:
    """``warmer``: told about each request (``proxy/serve/warm.py``), when it keeps pools warm.
    No limit on connections: 512 concurrent streams must not queue behind one."""
    s = config.server
    return UpstreamSession(
        keepalive_s=s.upstream_keepalive_s,
        connect_timeout_s=s.connect_timeout_s,
        dns_cache_s=s.dns_cache_s,
        observer=warmer,
    )


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
