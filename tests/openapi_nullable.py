"""OpenAI schema checks that honour the spec's leftover ``nullable: true`` (OpenAPI 3.0).

``tests/openapi_schema.py`` validates with draft 2020-12, which ignores ``nullable``, so a
valid chunk (``"finish_reason": null``, ``"logprobs": null``) fails there. This rewrites each
``nullable: true`` schema as ``anyOf [schema, null]`` first; fold it into that helper and
drop this module once it does the same.
"""

from __future__ import annotations

import functools
from typing import Any

import yaml
from jsonschema import Draft202012Validator

from tests.openapi_schema import SPEC


def _nullable(node: Any) -> Any:
    if isinstance(node, list):
        return [_nullable(n) for n in node]
    if not isinstance(node, dict):
        return node
    out = {k: _nullable(v) for k, v in node.items() if not (k == "nullable" and v is True)}
    if node.get("nullable") is True:
        return {"anyOf": [out, {"type": "null"}]}
    return out


@functools.cache
def _components() -> dict[str, Any]:
    with SPEC.open(encoding="utf-8") as fh:
        spec = yaml.load(fh, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return {"schemas": _nullable(spec["components"]["schemas"])}


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(
        {"$ref": f"#/components/schemas/{name}", "components": _components()}
    )


def schema_errors(name: str, obj: Any) -> list[str]:
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in _validator(name).iter_errors(obj)
    ]


def assert_valid(name: str, obj: Any) -> None:
    errors = schema_errors(name, obj)
    assert not errors, f"{name} violations: {errors[:5]} in {obj!r:.500}"


def assert_chunks_valid(chunks: list[dict[str, Any]]) -> None:
    for chunk in chunks:
        assert_valid("CreateChatCompletionStreamResponse", chunk)
