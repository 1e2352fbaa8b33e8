"""Validate objects against schemas in OpenAI's published OpenAPI description (shared/reference)."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

SPEC = Path(__file__).resolve().parents[2] / "shared" / "reference" / "openai" / "openapi.yaml"


@functools.cache
def _registry() -> Registry:
    with SPEC.open(encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    resource = Resource.from_contents(spec, default_specification=DRAFT202012)
    return Registry().with_resource("urn:openai", resource)


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    schema = {"$ref": f"urn:openai#/components/schemas/{name}"}
    return Draft202012Validator(schema, registry=_registry())


def schema_errors(name: str, obj: Any) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in _validator(name).iter_errors(obj)]


def assert_valid(name: str, obj: Any) -> None:
    errors = schema_errors(name, obj)
    assert not errors, f"{name} violations: {errors[:5]} in {obj!r:.500}"
