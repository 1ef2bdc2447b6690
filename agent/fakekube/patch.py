"""The three patch formats the API server accepts, written from their specifications.

- JSON merge patch (RFC 7386): objects merge, ``null`` deletes, everything else (lists included)
  replaces.
- JSON patch (RFC 6902): a list of add/remove/replace/move/copy/test operations on JSON pointers.
- Strategic merge patch (Kubernetes): like a merge patch, but a list whose field carries
  ``x-kubernetes-patch-strategy: merge`` merges element-wise (by its ``patch-merge-key`` for lists of
  objects, as a set for lists of scalars), and the patch may carry the directives ``$patch``
  (``replace`` / ``delete`` / ``merge``), ``$retainKeys``, ``$deleteFromPrimitiveList/<field>`` and
  ``$setElementOrder/<field>``. A list *without* a strategy (``spec.taints``, for one) is replaced
  whole, exactly as in a JSON merge patch.
"""

from __future__ import annotations

import copy
import json

from . import schema


class PatchError(Exception):
    """A malformed patch (HTTP 400 on the real server)."""


class PatchApplyError(Exception):
    """A well-formed patch that cannot be applied (a failed JSON patch ``test``; HTTP 422)."""


class PatchInternalError(Exception):
    """A strategic merge patch the server fails on (e.g. an element without its merge key; 500)."""


_DELETE = object()  # a map that the patch asks to delete


# --------------------------------------------------------------------------- JSON merge patch

def json_merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = json_merge_patch(result.get(key), value)
    return result


# --------------------------------------------------------------------------- JSON patch

def _unescape(token: str) -> str:
    return token.replace("~1", "/").replace("~0", "~")


def _pointer(path: str) -> list[str]:
    if not isinstance(path, str):
        raise PatchError(f"invalid JSON pointer {path!r}")
    if path == "":
        return []
    if not path.startswith("/"):
        raise PatchApplyError(f'JSON pointer must be empty or start with a "/": {path}')
    return [_unescape(t) for t in path[1:].split("/")]


def _index(container: list, token: str, allow_end: bool) -> int:
    if token == "-" and allow_end:
        return len(container)
    if not token.isdigit() or (len(token) > 1 and token[0] == "0"):
        raise PatchApplyError(f"invalid array index {token!r}")
    idx = int(token)
    limit = len(container) if allow_end else len(container) - 1
    if idx > limit:
        raise PatchApplyError(f"array index out of bounds: {idx}")
    return idx


def _parent(doc, tokens: list[str], path: str):
    cur = doc
    for token in tokens[:-1]:
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchApplyError(f"doc is missing path: {path}")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, False)]
        else:
            raise PatchApplyError(f"doc is missing path: {path}")
    return cur


def _get(doc, path: str):
    cur = doc
    for token in _pointer(path):
        if isinstance(cur, dict):
            if token not in cur:
                raise PatchApplyError(f"doc is missing path: {path}")
            cur = cur[token]
        elif isinstance(cur, list):
            cur = cur[_index(cur, token, False)]
        else:
            raise PatchApplyError(f"doc is missing path: {path}")
    return cur


def _add(doc, path: str, value):
    tokens = _pointer(path)
    if not tokens:
        return copy.deepcopy(value)
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        parent[last] = copy.deepcopy(value)
    elif isinstance(parent, list):
        parent.insert(_index(parent, last, True), copy.deepcopy(value))
    else:
        raise PatchApplyError(f"doc is missing path: {path}")
    return doc


def _remove(doc, path: str):
    tokens = _pointer(path)
    if not tokens:
        raise PatchApplyError("cannot remove the whole document")
    parent = _parent(doc, tokens, path)
    last = tokens[-1]
    if isinstance(parent, dict):
        if last not in parent:
            raise PatchApplyError(f"unable to remove nonexistent key: {last}: missing value")
        return parent.pop(last)
    if isinstance(parent, list):
        return parent.pop(_index(parent, last, False))
    raise PatchApplyError(f"doc is missing path: {path}")


def _equal(a, b) -> bool:
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def json_patch(doc, operations):
    if not isinstance(operations, list):
        raise PatchError("json: cannot unmarshal object into Go value of type jsonpatch.Patch")
    doc = copy.deepcopy(doc)
    for op in operations:
        if not isinstance(op, dict):
            raise PatchError("json: cannot unmarshal into Go value of type jsonpatch.Operation")
        kind = op.get("op")
        path = op.get("path")
        if kind in ("add", "replace", "test") and "value" not in op:
            raise PatchApplyError(f"missing value for {kind} operation on {path}")
        if kind == "add":
            doc = _add(doc, path, op["value"])
        elif kind == "remove":
            _remove(doc, path)
        elif kind == "replace":
            tokens = _pointer(path)
            if not tokens:
                doc = copy.deepcopy(op["value"])
                continue
            parent = _parent(doc, tokens, path)
            last = tokens[-1]
            if isinstance(parent, dict):
                if last not in parent:
                    raise PatchApplyError(
                        f"replace operation does not apply: doc is missing key: {path}: missing value")
                parent[last] = copy.deepcopy(op["value"])
            elif isinstance(parent, list):
                parent[_index(parent, last, False)] = copy.deepcopy(op["value"])
            else:
                raise PatchApplyError(f"doc is missing path: {path}")
        elif kind == "move":
            value = _remove(doc, op.get("from"))
            doc = _add(doc, path, value)
        elif kind == "copy":
            doc = _add(doc, path, _get(doc, op.get("from")))
        elif kind == "test":
            try:
                current = _get(doc, path)
            except PatchApplyError:
                current = None
            if not _equal(current, op["value"]):
                raise PatchApplyError(f"testing value {path} failed: test failed")
        else:
            raise PatchApplyError(f"Unexpected kind: {kind}")
    return doc


# --------------------------------------------------------------------------- strategic merge patch

def _strategy(field_schema) -> tuple[bool, bool, str | None]:
    """(merge, retainKeys, merge key) for a field's schema node."""
    if not field_schema:
        return False, False, None
    strategies = (field_schema.get("x-kubernetes-patch-strategy") or "").split(",")
    return "merge" in strategies, "retainKeys" in strategies, field_schema.get("x-kubernetes-patch-merge-key")


def strategic_merge_patch(original: dict, patch: dict, root: str) -> dict:
    if not isinstance(patch, dict):
        raise PatchError("strategic merge patch must be a JSON object")
    result = _merge_map(copy.deepcopy(original) if original else {}, patch, {"$ref": root})
    if result is _DELETE:
        return {}
    return result


def _fresh(value, node):
    """A patch value placed where the original has nothing: directives and nulls removed."""
    if isinstance(value, dict):
        return _merge_map({}, value, node)
    if isinstance(value, list):
        return _merge_list([], value, node, None)
    return copy.deepcopy(value)


def _merge_map(original: dict, patch: dict, node) -> dict | object:
    directive = patch.get("$patch")
    if directive == "replace":
        return {k: copy.deepcopy(v) for k, v in patch.items() if k != "$patch"}
    if directive == "delete":
        return _DELETE
    if directive not in (None, "merge"):
        raise PatchError(f"Unknown patch type: {directive!r} in map: {patch}")
    retain = patch.get("$retainKeys")
    if retain is not None:
        if not isinstance(retain, list):
            raise PatchError("invalid patch: $retainKeys must be a list")
        for key in patch:
            if not key.startswith("$") and key not in retain:
                raise PatchError(f"The content of the patch doesn't match retainKeys list: {key} not in {retain}")
    orders = {}
    for key, value in patch.items():
        if key.startswith("$deleteFromPrimitiveList/"):
            name = key.split("/", 1)[1]
            if not isinstance(value, list):
                raise PatchError(f"invalid patch: {key} must be a list")
            if isinstance(original.get(name), list):
                original[name] = [x for x in original[name] if x not in value]
        elif key.startswith("$setElementOrder/"):
            if not isinstance(value, list):
                raise PatchError(f"invalid patch: {key} must be a list")
            orders[key.split("/", 1)[1]] = value
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        sub = schema.child(node, key)
        if value is None:
            original.pop(key, None)
            continue
        current = original.get(key)
        if isinstance(value, dict) and isinstance(current, dict):
            merged = _merge_map(current, value, sub)
        elif isinstance(value, list) and isinstance(current, list):
            merged = _merge_list(current, value, sub, orders.get(key))
        else:
            merged = _fresh(value, sub)
        if merged is _DELETE:
            original.pop(key, None)
        else:
            original[key] = merged
    for name, order in orders.items():
        if name not in patch and isinstance(original.get(name), list):
            _, _, merge_key = _strategy(schema.child(node, name))
            original[name] = _apply_order(original[name], order, merge_key, original[name])
    if retain is not None:
        for key in list(original):
            if key not in retain:
                del original[key]
    return original


def _merge_list(original: list, patch: list, node, order):
    merge, _, merge_key = _strategy(node)
    item_schema = schema.items(node)
    if not merge:
        return [_fresh(x, item_schema) if isinstance(x, dict) else copy.deepcopy(x) for x in patch]
    if merge_key:
        if any(isinstance(x, dict) and x.get("$patch") == "replace" for x in patch):
            return [_fresh(x, item_schema) for x in patch
                    if not (isinstance(x, dict) and x.get("$patch") == "replace")]
        result = list(original)
        for element in patch:
            if not isinstance(element, dict):
                raise PatchError(f"cannot merge a non-map element into a list of maps: {element!r}")
            directive = element.get("$patch")
            if directive not in (None, "merge", "delete"):
                raise PatchError(f"Unknown patch type: {directive!r} in map: {element}")
            if merge_key not in element:
                raise PatchInternalError(f"map: {element} does not contain declared merge key: {merge_key}")
            wanted = element[merge_key]
            if directive == "delete":
                result = [x for x in result if not (isinstance(x, dict) and x.get(merge_key) == wanted)]
                continue
            for idx, existing in enumerate(result):
                if isinstance(existing, dict) and existing.get(merge_key) == wanted:
                    merged = _merge_map(existing, element, item_schema)
                    if merged is _DELETE:
                        result.pop(idx)
                    else:
                        result[idx] = merged
                    break
            else:
                merged = _fresh(element, item_schema)
                if merged is not _DELETE:
                    result.append(merged)
    else:
        result = list(original)
        seen = {json.dumps(x, sort_keys=True) for x in result}
        for element in patch:
            if isinstance(element, dict):
                raise PatchError(f"cannot merge a map into a list of primitives: {element!r}")
            token = json.dumps(element, sort_keys=True)
            if token not in seen:
                seen.add(token)
                result.append(copy.deepcopy(element))
    if order is not None:
        result = _apply_order(result, order, merge_key, original)
    return result


def _apply_order(result: list, order: list, merge_key: str | None, original: list) -> list:
    """``$setElementOrder``: listed items take the listed order; server-only items keep their place."""
    def key_of(item):
        if merge_key and isinstance(item, dict):
            return json.dumps(item.get(merge_key), sort_keys=True)
        return json.dumps(item, sort_keys=True)

    order_keys = [key_of(x) for x in order]
    position = {k: i for i, k in enumerate(order_keys)}
    listed = sorted((x for x in result if key_of(x) in position), key=lambda x: position[key_of(x)])
    server_only = [x for x in result if key_of(x) not in position]
    original_index = {key_of(x): i for i, x in enumerate(original)}
    inf = float("inf")
    merged, i, j = [], 0, 0
    while i < len(listed) and j < len(server_only):
        a, b = listed[i], server_only[j]
        if original_index.get(key_of(b), inf) < original_index.get(key_of(a), inf):
            merged.append(b)
            j += 1
        else:
            merged.append(a)
            i += 1
    merged.extend(listed[i:])
    merged.extend(server_only[j:])
    return merged
