"""JSON Schema (pydantic, draft 2020-12) to the OpenAPI 3.0 schema subset.

Process inputs are described with OpenAPI 3.0 schemas (OGC API - Processes 1.0 requires it),
and ``GET /api`` is an OpenAPI 3.0 document, while pydantic and FastAPI emit JSON Schema 2020-12
and OpenAPI 3.1. The differences that matter here: ``$ref``/``$defs`` (inlined for inputs),
``null`` in unions (``nullable: true``), ``const``, ``examples``, numeric ``exclusiveMinimum``,
``prefixItems`` and type lists.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["to_oas30", "document_to_oas30"]

_DROP = {"$schema", "$id", "$defs", "definitions", "$comment", "contentMediaType",
         "contentEncoding", "unevaluatedProperties", "propertyNames", "dependentRequired",
         "dependentSchemas", "if", "then", "else", "const", "examples", "prefixItems",
         "discriminator"}
_OAS30_KEYS = {"title", "multipleOf", "maximum", "exclusiveMaximum", "minimum", "exclusiveMinimum",
               "maxLength", "minLength", "pattern", "maxItems", "minItems", "uniqueItems",
               "maxProperties", "minProperties", "required", "enum", "type", "allOf", "oneOf",
               "anyOf", "not", "items", "properties", "additionalProperties", "description",
               "format", "default", "nullable", "readOnly", "writeOnly", "xml", "externalDocs",
               "example", "deprecated"}
"""The keywords of an OpenAPI 3.0 Schema Object; any other (say a library's typo) is dropped."""


def _resolve(ref: str, root: dict[str, Any]) -> dict[str, Any]:
    node: Any = root
    for part in ref.lstrip("#/").split("/"):
        node = node[part.replace("~1", "/").replace("~0", "~")]
    return dict(node)


def to_oas30(schema: Any, root: dict[str, Any] | None = None, *, inline: bool = True,
             ref_prefix: str = "#/components/schemas/", _depth: int = 0) -> Any:
    """Convert one JSON Schema to OpenAPI 3.0: references inlined (``inline``) or re-pointed."""
    if isinstance(schema, list):
        return [to_oas30(s, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth) for s in schema]
    if not isinstance(schema, dict):
        return schema
    root = schema if root is None else root
    node = dict(schema)
    if "$ref" in node:
        ref = node.pop("$ref")
        if inline:
            if _depth > 32:
                raise ValueError(f"schema reference {ref} is recursive")
            target = _resolve(ref, root)
            target.update(node)
            return to_oas30(target, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth + 1)
        name = ref.rsplit("/", 1)[-1]
        if node:  # OpenAPI 3.0 ignores siblings of $ref: wrap it
            rest = to_oas30(node, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth)
            return {"allOf": [{"$ref": ref_prefix + name}], **rest}
        return {"$ref": ref_prefix + name}
    out: dict[str, Any] = {}
    if "const" in node:
        out["enum"] = [node["const"]]
    if "examples" in node and isinstance(node["examples"], list) and node["examples"]:
        out["example"] = node["examples"][0]
    if "prefixItems" in node and "items" not in node:
        out["items"] = {}
    nullable = False
    for key, value in node.items():
        if key in _DROP:
            continue
        if key in ("anyOf", "oneOf"):
            options = [v for v in value if not (isinstance(v, dict) and v.get("type") == "null")]
            nullable = nullable or len(options) < len(value)
            options = [to_oas30(v, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth + 1)
                       for v in options]
            if len(options) == 1:
                merged = options[0]
                if "$ref" in merged:
                    out["allOf"] = [merged]
                else:
                    for k, v in merged.items():
                        out.setdefault(k, v)
            elif options:
                out[key] = options
            continue
        if key == "type" and isinstance(value, list):
            types = [t for t in value if t != "null"]
            nullable = nullable or len(types) < len(value)
            if len(types) == 1:
                out["type"] = types[0]
            elif types:
                out["anyOf"] = [{"type": t} for t in types]
            continue
        if key == "type" and value == "null":
            nullable = True
            continue
        if key in ("exclusiveMinimum", "exclusiveMaximum") and not isinstance(value, bool):
            out["minimum" if key == "exclusiveMinimum" else "maximum"] = value
            out[key] = True
            continue
        if key in ("properties", "patternProperties"):
            out[key] = {k: to_oas30(v, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth + 1)
                        for k, v in value.items()}
            if key == "patternProperties":
                out.pop(key)  # not in OpenAPI 3.0
            continue
        if key in ("items", "additionalProperties", "not"):
            out[key] = (to_oas30(value, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth + 1)
                        if isinstance(value, dict) else value)
            continue
        if key == "allOf":
            out[key] = [to_oas30(v, root, inline=inline, ref_prefix=ref_prefix, _depth=_depth + 1)
                        for v in value]
            continue
        if key in _OAS30_KEYS or key.startswith("x-"):
            out.setdefault(key, copy.deepcopy(value))
    if nullable:
        out["nullable"] = True
        if "type" not in out and "allOf" not in out and "anyOf" not in out and "oneOf" not in out:
            out["type"] = "object"
    return out


def document_to_oas30(doc: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI 3.1 document as an OpenAPI 3.0.3 document."""
    out = copy.deepcopy(doc)
    out["openapi"] = "3.0.3"
    out.pop("webhooks", None)
    out.get("info", {}).pop("summary", None)
    out.get("info", {}).get("license", {}).pop("identifier", None)
    schemas = out.get("components", {}).get("schemas", {})
    for name, schema in list(schemas.items()):
        schemas[name] = to_oas30(schema, out, inline=False)
    for path_item in out.get("paths", {}).values():
        for operation in path_item.values():
            if not isinstance(operation, dict):
                continue
            for parameter in operation.get("parameters", []):
                if "schema" in parameter:
                    parameter["schema"] = to_oas30(parameter["schema"], out, inline=False)
            for content_holder in [operation.get("requestBody", {}),
                                   *operation.get("responses", {}).values()]:
                for media in content_holder.get("content", {}).values():
                    if "schema" in media:
                        media["schema"] = to_oas30(media["schema"], out, inline=False)
    return out
