"""Which top-level request fields the router accepts and forwards, as data.

OpenAI's own fields per endpoint come from ``openai_fields.json`` (generated from the
OpenAPI description the repository ships: ``python -m benchmarks.gen_openai_fields``). The
routing extensions are accepted and never forwarded. Anything else must be named in config
(``[forwarding] extra_body_fields`` for every provider, ``[providers.<name>]
extra_body_fields`` for one), or the request is a 400 naming the field: an allowlist, so a
field that steers a gateway behind us (``api_base``, ``aws_*``, ``litellm_params``) never
reaches it, whatever its name.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from importlib import resources
from itertools import repeat
from typing import Any

from proxy.errors import bad_request, quote

ENDPOINTS = ("chat", "completions")

# Routing extensions (proxy/decide/intent.py): the router's own, stripped before the upstream.
# "hedge": true/false opts a stream in or out of a hedged first-token race (serve/hedge.py).
EXTENSION_FIELDS = frozenset(
    {"prefer", "tier", "min_coding_score", "models", "task", "escalate", "cache", "hedge"}
)

# Fields some gateways honour to pick an upstream or its credentials per request (LiteLLM's
# api_base sent its owner's key to an attacker's host, CVE-2024-6587). Not in OpenAI's schema,
# so the allowlist refuses them anyway; they are named here so that config cannot allow them
# and the refusal says why.
ROUTING_FIELDS = frozenset(
    {
        "api_base",
        "base_url",
        "api_key",
        "api_version",
        "api_type",
        "organization",
        "custom_llm_provider",
        "extra_headers",
        "extra_body",
        "extra_query",
        "headers",
        "endpoint_url",
        "litellm_params",
        "mock_response",
    }
)
ROUTING_PREFIXES = ("aws_", "vertex_", "azure_", "litellm_")


def steers_upstream(name: str) -> bool:
    return name in ROUTING_FIELDS or name.startswith(ROUTING_PREFIXES)


@functools.cache
def _shipped() -> dict[str, Any]:
    """``openai_fields.json``, read and parsed once for the three tables below."""
    text = resources.files("proxy").joinpath("openai_fields.json").read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


@functools.cache
def openai_fields() -> Mapping[str, frozenset[str]]:
    """The fields OpenAI's schema defines, per endpoint (read once)."""
    data = _shipped()
    return {e: frozenset(data["endpoints"][e]["fields"]) for e in ENDPOINTS}


# A JSON value's type as OpenAPI names it, by the Python type orjson gives it.
_JSON_TYPE = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}
_ARTICLE = {"array": "an array", "integer": "an integer", "object": "an object"}


@functools.cache
def openai_field_types() -> Mapping[str, Mapping[str, frozenset[str]]]:
    """Per endpoint, each OpenAI field's JSON types where the spec pins them down. null is
    always accepted (an optional field sent as null is a field not sent) and an integer is
    a number."""
    data = _shipped()
    out: dict[str, dict[str, frozenset[str]]] = {}
    for endpoint in ENDPOINTS:
        out[endpoint] = {}
        for name, types in data["endpoints"][endpoint]["types"].items():
            allowed = set(types) - {"null"}
            if "number" in allowed:
                allowed.add("integer")
            out[endpoint][name] = frozenset(allowed)
    return out


@functools.cache
def openai_field_ranges() -> Mapping[str, Mapping[str, tuple[float | None, float | None]]]:
    """Per endpoint, each numeric OpenAI field's (minimum, maximum) where the spec gives one."""
    data = _shipped()
    return {
        e: {name: (low, high) for name, (low, high) in data["endpoints"][e]["ranges"].items()}
        for e in ENDPOINTS
    }


def _check_range(
    name: str, value: float, bounds: tuple[float | None, float | None], decimal: bool
) -> None:
    """OpenAI's own words and codes for a value outside the schema's range; ``decimal`` when
    the field is a number, not an integer (``temperature`` 3 is a decimal above its maximum)."""
    low, high = bounds
    kind = "decimal" if decimal else "integer"
    if low is not None and value < low:
        side, limit, code = "below minimum", f">= {low}", f"{kind}_below_min_value"
    elif high is not None and value > high:
        side, limit, code = "above maximum", f"<= {high}", f"{kind}_above_max_value"
    else:
        return
    raise bad_request(
        f"Invalid {quote(name)}: {kind} {side} value. Expected a value {limit}, but got "
        f"{value} instead.",
        name,
        code,
    )


def check_types(body: Mapping[str, Any], endpoint: str) -> None:
    """Refuse an OpenAI field whose JSON type OpenAI's schema does not allow (a string
    temperature, a number user), or a number outside the schema's range (temperature 3):
    OpenAI answers those with a 400, so nothing is sent upstream."""
    types = openai_field_types()[endpoint]
    ranges = openai_field_ranges()[endpoint]
    for name, value in body.items():
        allowed = types.get(name)
        if allowed is None or value is None:
            continue
        got = _JSON_TYPE.get(type(value), "object")
        if got in allowed or (
            got == "number" and "integer" in allowed and float(value).is_integer()
        ):
            if (got == "number" or got == "integer") and (bounds := ranges.get(name)):
                _check_range(name, value, bounds, "number" in allowed)
            continue
        shown = allowed - {"integer"} if "number" in allowed else allowed
        expected = " or ".join(_ARTICLE.get(t, f"a {t}") for t in sorted(shown))
        raise bad_request(
            f"Invalid type for {quote(name)}: expected {expected}, but got "
            f"{_ARTICLE.get(got, f'a {got}')} instead.",
            name,
            "invalid_type",
        )


@dataclass(frozen=True, slots=True)
class FieldPolicy:
    """Built once per config: what the door accepts, and what each provider is sent."""

    accepted: Mapping[str, frozenset[str]]  # per endpoint
    forwarded: Mapping[str, Mapping[str, frozenset[str]]]  # provider -> endpoint -> fields
    global_extra: frozenset[str]
    # Per endpoint: accepted field -> the Python types its value may have that need no
    # further look (no range to check); see ``check``.
    plain: Mapping[str, Mapping[str, frozenset[type]]] = field(default_factory=dict)

    @classmethod
    def build(
        cls, global_extra: Iterable[str], per_provider: Mapping[str, Iterable[str]]
    ) -> FieldPolicy:
        spec = openai_fields()
        extra = frozenset(global_extra)
        providers = {name: frozenset(fields) for name, fields in per_provider.items()}
        every_provider = frozenset().union(*providers.values()) if providers else frozenset()
        accepted = {e: spec[e] | EXTENSION_FIELDS | extra | every_provider for e in ENDPOINTS}
        forwarded = {
            name: {e: spec[e] | extra | own for e in ENDPOINTS} for name, own in providers.items()
        }
        return cls(accepted, forwarded, extra, {e: _plain_types(accepted[e], e) for e in ENDPOINTS})

    def forwarded_for(self, provider: str, endpoint: str) -> frozenset[str]:
        found = self.forwarded.get(provider)
        if found is not None:
            return found[endpoint]
        return openai_fields()[endpoint] | self.global_extra

    def check(self, body: Mapping[str, Any], endpoint: str) -> None:
        """Refuse the first field (in the client's order) the router would not forward, then
        any OpenAI field of a type OpenAI's schema does not allow."""
        # The usual body passes in C: every field accepted and of a type that needs no range
        # check (~20 bytecodes whatever the number of fields, where the checks below ran ~150
        # for a three-field body). Anything else takes them, in the client's order.
        plain = self.plain.get(endpoint)
        if plain is not None and all(
            map(_HOLDS, map(plain.get, body, repeat(_NONE)), map(type, body.values()))
        ):
            return
        accepted = self.accepted[endpoint]
        if not accepted.issuperset(body):
            for name in body:
                if name not in accepted:
                    raise unknown_field(name, endpoint)
        check_types(body, endpoint)


_HOLDS = frozenset.__contains__
_NONE: frozenset[type] = frozenset()


def _plain_types(accepted: frozenset[str], endpoint: str) -> dict[str, frozenset[type]]:
    """For each accepted field, the Python types ``check_types`` passes without a range
    check: null always; the JSON types the spec allows, less numbers where it gives a range;
    every JSON type where it says nothing."""
    types, ranges = openai_field_types()[endpoint], openai_field_ranges()[endpoint]
    out: dict[str, frozenset[type]] = {}
    for name in accepted:
        allowed = types.get(name)
        ok = {t for t, kind in _JSON_TYPE.items() if allowed is None or kind in allowed}
        if allowed is not None and ranges.get(name):
            ok -= {int, float}
        out[name] = frozenset(ok | {type(None)})
    return out


def unknown_field(name: str, endpoint: str) -> Exception:
    shown = quote(name)
    if steers_upstream(name):
        return bad_request(
            f"Unrecognized request argument supplied: {shown}. Fields that pick an upstream "
            "or its credentials are never accepted: upstreams and their keys come only from "
            "the router's config",
            name[:256],
            "unsupported_parameter",
        )
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    return bad_request(
        f"Unrecognized request argument supplied: {shown}. The router forwards only the "
        f"fields OpenAI's API defines for {path}; to pass this one to an upstream that "
        f"understands it, name it in the config: extra_body_fields = [{shown}] under "
        "[providers.<name>] (that provider only) or [forwarding] (every provider)",
        name[:256],
        "unknown_parameter",
    )


def check_extra(names: Any, path: str) -> tuple[str, ...]:
    """A config list of extra field names; a message for ConfigError otherwise (raised as
    ValueError so config.py owns the error type)."""
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"{path}: expected an array of field names")
    for name in names:
        if steers_upstream(name):
            raise ValueError(
                f"{path}: {name!r} picks an upstream or its credentials and cannot be allowed"
            )
        if name in EXTENSION_FIELDS:
            raise ValueError(f"{path}: {name!r} is a routing extension of the router itself")
    return tuple(dict.fromkeys(names))
