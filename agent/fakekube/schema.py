"""Field types of the served kinds, and decoding a request body the way the API server does.

The real server decodes JSON into Go structs: unknown fields are dropped (or rejected with
``fieldValidation=Strict``), a value of the wrong JSON type is a 400, ``metav1.Time`` must be
RFC 3339 and ``metav1.MicroTime`` RFC 3339 with exactly six fractional digits (Python's
``datetime.isoformat()`` drops the fraction when microsecond == 0, which the real server rejects),
and on the way out ``omitempty`` fields with empty values disappear (so ``node.spec.taints`` is
``None``, not ``[]``, once the last taint is gone). This module reproduces that from ``schema.json``
(generated from the Kubernetes OpenAPI definitions by ``gen_schema.py``).
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
from functools import lru_cache

TIME = "io.k8s.apimachinery.pkg.apis.meta.v1.Time"
MICROTIME = "io.k8s.apimachinery.pkg.apis.meta.v1.MicroTime"
QUANTITY = "io.k8s.apimachinery.pkg.api.resource.Quantity"
INT_OR_STRING = "io.k8s.apimachinery.pkg.util.intstr.IntOrString"
FIELDS_V1 = "io.k8s.apimachinery.pkg.apis.meta.v1.FieldsV1"
RAW_EXTENSION = "io.k8s.apimachinery.pkg.runtime.RawExtension"

# Structs whose scalar fields are Go pointers: a zero value is kept on output.
_POINTER_STRUCTS = {"io.k8s.api.coordination.v1.LeaseSpec"}
# Non-pointer scalars with omitempty that clients commonly see disappear (Go drops false / 0).
_OMIT_ZERO = {
    ("io.k8s.api.core.v1.NodeSpec", "unschedulable"),
    ("io.k8s.api.core.v1.Event", "count"),
    ("io.k8s.api.events.v1.Event", "deprecatedCount"),
}

_RFC3339 = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_RFC3339_MICRO = re.compile(
    r"^(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})\.(\d{6})(Z|[+-]\d{2}:\d{2})$")

GO_TIME_LAYOUT = "2006-01-02T15:04:05Z07:00"
GO_MICROTIME_LAYOUT = "2006-01-02T15:04:05.000000Z07:00"


class DecodeError(Exception):
    """The body cannot be decoded into the kind (HTTP 400 on the real server)."""


def _load() -> dict:
    path = os.path.join(os.path.dirname(__file__), "schema.json")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


@lru_cache(maxsize=1)
def definitions() -> dict:
    return _load()["definitions"]


def resolve(node: dict | None) -> tuple[dict | None, str | None]:
    """Follow a ``$ref``; return (schema node, definition name or None)."""
    if node is None:
        return None, None
    ref = node.get("$ref")
    if ref is None:
        return node, None
    return definitions().get(ref), ref


def definition(name: str) -> dict:
    return definitions()[name]


def child(node: dict | None, key: str) -> dict | None:
    """Schema of ``key`` inside an object schema node (struct field or map value)."""
    node, _ = resolve(node)
    if not node:
        return None
    props = node.get("properties")
    if props is not None and key in props:
        return props[key]
    add = node.get("additionalProperties")
    if isinstance(add, dict):
        return add
    return None


def items(node: dict | None) -> dict | None:
    node, _ = resolve(node)
    if not node:
        return None
    return node.get("items")


def _types(node: dict) -> set[str]:
    t = node.get("type")
    if t is None:
        return set()
    if isinstance(t, str):
        return {t}
    return {x for x in t if x != "null"}


def _parse_tz(tz: str) -> _dt.tzinfo:
    if tz == "Z":
        return _dt.timezone.utc
    sign = 1 if tz[0] == "+" else -1
    hours, minutes = int(tz[1:3]), int(tz[4:6])
    return _dt.timezone(sign * _dt.timedelta(hours=hours, minutes=minutes))


def parse_time(value: str, micro: bool) -> _dt.datetime:
    """Parse like Go's time.Parse with RFC3339 (Time) or RFC3339Micro (MicroTime)."""
    m = (_RFC3339_MICRO if micro else _RFC3339).match(value)
    if not m:
        layout = GO_MICROTIME_LAYOUT if micro else GO_TIME_LAYOUT
        raise DecodeError(f'parsing time "{value}" as "{layout}": cannot parse "{value}" as "{layout}"')
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7)
    if micro:
        usec = int(frac)
    else:
        usec = int((frac[1:] + "000000")[:6]) if frac else 0
    try:
        return _dt.datetime(year, month, day, hour, minute, second, usec, tzinfo=_parse_tz(m.group(8)))
    except ValueError as exc:
        raise DecodeError(f'parsing time "{value}": {exc}') from None


def format_time(when: _dt.datetime, micro: bool = False) -> str:
    when = when.astimezone(_dt.timezone.utc)
    if micro:
        return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond:06d}Z"
    return when.strftime("%Y-%m-%dT%H:%M:%SZ")


def now_time(micro: bool = False) -> str:
    return format_time(_dt.datetime.now(_dt.timezone.utc), micro)


def _json_type(value) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "null"


def _go_type(node: dict, ref: str | None) -> str:
    if ref:
        return ref.rsplit(".", 1)[-1]
    types = _types(node)
    if "integer" in types:
        return "int64" if node.get("format") == "int64" else "int32"
    if "number" in types:
        return "float64"
    if "boolean" in types:
        return "bool"
    if "string" in types:
        return "string"
    if "array" in types:
        return "[]" + _go_type(*resolve(node.get("items") or {}))
    if "additionalProperties" in node:
        return "map[string]" + _go_type(*resolve(node["additionalProperties"]))
    return "struct"


class Decoder:
    """Decode one request body into the canonical stored form of a kind."""

    def __init__(self, root: str, strict: bool = False):
        self.root = root
        self.strict = strict
        self.unknown: list[str] = []

    def decode(self, obj) -> dict:
        if not isinstance(obj, dict):
            raise DecodeError(f"json: cannot unmarshal {_json_type(obj)} into Go value of type "
                              f"{self.root.rsplit('.', 1)[-1]}")
        out = self._value(obj, {"$ref": self.root}, "", self.root.rsplit(".", 1)[-1])
        if self.strict and self.unknown:
            raise DecodeError("strict decoding error: " + ", ".join(
                f'unknown field "{path}"' for path in self.unknown))
        return out

    def _value(self, value, node, path, owner):
        node, ref = resolve(node)
        if value is None:
            return None
        if node is None:
            return value
        if ref in (TIME, MICROTIME):
            if not isinstance(value, str):
                self._type_error(value, path, owner, "Time")
            return format_time(parse_time(value, ref == MICROTIME), ref == MICROTIME)
        if ref == QUANTITY:
            if isinstance(value, bool) or not isinstance(value, (str, int, float)):
                self._type_error(value, path, owner, "Quantity")
            if isinstance(value, float) and value.is_integer():
                value = int(value)
            return str(value)
        if ref == INT_OR_STRING or node.get("x-kubernetes-int-or-string"):
            if isinstance(value, bool) or not isinstance(value, (str, int)):
                self._type_error(value, path, owner, "IntOrString")
            return value
        if ref in (FIELDS_V1, RAW_EXTENSION) or node.get("x-kubernetes-preserve-unknown-fields"):
            return value
        types = _types(node)
        if "properties" in node:
            if not isinstance(value, dict):
                self._type_error(value, path, owner, _go_type(node, ref))
            return self._struct(value, node, ref or owner, path)
        if "array" in types:
            if not isinstance(value, list):
                self._type_error(value, path, owner, _go_type(node, ref))
            sub = node.get("items") or {}
            out = []
            for i, item in enumerate(value):
                decoded = self._value(item, sub, f"{path}[{i}]", owner)
                out.append(decoded)
            return out
        if "additionalProperties" in node:
            if not isinstance(value, dict):
                self._type_error(value, path, owner, _go_type(node, ref))
            sub = node["additionalProperties"]
            out = {}
            for key, item in value.items():
                decoded = self._value(item, sub, f"{path}.{key}" if path else key, owner)
                if decoded is not None or not isinstance(sub, dict):
                    out[key] = decoded
            return out
        if "integer" in types:
            if isinstance(value, bool) or not isinstance(value, int):
                self._type_error(value, path, owner, _go_type(node, ref))
            limit = 2 ** 63 if node.get("format") == "int64" else 2 ** 31
            if not -limit <= value < limit:
                raise DecodeError(f"json: cannot unmarshal number {value} into Go struct field "
                                  f"{owner}.{path} of type {_go_type(node, ref)}")
            return value
        if "number" in types:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                self._type_error(value, path, owner, "float64")
            return value
        if "boolean" in types:
            if not isinstance(value, bool):
                self._type_error(value, path, owner, "bool")
            return value
        if "string" in types:
            if not isinstance(value, str):
                self._type_error(value, path, owner, "string")
            return value
        if "object" in types:  # free-form object
            return value
        return value

    def _struct(self, value: dict, node: dict, owner: str, path: str) -> dict:
        props = node["properties"]
        required = set(node.get("required") or ())
        short_owner = owner.rsplit(".", 1)[-1]
        out = {}
        for key, item in value.items():
            sub_path = f"{path}.{key}" if path else key
            if key not in props:
                self.unknown.append(sub_path)
                continue
            decoded = self._value(item, props[key], sub_path, short_owner)
            if decoded is None:
                continue
            if key not in required and self._omit(decoded, props[key], owner, key):
                continue
            out[key] = decoded
        return out

    @staticmethod
    def _omit(value, prop: dict, owner: str, key: str) -> bool:
        """Go's omitempty, as far as the schema lets us tell."""
        if (owner, key) in _OMIT_ZERO and value in (False, 0):
            return True
        node, ref = resolve(prop)
        if node is None:
            return False
        if ref is None and "properties" not in node:
            types = _types(node)
            if value == [] and "array" in types:
                return True
            if value == {} and "additionalProperties" in node:
                return True
            if value == "" and "string" in types and owner not in _POINTER_STRUCTS:
                return True
        return False

    def _type_error(self, value, path, owner, go_type):
        raise DecodeError(f"json: cannot unmarshal {_json_type(value)} into Go struct field "
                          f"{owner}.{path} of type {go_type}")


def decode(obj, root: str, strict: bool = False) -> tuple[dict, list[str]]:
    """Decode ``obj`` as definition ``root``; return (canonical object, unknown field paths)."""
    dec = Decoder(root, strict)
    out = dec.decode(obj)
    return out, dec.unknown
