"""Validate objects against schemas in OpenAI's published OpenAPI description (the subset in
tests/reference/openai, with its MIT notice)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parent / "reference" / "openai" / "openapi.yaml"


def _nullable(node: Any) -> Any:
    """OpenAI's document marks nullable fields OpenAPI-3.0 style (``nullable: true``), which
    JSON Schema ignores; make them explicit so ``null`` validates where OpenAI allows it."""
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items()}
    if out.pop("nullable", False) is True:
        if isinstance(out.get("type"), str):
            out["type"] = [out["type"], "null"]
        if isinstance(out.get("enum"), list) and None not in out["enum"]:
            out["enum"] = [*out["enum"], None]
        if "$ref" in out or "allOf" in out or "anyOf" in out or "oneOf" in out:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _registry() -> Registry:
    with SPEC.open(encoding="utf-8") as fh:
        spec = _nullable(yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource("urn:openai", resource)


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=_registry())


def schema_errors(name: str, obj: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(name).iter_errors(obj)
    ]


def assert_valid(name: str, obj: Any) -> None:
    errors = schema_errors(name, obj)
    assert not errors, f"{name} violations: {errors[:5]} in {obj!r:.500}"
