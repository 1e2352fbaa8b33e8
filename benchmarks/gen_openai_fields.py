"""Regenerate proxy/openai_fields.json, the request fields OpenAI's API defines per endpoint,
from the OpenAPI description the repository ships (tests/reference/openai/openapi.yaml).

    python -m benchmarks.gen_openai_fields          # rewrite the file
    python -m benchmarks.gen_openai_fields --check  # exit 1 if it is stale

Refresh the spec (see tests/reference/openai/README.md), then run this: the proxy forwards
only these fields (plus what config names in extra_body_fields), so a field OpenAI adds is
one command away from being accepted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "reference" / "openai" / "openapi.yaml"
OUT = ROOT / "proxy" / "openai_fields.json"
SCHEMAS = {"chat": "CreateChatCompletionRequest", "completions": "CreateCompletionRequest"}


def _properties(node: dict[str, Any], schemas: dict[str, Any], seen: frozenset[str]) -> set[str]:
    """Top-level property names of a schema, following $ref and allOf/anyOf/oneOf."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return set()
        return _properties(schemas[name], schemas, seen | {name})
    names = set(node.get("properties", {}))
    for key in ("allOf", "anyOf", "oneOf"):
        for sub in node.get(key, ()):
            names |= _properties(sub, schemas, seen)
    return names


JSON_TYPES = ("array", "boolean", "integer", "null", "number", "object", "string")


def _types(node: dict[str, Any], schemas: dict[str, Any], seen: frozenset[str]) -> set[str] | None:
    """The JSON types a value of this schema may have; None when it may be anything (a branch
    without a type), so the proxy checks only what the spec really pins down."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[1]
        if name in seen:
            return None
        return _types(schemas[name], schemas, seen | {name})
    found: set[str] | None = None
    if "type" in node:
        kind = node["type"]
        found = set(kind) if isinstance(kind, list) else {kind}
    elif "enum" in node or "const" in node:
        values = node.get("enum", [node.get("const")])
        found = {_json_type(v) for v in values}
    for key in ("anyOf", "oneOf"):
        if key in node:
            union: set[str] = set()
            for sub in node[key]:
                types = _types(sub, schemas, seen)
                if types is None:
                    return None
                union |= types
            found = union if found is None else found & union
    for sub in node.get("allOf", ()):
        types = _types(sub, schemas, seen)
        if types is not None:
            found = types if found is None else found & types
    if found is not None and node.get("nullable"):
        found.add("null")
    return found


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _top_level(schema: str, schemas: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each top-level field's schemas (one per place that defines it), through $ref and
    allOf/anyOf/oneOf."""
    props: dict[str, list[dict[str, Any]]] = {}

    def collect(node: dict[str, Any], seen: frozenset[str]) -> None:
        if "$ref" in node:
            name = node["$ref"].rsplit("/", 1)[1]
            if name not in seen:
                collect(schemas[name], seen | {name})
            return
        for field, sub in node.get("properties", {}).items():
            props.setdefault(field, []).append(sub)
        for key in ("allOf", "anyOf", "oneOf"):
            for sub in node.get(key, ()):
                collect(sub, seen)

    collect(schemas[schema], frozenset({schema}))
    return props


def _field_types(schema: str, schemas: dict[str, Any]) -> dict[str, list[str]]:
    """Each top-level field's JSON types, where the spec pins them down."""
    out: dict[str, list[str]] = {}
    for field, subs in sorted(_top_level(schema, schemas).items()):
        union: set[str] = set()
        for sub in subs:
            types = _types(sub, schemas, frozenset())
            if types is None or not types <= set(JSON_TYPES):
                break
            union |= types
        else:
            if union:
                out[field] = sorted(union)
    return out


def _bounds(node: dict[str, Any], schemas: dict[str, Any]) -> tuple[Any, Any] | None:
    """(minimum, maximum) of a numeric schema, either possibly None; None when it has none.
    Looks through $ref and into anyOf/oneOf branches (``anyOf: [number 0..2, null]``)."""
    if "$ref" in node:
        return _bounds(schemas[node["$ref"].rsplit("/", 1)[1]], schemas)
    if node.get("type") in ("number", "integer") and ("minimum" in node or "maximum" in node):
        return node.get("minimum"), node.get("maximum")
    for key in ("anyOf", "oneOf"):
        for sub in node.get(key, ()):
            if (found := _bounds(sub, schemas)) is not None:
                return found
    return None


def _field_ranges(schema: str, schemas: dict[str, Any]) -> dict[str, list[Any]]:
    """Each top-level numeric field's [minimum, maximum] (null where open), where every place
    that defines the field gives the same. A bound as wide as a 64-bit integer (``seed``)
    says nothing and is left out."""
    out: dict[str, list[Any]] = {}
    for field, subs in sorted(_top_level(schema, schemas).items()):
        found = {_bounds(sub, schemas) for sub in subs}
        if len(found) != 1 or (bounds := found.pop()) is None:
            continue
        if any(b is not None and abs(b) >= 2**53 for b in bounds):
            continue
        out[field] = list(bounds)
    return out


def generate(spec_path: Path = SPEC) -> str:
    """The JSON text of the data file for the spec at ``spec_path``."""
    with spec_path.open(encoding="utf-8") as fh:
        spec = yaml.safe_load(fh)
    schemas = spec["components"]["schemas"]
    data = {
        "source": "tests/reference/openai/openapi.yaml, generated by "
        "`python -m benchmarks.gen_openai_fields`; do not edit",
        "endpoints": {
            endpoint: {
                "schema": schema,
                "fields": sorted(_properties(schemas[schema], schemas, frozenset({schema}))),
                "types": _field_types(schema, schemas),
                "ranges": _field_ranges(schema, schemas),
            }
            for endpoint, schema in SCHEMAS.items()
        },
    }
    return json.dumps(data, indent=2) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the file is stale")
    args = parser.parse_args(argv)
    text = generate()
    if args.check:
        if OUT.read_text(encoding="utf-8") != text:
            print(f"{OUT} is stale: run python -m benchmarks.gen_openai_fields", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
