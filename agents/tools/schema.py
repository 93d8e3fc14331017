"""A tool's input schema: pydantic's JSON schema, made narrow and byte-stable.

The schema is the tool's public API: the model reads nothing else. So it carries no noise
(pydantic's generated titles), no escape hatches (``additionalProperties: false``), closed sets as
``enum``, and optional fields as plain optional properties rather than ``anyOf [T, null]``. It is
generated once per tool and its key order is fixed, because the executor caches the tools prefix
byte for byte.
"""

from __future__ import annotations

import copy
from typing import Any

from pydantic import BaseModel

# Keywords first in this order, then any others alphabetically; property names keep field order.
_KEY_ORDER = (
    "type", "description", "enum", "format", "pattern", "minLength", "maxLength", "minimum",
    "exclusiveMinimum", "maximum", "exclusiveMaximum", "items", "minItems", "maxItems",
    "uniqueItems", "properties", "required", "additionalProperties", "default", "anyOf", "oneOf",
    "allOf", "$defs",
)
_RANK = {key: i for i, key in enumerate(_KEY_ORDER)}


def narrow_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The input schema the model sees for a tool whose arguments are ``model``."""
    raw = model.model_json_schema(mode="validation")
    defs = raw.pop("$defs", {})
    schema = _inline(raw, defs, seen=())
    schema.pop("description", None)  # the args model's docstring; the tool description says it
    schema["type"] = "object"
    schema.setdefault("properties", {})
    schema["additionalProperties"] = False  # extra top-level keys are refused at validation too
    if not schema.get("required"):
        schema.pop("required", None)
    return _ordered(_tidy(schema))


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    """Replace ``$ref`` with the definition it names (tool arguments are never recursive)."""
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/$defs/"):
        name = ref.removeprefix("#/$defs/")
        if name in seen:
            raise TypeError(f"tool arguments may not be recursive ({name!r} refers to itself)")
        target = _inline(copy.deepcopy(defs[name]), defs, (*seen, name))
        siblings = {k: _inline(v, defs, seen) for k, v in node.items() if k != "$ref"}
        return {**target, **siblings}
    return {key: _inline(value, defs, seen) for key, value in node.items()}


def _tidy(node: Any) -> Any:
    if isinstance(node, list):
        return [_tidy(item) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "title":
            continue
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _tidy(prop) for name, prop in value.items()}
        else:
            out[key] = _tidy(value)
    if "const" in out:  # a one-value Literal: an enum is what every client understands
        out["enum"] = [out.pop("const")]
    variants = out.get("anyOf")
    optional = "default" in out and out["default"] is None
    if isinstance(variants, list) and {"type": "null"} in variants and optional:
        # ``X | None = None``: the model should omit the field, not send null.
        rest = [v for v in variants if v != {"type": "null"}]
        if len(rest) == 1:
            del out["anyOf"]
            out.pop("default", None)
            out = {**rest[0], **out}
    return out


def _ordered(node: Any) -> Any:
    if isinstance(node, list):
        return [_ordered(item) for item in node]
    if not isinstance(node, dict):
        return node
    keys = sorted(node, key=lambda k: (_RANK.get(k, len(_RANK)), k))
    out: dict[str, Any] = {}
    for key in keys:
        value = node[key]
        if key == "properties" and isinstance(value, dict):
            out[key] = {name: _ordered(prop) for name, prop in value.items()}
        else:
            out[key] = _ordered(value)
    return out
