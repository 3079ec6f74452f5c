"""A small JSON Schema validator for answers to input requests (a documented subset).

An answer is validated twice over its life: when `MetaPlanner.respond` records it (maybe in
another process, from the schema stored in the checkpoint) and never again, so the validator
works from the JSON schema alone. It supports the keywords a person's answer needs and that
pydantic's ``model_json_schema()`` emits for plain models; a schema using any other keyword is
refused when the node asks (`check_schema`), never silently half-checked.

Supported: ``type`` (a name or a list), ``enum``, ``const``, ``properties``, ``required``,
``additionalProperties`` (a boolean or a schema), ``items``, ``minItems``, ``maxItems``,
``minLength``, ``maxLength``, ``pattern`` (Python `re.search`), ``minimum``, ``maximum``,
``exclusiveMinimum``, ``exclusiveMaximum``, ``anyOf``, ``allOf``, ``oneOf``, local ``$ref``
(``#/$defs/…``, ``#/definitions/…``) and annotations (``title``, ``description``, ``default``,
``examples``, ``format``, ...), which are ignored. ``true``/``{}`` accept anything.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

__all__ = ["check_schema", "validate"]

_ANNOTATIONS = frozenset({
    "title", "description", "default", "examples", "format", "$schema", "$id", "$comment",
    "readOnly", "writeOnly", "deprecated", "$defs", "definitions", "discriminator",
})
_SCHEMA_LISTS = frozenset({"anyOf", "allOf", "oneOf"})
_COUNTS = frozenset({"minItems", "maxItems", "minLength", "maxLength"})
_BOUNDS = frozenset({"minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum"})
_OTHERS = frozenset({"type", "enum", "const", "properties", "required", "additionalProperties",
                     "items", "pattern", "$ref"})
_KNOWN = _ANNOTATIONS | _SCHEMA_LISTS | _COUNTS | _BOUNDS | _OTHERS
_MAX_DEPTH = 64


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _is_integer(value: Any) -> bool:
    return type(value) is int or (type(value) is float and math.isfinite(value) and value.is_integer())


_TYPES: dict[str, Callable[[Any], bool]] = {
    "null": lambda v: v is None,
    "boolean": lambda v: type(v) is bool,
    "integer": _is_integer,
    "number": _is_number,
    "string": lambda v: type(v) is str,
    "array": lambda v: type(v) is list,
    "object": lambda v: type(v) is dict,
}


def check_schema(schema: Any) -> None:
    """Raise `ValueError` saying where *schema* leaves the supported subset."""
    _check(schema, schema, "#", 0)


def _check(schema: Any, root: Any, where: str, depth: int) -> None:
    if depth > _MAX_DEPTH:
        raise ValueError(f"{where}: nested more than {_MAX_DEPTH} levels")
    if type(schema) is bool:
        return
    if type(schema) is not dict:
        raise ValueError(f"{where}: a schema must be an object or a boolean, not {type(schema).__name__}")
    unknown = sorted(set(schema) - _KNOWN)
    if unknown:
        raise ValueError(f"{where}: unsupported keyword(s) {unknown}")
    types = schema.get("type", [])
    for name in [types] if isinstance(types, str) else types if isinstance(types, list) else [None]:
        if name not in _TYPES:
            raise ValueError(f"{where}.type: {name!r} is not a JSON type")
    for key in _COUNTS & set(schema):
        if type(schema[key]) is not int or schema[key] < 0:
            raise ValueError(f"{where}.{key}: must be a non-negative integer")
    for key in _BOUNDS & set(schema):
        if not _is_number(schema[key]):
            raise ValueError(f"{where}.{key}: must be a number")
    if "pattern" in schema:
        try:
            re.compile(schema["pattern"])
        except (re.error, TypeError) as exc:
            raise ValueError(f"{where}.pattern: not a regular expression ({exc})") from None
    if "enum" in schema and type(schema["enum"]) is not list:
        raise ValueError(f"{where}.enum: must be an array")
    if "required" in schema and (type(schema["required"]) is not list
                                 or not all(type(k) is str for k in schema["required"])):
        raise ValueError(f"{where}.required: must be an array of strings")
    if "$ref" in schema:
        _resolve(root, schema["$ref"], where)
    _check_children(schema, root, where, depth)


def _check_children(schema: dict[str, Any], root: Any, where: str, depth: int) -> None:
    properties = schema.get("properties", {})
    if type(properties) is not dict:
        raise ValueError(f"{where}.properties: must be an object")
    for name, member in properties.items():
        _check(member, root, f"{where}.properties.{name}", depth + 1)
    for key in ("additionalProperties", "items"):
        if key in schema:
            _check(schema[key], root, f"{where}.{key}", depth + 1)
    for key in _SCHEMA_LISTS & set(schema):
        if type(schema[key]) is not list or not schema[key]:
            raise ValueError(f"{where}.{key}: must be a non-empty array of schemas")
        for index, member in enumerate(schema[key]):
            _check(member, root, f"{where}.{key}[{index}]", depth + 1)
    for key in ("$defs", "definitions"):
        if key in schema:
            if type(schema[key]) is not dict:
                raise ValueError(f"{where}.{key}: must be an object")
            for name, member in schema[key].items():
                _check(member, root, f"{where}.{key}.{name}", depth + 1)


def _resolve(root: Any, ref: Any, where: str) -> Any:
    parts = ref.split("/") if isinstance(ref, str) else []
    if len(parts) != 3 or parts[0] != "#" or parts[1] not in ("$defs", "definitions"):
        raise ValueError(f"{where}.$ref: only local references like '#/$defs/Name' are supported")
    target = root.get(parts[1], {}).get(parts[2]) if type(root) is dict else None
    if target is None:
        raise ValueError(f"{where}.$ref: {ref!r} names no definition")
    return target


def validate(value: Any, schema: Any) -> list[str]:
    """Return what is wrong with *value* against *schema* (checked by `check_schema`); ``[]`` if fine."""
    problems: list[str] = []
    _validate(value, schema, schema, "$", problems, 0)
    return problems[:20]


def _validate(value: Any, schema: Any, root: Any, where: str, problems: list[str], depth: int) -> None:
    if schema is True or schema == {}:
        return
    if schema is False:
        problems.append(f"{where}: no value is allowed here")
        return
    if depth > _MAX_DEPTH:
        problems.append(f"{where}: nested too deeply")
        return
    if "$ref" in schema:
        _validate(value, _resolve(root, schema["$ref"], where), root, where, problems, depth + 1)
    if "type" in schema:
        names = [schema["type"]] if isinstance(schema["type"], str) else schema["type"]
        if not any(_TYPES[name](value) for name in names):
            problems.append(f"{where}: expected {' or '.join(names)}, got {_json_type(value)}")
            return
    if "const" in schema and not _equal(value, schema["const"]):
        problems.append(f"{where}: must be {_show(schema['const'])}")
    if "enum" in schema and not any(_equal(value, option) for option in schema["enum"]):
        problems.append(f"{where}: must be one of {_show(schema['enum'])}")
    _check_combinations(value, schema, root, where, problems, depth)
    if type(value) is str:
        _check_string(value, schema, where, problems)
    elif _is_number(value) and type(value) is not bool:
        _check_number(value, schema, where, problems)
    elif type(value) is list:
        _check_array(value, schema, root, where, problems, depth)
    elif type(value) is dict:
        _check_object(value, schema, root, where, problems, depth)


def _check_combinations(
    value: Any, schema: dict[str, Any], root: Any, where: str, problems: list[str], depth: int
) -> None:
    for member in schema.get("allOf", ()):
        _validate(value, member, root, where, problems, depth + 1)
    for key in ("anyOf", "oneOf"):
        if key not in schema:
            continue
        matches = sum(not _errors(value, member, root, where, depth) for member in schema[key])
        if matches == 0:
            problems.append(f"{where}: matches none of the {key} alternatives")
        elif key == "oneOf" and matches > 1:
            problems.append(f"{where}: matches {matches} of the oneOf alternatives, not exactly one")


def _errors(value: Any, schema: Any, root: Any, where: str, depth: int) -> list[str]:
    found: list[str] = []
    _validate(value, schema, root, where, found, depth + 1)
    return found


def _check_string(value: str, schema: dict[str, Any], where: str, problems: list[str]) -> None:
    if "minLength" in schema and len(value) < schema["minLength"]:
        problems.append(f"{where}: shorter than {schema['minLength']} characters")
    if "maxLength" in schema and len(value) > schema["maxLength"]:
        problems.append(f"{where}: longer than {schema['maxLength']} characters")
    if "pattern" in schema and re.search(schema["pattern"], value) is None:
        problems.append(f"{where}: does not match the pattern {schema['pattern']!r}")


def _check_number(value: float, schema: dict[str, Any], where: str, problems: list[str]) -> None:
    if "minimum" in schema and value < schema["minimum"]:
        problems.append(f"{where}: less than the minimum {schema['minimum']}")
    if "maximum" in schema and value > schema["maximum"]:
        problems.append(f"{where}: more than the maximum {schema['maximum']}")
    if "exclusiveMinimum" in schema and value <= schema["exclusiveMinimum"]:
        problems.append(f"{where}: must be more than {schema['exclusiveMinimum']}")
    if "exclusiveMaximum" in schema and value >= schema["exclusiveMaximum"]:
        problems.append(f"{where}: must be less than {schema['exclusiveMaximum']}")


def _check_array(
    value: list[Any], schema: dict[str, Any], root: Any, where: str, problems: list[str], depth: int
) -> None:
    if "minItems" in schema and len(value) < schema["minItems"]:
        problems.append(f"{where}: fewer than {schema['minItems']} items")
    if "maxItems" in schema and len(value) > schema["maxItems"]:
        problems.append(f"{where}: more than {schema['maxItems']} items")
    if "items" in schema:
        for index, item in enumerate(value):
            _validate(item, schema["items"], root, f"{where}[{index}]", problems, depth + 1)


def _check_object(
    value: dict[str, Any], schema: dict[str, Any], root: Any, where: str, problems: list[str], depth: int
) -> None:
    properties = schema.get("properties", {})
    for name in schema.get("required", ()):
        if name not in value:
            problems.append(f"{where}: missing required property {name!r}")
    extra = schema.get("additionalProperties", True)
    for name, member in value.items():
        inner = f"{where}.{name}"
        if name in properties:
            _validate(member, properties[name], root, inner, problems, depth + 1)
        elif extra is False:
            problems.append(f"{where}: unexpected property {name!r}")
        else:
            _validate(member, extra, root, inner, problems, depth + 1)


def _equal(left: Any, right: Any) -> bool:
    """JSON equality: ``true`` is not ``1``, and ``1`` equals ``1.0``."""
    if type(left) is bool or type(right) is bool:
        return type(left) is type(right) and left == right
    if type(left) is list and type(right) is list:
        return len(left) == len(right) and all(map(_equal, left, right))
    if type(left) is dict and type(right) is dict:
        return left.keys() == right.keys() and all(_equal(left[k], right[k]) for k in left)
    return bool(left == right) and (_is_number(left) == _is_number(right))


def _json_type(value: Any) -> str:
    for name in ("null", "boolean", "integer", "number", "string", "array", "object"):
        if _TYPES[name](value):
            return name
    return type(value).__name__


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
