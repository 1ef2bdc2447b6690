"""The in-memory object store of the fake API server: resources, resourceVersion, writes, watches.

Everything a write does happens under one lock, the way etcd serialises revisions: the
``resourceVersion`` is a cluster-wide counter that moves on every write (never on a no-op update),
an update carrying a stale ``metadata.resourceVersion`` is a 409 Conflict, and a patch is applied to
the current object and validated inside the same critical section, so it can never lose a
concurrent write.
"""

from __future__ import annotations

import base64
import collections
import copy
import json
import queue
import random
import re
import threading
import uuid
from dataclasses import dataclass, field
from typing import Callable

from . import patch as patchlib
from . import schema, validation
from .validation import FieldError

# --------------------------------------------------------------------------- errors


class ApiError(Exception):
    """An error answered with a ``Status`` object, as the real server does."""

    def __init__(self, code: int, reason: str, message: str, details: dict | None = None,
                 headers: dict | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.details = details
        self.headers = headers or {}

    def status(self) -> dict:
        out = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
               "message": self.message, "reason": self.reason, "code": self.code}
        if self.details:
            out["details"] = self.details
        if not self.reason:
            del out["reason"]
        return out


def _details(res: "Resource", name: str | None, **extra) -> dict:
    details = {}
    if name:
        details["name"] = name
    if res.group:
        details["group"] = res.group
    details["kind"] = res.plural
    details.update(extra)
    return details


def not_found(res: "Resource", name: str) -> ApiError:
    return ApiError(404, "NotFound", f'{res.qualified} "{name}" not found', _details(res, name))


def already_exists(res: "Resource", name: str) -> ApiError:
    return ApiError(409, "AlreadyExists", f'{res.qualified} "{name}" already exists', _details(res, name))


def conflict(res: "Resource", name: str, why: str) -> ApiError:
    return ApiError(409, "Conflict", f'Operation cannot be fulfilled on {res.qualified} "{name}": {why}',
                    _details(res, name))


STALE = "the object has been modified; please apply your changes to the latest version and try again"


def bad_request(message: str) -> ApiError:
    return ApiError(400, "BadRequest", message)


def internal_error(message: str) -> ApiError:
    return ApiError(500, "InternalError", f"Internal error occurred: {message}",
                    {"causes": [{"message": message}]})


def invalid(res: "Resource", name: str, errors: list[FieldError]) -> ApiError:
    kind = res.kind + (f".{res.group}" if res.group else "")
    if len(errors) == 1:
        summary = str(errors[0])
    else:
        summary = "[" + ", ".join(str(e) for e in errors) + "]"
    details = {"name": name, "kind": res.kind,
               "causes": [{"reason": e.reason, "message": e.message(), "field": e.field} for e in errors]}
    if res.group:
        details["group"] = res.group
    return ApiError(422, "Invalid", f'{kind} "{name}" is invalid: {summary}', details)


def method_not_allowed(method: str) -> ApiError:
    return ApiError(405, "MethodNotAllowed", "the server does not allow this method on the requested resource", {})


# --------------------------------------------------------------------------- resources

def _events_core_to_v1(obj: dict) -> dict:
    out = {"metadata": obj.get("metadata", {})}
    mapping = (("involvedObject", "regarding"), ("related", "related"), ("message", "note"),
               ("reason", "reason"), ("type", "type"), ("action", "action"), ("eventTime", "eventTime"),
               ("series", "series"), ("reportingComponent", "reportingController"),
               ("reportingInstance", "reportingInstance"), ("source", "deprecatedSource"),
               ("firstTimestamp", "deprecatedFirstTimestamp"), ("lastTimestamp", "deprecatedLastTimestamp"),
               ("count", "deprecatedCount"))
    for core_key, v1_key in mapping:
        if core_key in obj:
            value = obj[core_key]
            if core_key == "series":
                value = {k: v for k, v in value.items() if k in ("count", "lastObservedTime")}
            out[v1_key] = value
    return out


def _events_v1_to_core(obj: dict) -> dict:
    out = {"metadata": obj.get("metadata", {})}
    mapping = (("regarding", "involvedObject"), ("related", "related"), ("note", "message"),
               ("reason", "reason"), ("type", "type"), ("action", "action"), ("eventTime", "eventTime"),
               ("series", "series"), ("reportingController", "reportingComponent"),
               ("reportingInstance", "reportingInstance"), ("deprecatedSource", "source"),
               ("deprecatedFirstTimestamp", "firstTimestamp"), ("deprecatedLastTimestamp", "lastTimestamp"),
               ("deprecatedCount", "count"))
    for v1_key, core_key in mapping:
        if v1_key in obj:
            out[core_key] = obj[v1_key]
    return out


_META_FIELDS = ("metadata.name", "metadata.namespace")
_POD_FIELDS = _META_FIELDS + ("spec.nodeName", "spec.restartPolicy", "spec.schedulerName",
                              "spec.serviceAccountName", "spec.hostNetwork", "status.phase", "status.podIP",
                              "status.nominatedNodeName")
_EVENT_FIELDS = _META_FIELDS + ("involvedObject.kind", "involvedObject.namespace", "involvedObject.name",
                                "involvedObject.uid", "involvedObject.apiVersion",
                                "involvedObject.resourceVersion", "involvedObject.fieldPath", "reason",
                                "reportingComponent", "source", "type")
_EVENT_V1_ALIASES = {"regarding.kind": "involvedObject.kind", "regarding.namespace": "involvedObject.namespace",
                     "regarding.name": "involvedObject.name", "regarding.uid": "involvedObject.uid",
                     "regarding.apiVersion": "involvedObject.apiVersion",
                     "regarding.resourceVersion": "involvedObject.resourceVersion",
                     "regarding.fieldPath": "involvedObject.fieldPath",
                     "reportingController": "reportingComponent", "deprecatedSource": "source"}


@dataclass(frozen=True)
class Resource:
    group: str
    version: str
    plural: str
    singular: str
    kind: str
    namespaced: bool
    definition: str
    storage: str
    verbs: tuple = ("create", "delete", "get", "list", "patch", "update", "watch")
    status: bool = False
    short_names: tuple = ()
    name_rule: Callable | None = None
    create_on_update: bool = False
    fields: tuple = _META_FIELDS
    field_aliases: dict = field(default_factory=dict, hash=False, compare=False)
    to_view: Callable | None = None
    from_view: Callable | None = None
    validate: Callable | None = None
    validate_update: Callable | None = None

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def qualified(self) -> str:
        return f"{self.plural}.{self.group}" if self.group else self.plural

    def view(self, stored: dict, with_type: bool = True) -> dict:
        obj = self.to_view(stored) if self.to_view else stored
        obj = copy.deepcopy(obj)
        if with_type:
            return {"kind": self.kind, "apiVersion": self.group_version, **obj}
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
        return obj

    def stored(self, view: dict) -> dict:
        obj = {k: v for k, v in view.items() if k not in ("kind", "apiVersion")}
        return self.from_view(obj) if self.from_view else obj


RESOURCES: list[Resource] = [
    Resource("", "v1", "nodes", "node", "Node", False, "io.k8s.api.core.v1.Node", "nodes", status=True,
             short_names=("no",), name_rule=validation.dns_subdomain,
             fields=("metadata.name", "spec.unschedulable"), validate=validation.node,
             validate_update=validation.node_update),
    Resource("", "v1", "pods", "pod", "Pod", True, "io.k8s.api.core.v1.Pod", "pods", status=True,
             short_names=("po",), name_rule=validation.dns_subdomain, fields=_POD_FIELDS),
    Resource("", "v1", "namespaces", "namespace", "Namespace", False, "io.k8s.api.core.v1.Namespace",
             "namespaces", status=True, short_names=("ns",), name_rule=validation.dns_label,
             fields=("metadata.name", "status.phase")),
    Resource("", "v1", "configmaps", "configmap", "ConfigMap", True, "io.k8s.api.core.v1.ConfigMap",
             "configmaps", short_names=("cm",), name_rule=validation.dns_subdomain),
    Resource("", "v1", "events", "event", "Event", True, "io.k8s.api.core.v1.Event", "events",
             short_names=("ev",), create_on_update=True, fields=_EVENT_FIELDS,
             validate=lambda obj: validation.core_event(obj)),
    Resource("coordination.k8s.io", "v1", "leases", "lease", "Lease", True, "io.k8s.api.coordination.v1.Lease",
             "leases", name_rule=validation.dns_subdomain, validate=validation.lease),
    Resource("events.k8s.io", "v1", "events", "event", "Event", True, "io.k8s.api.events.v1.Event", "events",
             short_names=("ev",), create_on_update=True, fields=_EVENT_FIELDS, field_aliases=_EVENT_V1_ALIASES,
             to_view=_events_core_to_v1, from_view=_events_v1_to_core,
             validate=lambda obj: validation.core_event(obj, strict_v1=True)),
    # Dynamic Resource Allocation: one store per kind, seen through every version the server serves (their
    # shapes agree for what is stored here). DeviceTaintRule is served as v1 (1.37) and v1beta2 (1.36).
    *[Resource("resource.k8s.io", v, "resourceslices", "resourceslice", "ResourceSlice", False,
               f"io.k8s.api.resource.{v}.ResourceSlice", "resourceslices", name_rule=validation.dns_subdomain,
               fields=_META_FIELDS + ("spec.nodeName", "spec.driver"), validate=validation.resource_slice)
      for v in ("v1", "v1beta2")],
    *[Resource("resource.k8s.io", v, "devicetaintrules", "devicetaintrule", "DeviceTaintRule", False,
               f"io.k8s.api.resource.{v}.DeviceTaintRule", "devicetaintrules", status=True,
               name_rule=validation.dns_subdomain, validate=validation.device_taint_rule)
      for v in ("v1", "v1beta2")],
    Resource("resource.k8s.io", "v1", "resourceclaims", "resourceclaim", "ResourceClaim", True,
             "io.k8s.api.resource.v1.ResourceClaim", "resourceclaims", status=True, name_rule=validation.dns_subdomain),
    Resource("policy", "v1", "poddisruptionbudgets", "poddisruptionbudget", "PodDisruptionBudget", True,
             "io.k8s.api.policy.v1.PodDisruptionBudget", "poddisruptionbudgets", status=True, short_names=("pdb",),
             name_rule=validation.dns_subdomain, validate=validation.pod_disruption_budget),
]

TOKENREVIEWS = Resource("authentication.k8s.io", "v1", "tokenreviews", "tokenreview", "TokenReview", False,
                        "io.k8s.api.authentication.v1.TokenReview", "", verbs=("create",))

GROUPS = {  # group -> preferred version
    "coordination.k8s.io": "v1",
    "events.k8s.io": "v1",
    "authentication.k8s.io": "v1",
    "resource.k8s.io": "v1",
    "policy": "v1",
}
# The versions of a group the server serves, preferred first (FakeKube(resource_versions=...) narrows them).
GROUP_VERSIONS = {"resource.k8s.io": ("v1", "v1beta2")}
EVICTION_DEFINITION = "io.k8s.api.policy.v1.Eviction"


def find_resource(group: str, version: str, plural: str) -> Resource | None:
    for res in RESOURCES + [TOKENREVIEWS]:
        if res.group == group and res.version == version and res.plural == plural:
            return res
    return None


def core_resource(storage: str) -> Resource:
    """The storage-form resource for a helper-API name ("nodes", "leases", "events", ...)."""
    for res in RESOURCES:  # the first listed: core/v1 events before events.k8s.io, resource.k8s.io/v1 first
        if res.storage == storage:
            return res
    raise KeyError(f"unknown resource {storage!r}")


# --------------------------------------------------------------------------- selectors

_SET_REQ = re.compile(r"^\s*(\S+)\s+(in|notin)\s+\((.*)\)\s*$")
_CMP_REQ = re.compile(r"^\s*([^\s<>]+)\s*([<>])\s*(-?\d+)\s*$")


def _split_top(text: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in text:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return [p.strip() for p in parts if p.strip()]


def _check_label_key(key: str, selector: str):
    errs = validation.qualified_name(key)
    if errs:
        raise bad_request(f"unable to parse requirement: invalid label key \"{key}\": {errs[0]}")


def parse_label_selector(text: str | None) -> Callable[[dict], bool]:
    if not text:
        return lambda labels: True
    reqs = []
    for part in _split_top(text):
        m = _SET_REQ.match(part)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",") if v.strip()}
            _check_label_key(key, text)
            reqs.append((key, op, values))
            continue
        m = _CMP_REQ.match(part)
        if m:
            _check_label_key(m.group(1), text)
            reqs.append((m.group(1), m.group(2), int(m.group(3))))
            continue
        for op in ("!=", "==", "="):
            if op in part:
                key, value = (s.strip() for s in part.split(op, 1))
                _check_label_key(key, text)
                if validation.label_value(value):
                    raise bad_request(f"unable to parse requirement: invalid label value: \"{value}\"")
                reqs.append((key, "!=" if op == "!=" else "=", value))
                break
        else:
            if part.startswith("!"):
                _check_label_key(part[1:].strip(), text)
                reqs.append((part[1:].strip(), "!", None))
            else:
                _check_label_key(part, text)
                reqs.append((part, "exists", None))

    def match(labels: dict) -> bool:
        labels = labels or {}
        for key, op, value in reqs:
            present = key in labels
            if op == "in" and not (present and labels[key] in value):
                return False
            if op == "notin" and present and labels[key] in value:
                return False
            if op == "=" and not (present and labels[key] == value):
                return False
            if op == "!=" and present and labels[key] == value:
                return False
            if op == "exists" and not present:
                return False
            if op == "!" and present:
                return False
            if op in ("<", ">"):
                try:
                    have = int(labels[key]) if present else None
                except ValueError:
                    return False
                if have is None or (op == "<" and not have < value) or (op == ">" and not have > value):
                    return False
        return True

    return match


def _field_value(obj: dict, path: str) -> str:
    if path == "source":
        return (obj.get("source") or {}).get("component", "")
    cur = obj
    for part in path.split("."):
        if not isinstance(cur, dict):
            return ""
        cur = cur.get(part)
    if cur is None:
        if path == "spec.unschedulable" or path == "spec.hostNetwork":
            return "false"
        return ""
    if isinstance(cur, bool):
        return "true" if cur else "false"
    return str(cur)


def parse_field_selector(text: str | None, res: Resource) -> Callable[[dict], bool]:
    if not text:
        return lambda obj: True
    reqs = []
    for part in _split_top(text):
        for op in ("!=", "==", "="):
            if op in part:
                key, value = (s.strip() for s in part.split(op, 1))
                break
        else:
            raise bad_request(f"invalid selector: '{text}'; can't understand '{part}'")
        key = res.field_aliases.get(key, key)
        if key not in res.fields:
            raise bad_request(f'field label not supported: {key}')
        reqs.append((key, op != "!=", value))

    def match(obj: dict) -> bool:
        return all((_field_value(obj, key) == value) == equal for key, equal, value in reqs)

    return match


def selector_matches(selector: dict | None, labels: dict) -> bool:
    """A metav1.LabelSelector (matchLabels, matchExpressions): None matches nothing, {} everything."""
    if selector is None:
        return False
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and key in labels and labels[key] in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def _ready(pod: dict) -> bool:
    status = pod.get("status") or {}
    return status.get("phase") == "Running" and any(
        c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


# --------------------------------------------------------------------------- store


@dataclass
class WatchEvent:
    type: str  # ADDED, MODIFIED, DELETED
    rv: int
    storage: str
    namespace: str
    name: str
    obj: dict  # stored form after the write (for DELETED: the last state, with the deletion rv)
    old: dict | None


class Watcher:
    def __init__(self, storage: str):
        self.storage = storage
        self.queue: "queue.Queue[WatchEvent | None]" = queue.Queue()

    def put(self, event):
        self.queue.put(event)


_NAME_CHARS = "bcdfghjklmnpqrstvwxz2456789"


def _generate_suffix() -> str:
    return "".join(random.choice(_NAME_CHARS) for _ in range(5))


def _canonical(obj: dict) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


class Store:
    def __init__(self, history: int = 10000, start_rv: int = 100):
        self.lock = threading.RLock()
        self._rv = start_rv
        self._objects: dict[str, dict[tuple[str, str], dict]] = collections.defaultdict(dict)
        self._history: collections.deque[WatchEvent] = collections.deque()
        self._history_max = history
        self._compacted = 0  # events with rv <= this are gone
        self._watchers: list[Watcher] = []
        self._conflicts: dict[tuple[str, str, str], int] = {}

    # -- basic access -------------------------------------------------------------------------

    @property
    def resource_version(self) -> int:
        return self._rv

    def get_stored(self, storage: str, namespace: str, name: str) -> dict | None:
        return self._objects[storage].get((namespace or "", name))

    def items(self, storage: str, namespace: str | None = None) -> list[dict]:
        with self.lock:
            objs = sorted(self._objects[storage].items())
            return [o for (ns, _), o in objs if namespace is None or ns == namespace]

    def count(self, storage: str) -> int:
        with self.lock:
            return len(self._objects[storage])

    def namespace_exists(self, namespace: str) -> bool:
        return ("", namespace) in self._objects["namespaces"]

    # -- writes -------------------------------------------------------------------------------

    def _commit(self, storage: str, namespace: str, name: str, obj: dict | None, etype: str,
                old: dict | None) -> dict:
        self._rv += 1
        key = (namespace or "", name)
        if obj is not None:
            obj["metadata"]["resourceVersion"] = str(self._rv)
            self._objects[storage][key] = obj
            event_obj = obj
        else:
            self._objects[storage].pop(key, None)
            event_obj = copy.deepcopy(old)
            event_obj["metadata"]["resourceVersion"] = str(self._rv)
        event = WatchEvent(etype, self._rv, storage, namespace or "", name, event_obj, old)
        self._history.append(event)
        while len(self._history) > self._history_max:
            self._compacted = self._history.popleft().rv
        for watcher in list(self._watchers):
            if watcher.storage == storage:
                watcher.put(event)
        return event_obj

    def compact(self):
        """Forget the watch history (a later watch from an older resourceVersion gets 410 Gone)."""
        with self.lock:
            self._history.clear()
            self._compacted = self._rv

    def inject_conflicts(self, storage: str, namespace: str, name: str, times: int):
        with self.lock:
            self._conflicts[(storage, namespace or "", name)] = times

    def bump(self, storage: str, namespace: str, name: str) -> str:
        """A write by someone else that changes nothing but the resourceVersion."""
        with self.lock:
            old = self.get_stored(storage, namespace, name)
            if old is None:
                raise KeyError(f"{storage} {namespace}/{name} does not exist")
            new = copy.deepcopy(old)
            return self._commit(storage, namespace, name, new, "MODIFIED", old)["metadata"]["resourceVersion"]

    def _maybe_conflict(self, storage: str, namespace: str, name: str):
        key = (storage, namespace or "", name)
        left = self._conflicts.get(key)
        if left and self.get_stored(storage, namespace, name) is not None:
            self.bump(storage, namespace, name)
            if left <= 1:
                del self._conflicts[key]
            else:
                self._conflicts[key] = left - 1

    # -- the REST verbs ------------------------------------------------------------------------

    def _decode(self, res: Resource, body, strict: bool) -> tuple[dict, list[str]]:
        try:
            obj, unknown = schema.decode(body, res.definition, strict=strict)
        except schema.DecodeError as exc:
            raise bad_request(f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: {exc}') \
                from None
        if isinstance(body, dict):
            api_version, kind = body.get("apiVersion"), body.get("kind")
            if api_version and api_version != res.group_version:
                raise bad_request(f'the API version in the data ({api_version}) does not match the expected '
                                  f'API version ({res.group_version})')
            if kind and kind != res.kind:
                raise bad_request(f'{res.kind} in version "{res.version}" cannot be handled as a {res.kind}: '
                                  f'no kind "{kind}" is registered for version "{res.group_version}"')
        meta = obj.setdefault("metadata", {})
        meta.pop("managedFields", None)
        return obj, [f"unknown field \"{u}\"" for u in unknown]

    def _validate(self, res: Resource, obj: dict, old: dict | None = None):
        errs = validation.object_meta(obj.get("metadata", {}), res.namespaced,
                                      res.name_rule if old is None else None)
        if res.validate:
            errs.extend(res.validate(obj))
        if old is not None:
            for key in ("uid",):
                if obj["metadata"].get(key) != old["metadata"].get(key):
                    errs.append(FieldError("Invalid", f"metadata.{key}", obj["metadata"].get(key),
                                           "field is immutable"))
            if res.validate_update:
                errs.extend(res.validate_update(obj, old))
        if errs:
            raise invalid(res, obj.get("metadata", {}).get("name", ""), errs)

    def create(self, res: Resource, namespace: str, body, *, strict: bool = False, dry_run: bool = False,
               allow_status: bool = True) -> tuple[dict, list[str]]:
        view, warnings = self._decode(res, body, strict)
        obj = res.stored(view)
        meta = obj.setdefault("metadata", {})
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        with self.lock:
            if res.namespaced and not self.namespace_exists(namespace):
                raise ApiError(404, "NotFound", f'namespaces "{namespace}" not found',
                               {"name": namespace, "kind": "namespaces"})
            if not meta.get("name") and meta.get("generateName"):
                for _ in range(10):
                    candidate = meta["generateName"] + _generate_suffix()
                    if self.get_stored(res.storage, namespace, candidate) is None:
                        meta["name"] = candidate
                        break
            self._validate(res, obj)
            name = meta["name"]
            if meta.get("resourceVersion"):
                raise internal_error("resourceVersion should not be set on objects to be created")
            if self.get_stored(res.storage, namespace, name) is not None:
                raise already_exists(res, name)
            meta["uid"] = str(uuid.uuid4())
            meta["creationTimestamp"] = schema.now_time()
            meta.pop("deletionTimestamp", None)
            meta.pop("deletionGracePeriodSeconds", None)
            if res.storage in ("nodes", "pods", "namespaces"):
                obj.setdefault("spec", {})
                obj.setdefault("status", {})
            if res.storage == "pods" and not allow_status:
                obj["status"] = {"phase": "Pending", "qosClass": "BestEffort"}
            if res.storage == "namespaces":
                obj["status"] = {"phase": "Active"}
                obj["spec"] = {"finalizers": ["kubernetes"]}
                meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = name
            if dry_run:
                return res.view(obj), warnings
            stored = self._commit(res.storage, namespace, name, obj, "ADDED", None)
            return res.view(stored), warnings

    def get(self, res: Resource, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.get_stored(res.storage, namespace, name)
            if obj is None:
                raise not_found(res, name)
            return res.view(obj)

    def list(self, res: Resource, namespace: str | None, label_selector=None, field_selector=None,
             limit: int | None = None, continue_token: str | None = None) -> dict:
        match_labels = parse_label_selector(label_selector)
        match_fields = parse_field_selector(field_selector, res)
        start = None
        if continue_token:
            try:
                start = tuple(json.loads(base64.b64decode(continue_token))["start"])
            except Exception:  # noqa: BLE001 - any malformed token
                raise bad_request("continue key is not valid: illegal base64 data") from None
        with self.lock:
            rv = self._rv
            objs = sorted(self._objects[res.storage].items())
        out, next_key = [], None
        for key, obj in objs:
            if namespace is not None and key[0] != namespace:
                continue
            if start is not None and key < start:
                continue
            if not match_labels(obj["metadata"].get("labels")) or not match_fields(obj):
                continue
            if limit and len(out) >= limit:
                next_key = key
                break
            out.append(res.view(obj, with_type=False))
        meta = {"resourceVersion": str(rv)}
        if next_key is not None:
            meta["continue"] = base64.b64encode(json.dumps({"rv": rv, "start": list(next_key)}).encode()).decode()
        return {"kind": f"{res.kind}List", "apiVersion": res.group_version, "metadata": meta, "items": out}

    def _prepare_update(self, res: Resource, new: dict, old: dict, subresource: str | None):
        if res.status:
            if subresource == "status":
                if "spec" in old:
                    new["spec"] = copy.deepcopy(old["spec"])
                else:
                    new.pop("spec", None)
            else:
                if "status" in old:
                    new["status"] = copy.deepcopy(old["status"])
                else:
                    new.pop("status", None)
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if not meta.get("uid"):
            meta["uid"] = old_meta.get("uid")
        meta["creationTimestamp"] = old_meta.get("creationTimestamp")
        for key in ("deletionTimestamp", "deletionGracePeriodSeconds"):
            if key in old_meta:
                meta[key] = old_meta[key]
            else:
                meta.pop(key, None)
        if res.storage == "namespaces":
            meta.setdefault("labels", {})["kubernetes.io/metadata.name"] = old_meta["name"]

    def _apply_update(self, res: Resource, namespace: str, name: str, new: dict, old: dict,
                      subresource: str | None, dry_run: bool) -> dict:
        """Common tail of PUT and PATCH: precondition, strategy, validation, no-op detection, commit."""
        meta = new.setdefault("metadata", {})
        if meta.get("name") and meta["name"] != name:
            raise bad_request(f"the name of the object ({meta['name']}) does not match the name on the URL ({name})")
        meta["name"] = name
        if res.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise bad_request("the namespace of the provided object does not match the namespace sent on "
                                  "the request")
            meta["namespace"] = namespace
        else:
            meta.pop("namespace", None)
        wanted_rv = meta.get("resourceVersion")
        if wanted_rv:
            if not str(wanted_rv).isdigit():
                raise bad_request(f'invalid resource version: "{wanted_rv}"')
            if wanted_rv != old["metadata"]["resourceVersion"]:
                raise conflict(res, name, STALE)
        self._prepare_update(res, new, old, subresource)
        meta["resourceVersion"] = old["metadata"]["resourceVersion"]
        self._validate(res, new, old)
        if _canonical(new) == _canonical(old):
            return old  # a no-op write does not move resourceVersion
        if dry_run:
            return new
        return self._commit(res.storage, namespace, name, new, "MODIFIED", old)

    def update(self, res: Resource, namespace: str, name: str, body, *, subresource: str | None = None,
               strict: bool = False, dry_run: bool = False) -> tuple[int, dict, list[str]]:
        view, warnings = self._decode(res, body, strict)
        new = res.stored(view)
        with self.lock:
            self._maybe_conflict(res.storage, namespace, name)
            old = self.get_stored(res.storage, namespace, name)
            if old is None:
                if res.create_on_update and subresource is None:
                    if new.get("metadata", {}).get("name") not in (None, name):
                        raise bad_request(f"the name of the object ({new['metadata']['name']}) does not match "
                                          f"the name on the URL ({name})")
                    new.setdefault("metadata", {})["name"] = name
                    new["metadata"].pop("resourceVersion", None)
                    obj, w = self.create(res, namespace, res.view(new), strict=strict, dry_run=dry_run)
                    return 201, obj, warnings + w
                raise not_found(res, name)
            stored = self._apply_update(res, namespace, name, new, old, subresource, dry_run)
            return 200, res.view(stored), warnings

    def patch(self, res: Resource, namespace: str, name: str, content_type: str, patch_body,
              *, subresource: str | None = None, strict: bool = False, dry_run: bool = False
              ) -> tuple[dict, list[str]]:
        with self.lock:
            self._maybe_conflict(res.storage, namespace, name)
            old = self.get_stored(res.storage, namespace, name)
            if old is None:
                raise not_found(res, name)
            current = res.view(old)
            try:
                if content_type == "application/json-patch+json":
                    patched = patchlib.json_patch(current, patch_body)
                elif content_type == "application/merge-patch+json":
                    if not isinstance(patch_body, dict):
                        raise patchlib.PatchError(
                            "json: cannot unmarshal into Go value of type map[string]interface {}")
                    patched = patchlib.json_merge_patch(current, patch_body)
                elif content_type == "application/strategic-merge-patch+json":
                    patched = patchlib.strategic_merge_patch(current, patch_body, res.definition)
                elif content_type.startswith("application/apply-patch"):
                    raise ApiError(415, "UnsupportedMediaType",
                                   "fakekube does not implement server-side apply (application/apply-patch+yaml)",
                                   {})
                else:
                    raise ApiError(415, "UnsupportedMediaType",
                                   'the body of the request was in an unknown format - accepted media types '
                                   'include: application/json-patch+json, application/merge-patch+json, '
                                   'application/apply-patch+yaml, application/strategic-merge-patch+json', {})
            except patchlib.PatchError as exc:
                raise bad_request(str(exc)) from None
            except patchlib.PatchApplyError as exc:
                raise ApiError(422, "Invalid", "the server rejected our request due to an error in our request",
                               {"causes": [{"reason": "UnexpectedServerResponse", "message": str(exc)}]}) from None
            except patchlib.PatchInternalError as exc:
                raise internal_error(str(exc)) from None
            if not isinstance(patched, dict):
                raise bad_request("the patched object is not a JSON object")
            view, warnings = self._decode(res, patched, strict)
            new = res.stored(view)
            stored = self._apply_update(res, namespace, name, new, old, subresource, dry_run)
            return res.view(stored), warnings

    def delete(self, res: Resource, namespace: str, name: str, options: dict | None = None,
               dry_run: bool = False) -> dict:
        options = options or {}
        pre = options.get("preconditions") or {}
        with self.lock:
            old = self.get_stored(res.storage, namespace, name)
            if old is None:
                raise not_found(res, name)
            meta = old["metadata"]
            if pre.get("uid") and pre["uid"] != meta.get("uid"):
                raise conflict(res, name, f"Precondition failed: UID in precondition: {pre['uid']}, "
                                          f"UID in object meta: {meta.get('uid')}")
            if pre.get("resourceVersion") and pre["resourceVersion"] != meta.get("resourceVersion"):
                raise conflict(res, name, f"Precondition failed: ResourceVersion in precondition: "
                                          f"{pre['resourceVersion']}, ResourceVersion in object meta: "
                                          f"{meta.get('resourceVersion')}")
            if dry_run:
                last = old
            else:
                last = self._commit(res.storage, namespace, name, None, "DELETED", old)
            if res.storage == "pods":
                return res.view(last)
            return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success",
                    "details": _details(res, name, uid=meta.get("uid"))}

    # -- the Eviction subresource (policy/v1) ------------------------------------------------------

    def evict(self, namespace: str, name: str, body, *, dry_run: bool = False) -> dict:
        """POST pods/NAME/eviction, as the real server's eviction REST does it: a pod covered by a
        PodDisruptionBudget is deleted only when the budget allows one more disruption, else 429 TooManyRequests
        (the caller waits and retries); a pod covered by two budgets is a 500; a pod that is not running (Pending,
        Succeeded, Failed) is deleted without consulting a budget. The disruption controller's arithmetic is
        done at the request (healthy = Running and Ready pods the selector matches), so a replacement pod that
        becomes ready lets the next eviction through."""
        pods = core_resource("pods")
        try:
            obj, _ = schema.decode(body, EVICTION_DEFINITION)
        except schema.DecodeError as exc:
            raise bad_request(f"Eviction in version \"v1\" cannot be handled as a Eviction: {exc}") from None
        meta = obj.get("metadata") or {}
        if meta.get("name") and meta["name"] != name:
            raise bad_request("name in URL does not match name in Eviction object")
        options = obj.get("deleteOptions") or {}
        dry_run = dry_run or "All" in (options.get("dryRun") or [])
        with self.lock:
            pod = self.get_stored("pods", namespace, name)
            if pod is None:
                raise not_found(pods, name)
            phase = (pod.get("status") or {}).get("phase", "")
            if phase == "Running":
                budgets = [b for b in self.items("poddisruptionbudgets", namespace)
                           if selector_matches((b.get("spec") or {}).get("selector"),
                                               (pod["metadata"].get("labels") or {}))]
                if len(budgets) > 1:
                    raise internal_error("This pod has more than one PodDisruptionBudget, which the eviction "
                                         "subresource does not support.")
                if budgets:
                    allowed, needs, healthy = self._disruptions_allowed(namespace, budgets[0])
                    if allowed <= 0:
                        pdb = budgets[0]["metadata"]["name"]
                        raise ApiError(429, "TooManyRequests", "Cannot evict pod as it would violate the pod's "
                                       "disruption budget.", {"causes": [{
                                           "reason": "DisruptionBudget",
                                           "message": f"The disruption budget {pdb} needs {needs} healthy pods "
                                                      f"and has {healthy} currently"}]})
            self.delete(pods, namespace, name, options, dry_run=dry_run)
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success", "code": 201}

    def _disruptions_allowed(self, namespace: str, pdb: dict) -> tuple[int, int, int]:
        spec = pdb.get("spec") or {}
        matching = [p for p in self.items("pods", namespace)
                    if selector_matches(spec.get("selector"), p["metadata"].get("labels") or {})
                    and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")]
        healthy = sum(1 for p in matching if _ready(p))
        expected = len(matching)

        def count(v, round_up: bool) -> int:
            if isinstance(v, str) and v.endswith("%"):
                share = expected * int(v[:-1]) / 100.0
                return int(-(-share // 1)) if round_up else int(share)
            return int(v)
        if spec.get("maxUnavailable") is not None:
            needs = expected - count(spec["maxUnavailable"], True)
        else:
            needs = count(spec.get("minAvailable", 1), True)
        return healthy - needs, needs, healthy

    # -- helper-API writes (bypass the REST strategy: "someone else" writes the whole object) -----

    def mutate(self, storage: str, namespace: str, name: str, fn: Callable[[dict], None]) -> dict:
        res = core_resource(storage)
        with self.lock:
            old = self.get_stored(storage, namespace, name)
            if old is None:
                raise KeyError(f"{storage} {namespace}/{name} does not exist")
            new = copy.deepcopy(res.view(old, with_type=False))
            fn(new)
            view, _ = self._decode(res, new, False)
            new = res.stored(view)
            new["metadata"].update({k: old["metadata"][k] for k in ("uid", "creationTimestamp", "name")
                                    if k in old["metadata"]})
            if res.namespaced:
                new["metadata"]["namespace"] = namespace
            new["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            self._validate(res, new, old)
            if _canonical(new) == _canonical(old):
                return res.view(old)
            return res.view(self._commit(storage, namespace, name, new, "MODIFIED", old))

    # -- watch --------------------------------------------------------------------------------

    def watch(self, storage: str, since_rv: int | None, initial: Callable[[], list]) -> tuple[Watcher, list]:
        """Register a watcher; return it with the events to send first (replayed or synthetic ADDED)."""
        with self.lock:
            watcher = Watcher(storage)
            if since_rv is None:
                backlog = [WatchEvent("ADDED", int(o["metadata"]["resourceVersion"]), storage,
                                      o["metadata"].get("namespace", ""), o["metadata"]["name"], o, None)
                           for o in initial()]
            else:
                if since_rv < self._compacted:
                    raise ApiError(410, "Expired", f"too old resource version: {since_rv} ({self._compacted + 1})")
                backlog = [e for e in self._history if e.rv > since_rv and e.storage == storage]
            self._watchers.append(watcher)
            return watcher, backlog

    def unwatch(self, watcher: Watcher):
        with self.lock:
            if watcher in self._watchers:
                self._watchers.remove(watcher)

    def close_watchers(self):
        with self.lock:
            for watcher in self._watchers:
                watcher.put(None)
            self._watchers.clear()


__all__ = ["ApiError", "Resource", "RESOURCES", "TOKENREVIEWS", "GROUPS", "GROUP_VERSIONS", "Store", "find_resource",
           "core_resource", "parse_label_selector", "parse_field_selector", "selector_matches"]
