"""The API server's validation rules that a client of these kinds can trip over (HTTP 422).

Written from the API conventions and the documented validation messages: object names, label and
annotation keys and values, node taints, Leases, and Events (core/v1 and the stricter
events.k8s.io/v1).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass

_DNS1123_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS1123_SUBDOMAIN = re.compile(rf"^{_DNS1123_LABEL}(\.{_DNS1123_LABEL})*$")
_DNS1123_LABEL_RE = re.compile(rf"^{_DNS1123_LABEL}$")
_QUALIFIED_NAME = re.compile(r"^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")
_LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")

TAINT_EFFECTS = ("NoSchedule", "PreferNoSchedule", "NoExecute")
ANNOTATIONS_MAX_BYTES = 256 * 1024
EVENT_NOTE_MAX = 1024
EVENT_FIELD_MAX = 128


@dataclass
class FieldError:
    type: str  # Required, Invalid, NotSupported, Duplicate, TooLong, Forbidden
    field: str
    value: object = None
    detail: str = ""

    _REASONS = {
        "Required": ("FieldValueRequired", "Required value"),
        "Invalid": ("FieldValueInvalid", "Invalid value"),
        "NotSupported": ("FieldValueNotSupported", "Unsupported value"),
        "Duplicate": ("FieldValueDuplicate", "Duplicate value"),
        "TooLong": ("FieldValueTooLong", "Too long"),
        "Forbidden": ("FieldValueForbidden", "Forbidden"),
    }

    @property
    def reason(self) -> str:
        return self._REASONS[self.type][0]

    def message(self) -> str:
        label = self._REASONS[self.type][1]
        if self.type in ("Required", "Forbidden", "TooLong"):
            body = label + (f": {self.detail}" if self.detail else "")
        else:
            body = f"{label}: {json.dumps(self.value)}" + (f": {self.detail}" if self.detail else "")
        return body

    def __str__(self) -> str:
        return f"{self.field}: {self.message()}"


def dns_subdomain(value: str) -> list[str]:
    errs = []
    if len(value) > 253:
        errs.append("must be no more than 253 characters")
    if not _DNS1123_SUBDOMAIN.match(value):
        errs.append("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                    "and must start and end with an alphanumeric character (e.g. 'example.com', regex used for "
                    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')")
    return errs


def dns_label(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _DNS1123_LABEL_RE.match(value):
        errs.append("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must "
                    "start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for "
                    "validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')")
    return errs


def qualified_name(value: str) -> list[str]:
    errs = []
    parts = value.split("/")
    if len(parts) == 1:
        name = parts[0]
    elif len(parts) == 2:
        prefix, name = parts
        if not prefix:
            errs.append("prefix part must be non-empty")
        else:
            errs.extend("prefix part " + e for e in dns_subdomain(prefix))
    else:
        return ["a qualified name must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]') with an optional DNS subdomain prefix "
                "and '/' (e.g. 'example.com/MyName')"]
    if not name:
        errs.append("name part must be non-empty")
    elif len(name) > 63:
        errs.append("name part must be no more than 63 characters")
    elif not _QUALIFIED_NAME.match(name):
        errs.append("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end "
                    "with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for "
                    "validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')")
    return errs


def label_value(value: str) -> list[str]:
    errs = []
    if len(value) > 63:
        errs.append("must be no more than 63 characters")
    if not _LABEL_VALUE.match(value):
        errs.append("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', "
                    "and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or "
                    "'12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')")
    return errs


def path_segment_name(value: str) -> list[str]:
    if value in (".", ".."):
        return [f"may not be '{value}'"]
    for bad in ("/", "%"):
        if bad in value:
            return [f"may not contain '{bad}'"]
    return []


def object_meta(meta: dict, namespaced: bool, name_rule=None) -> list[FieldError]:
    errs: list[FieldError] = []
    name = meta.get("name", "")
    if not name:
        if not meta.get("generateName"):
            errs.append(FieldError("Required", "metadata.name", detail="name or generateName is required"))
    else:
        for rule in (name_rule, path_segment_name):
            if rule is None:
                continue
            for msg in rule(name):
                errs.append(FieldError("Invalid", "metadata.name", name, msg))
    if namespaced and not meta.get("namespace"):
        errs.append(FieldError("Required", "metadata.namespace"))
    if not namespaced and meta.get("namespace"):
        errs.append(FieldError("Forbidden", "metadata.namespace", detail="not allowed on this type"))
    for key, value in (meta.get("labels") or {}).items():
        for msg in qualified_name(key):
            errs.append(FieldError("Invalid", "metadata.labels", key, msg))
        for msg in label_value(value):
            errs.append(FieldError("Invalid", "metadata.labels", value, msg))
    total = 0
    for key, value in (meta.get("annotations") or {}).items():
        for msg in qualified_name(key.lower()):
            errs.append(FieldError("Invalid", "metadata.annotations", key, msg))
        total += len(key) + len(value)
    if total > ANNOTATIONS_MAX_BYTES:
        errs.append(FieldError("TooLong", "metadata.annotations",
                               detail=f"may not be more than {ANNOTATIONS_MAX_BYTES} bytes"))
    return errs


def node(obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    seen: dict[str, set[str]] = {}
    for i, taint in enumerate((obj.get("spec") or {}).get("taints") or []):
        path = f"spec.taints[{i}]"
        key = taint.get("key", "")
        for msg in qualified_name(key) if key else ["name part must be non-empty"]:
            errs.append(FieldError("Invalid", f"{path}.key", key, msg))
        for msg in label_value(taint.get("value", "")):
            errs.append(FieldError("Invalid", f"{path}.value", taint.get("value", ""), msg))
        effect = taint.get("effect", "")
        if not effect:
            errs.append(FieldError("Required", f"{path}.effect"))
        elif effect not in TAINT_EFFECTS:
            errs.append(FieldError("NotSupported", f"{path}.effect", effect,
                                   "supported values: " + ", ".join(f'"{e}"' for e in TAINT_EFFECTS)))
        if key in seen.get(effect, set()):
            errs.append(FieldError("Duplicate", path, taint, "taints must be unique by key and effect pair"))
        seen.setdefault(effect, set()).add(key)
    return errs


def node_update(new: dict, old: dict) -> list[FieldError]:
    errs = []
    old_spec, new_spec = old.get("spec") or {}, new.get("spec") or {}
    if old_spec.get("providerID") and new_spec.get("providerID") != old_spec.get("providerID"):
        errs.append(FieldError("Forbidden", "spec.providerID",
                               detail='node updates may not change providerID except from "" to valid'))
    if old_spec.get("podCIDRs") and new_spec.get("podCIDRs") != old_spec.get("podCIDRs"):
        errs.append(FieldError("Forbidden", "spec.podCIDRs",
                               detail='node updates may not change podCIDR except from "" to valid'))
    return errs


def lease(obj: dict) -> list[FieldError]:
    errs = []
    spec = obj.get("spec") or {}
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and duration <= 0:
        errs.append(FieldError("Invalid", "spec.leaseDurationSeconds", duration, "must be greater than 0"))
    transitions = spec.get("leaseTransitions")
    if transitions is not None and transitions < 0:
        errs.append(FieldError("Invalid", "spec.leaseTransitions", transitions, "must be greater than or equal to 0"))
    if spec.get("preferredHolder") and not spec.get("strategy"):
        errs.append(FieldError("Forbidden", "spec.preferredHolder",
                               detail="may only be specified if `strategy` is defined"))
    return errs


def core_event(obj: dict, strict_v1: bool = False) -> list[FieldError]:
    """Validate an Event in its core/v1 storage form; ``strict_v1`` adds the events.k8s.io/v1 rules."""
    errs: list[FieldError] = []
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace", "")
    involved = obj.get("involvedObject") or {}
    controller_field = "reportingController" if strict_v1 else "reportingComponent"
    if not obj.get("eventTime"):
        if not involved.get("namespace"):
            if namespace not in ("", "default"):
                errs.append(FieldError("Invalid", "involvedObject.namespace", involved.get("namespace", ""),
                                       "does not match event.namespace"))
        elif namespace != involved.get("namespace"):
            errs.append(FieldError("Invalid", "involvedObject.namespace", involved.get("namespace", ""),
                                   "does not match event.namespace"))
    else:
        if not involved.get("namespace") and namespace not in ("default", "kube-system"):
            errs.append(FieldError("Invalid", "involvedObject.namespace", involved.get("namespace", ""),
                                   "does not match event.namespace"))
        controller = obj.get("reportingComponent", "")
        if not controller:
            errs.append(FieldError("Required", controller_field))
        else:
            for msg in qualified_name(controller):
                errs.append(FieldError("Invalid", controller_field, controller, msg))
        instance = obj.get("reportingInstance", "")
        if not instance:
            errs.append(FieldError("Required", "reportingInstance"))
        elif len(instance) > EVENT_FIELD_MAX:
            errs.append(FieldError("Invalid", "reportingInstance", "",
                                   f"can have at most {EVENT_FIELD_MAX} characters"))
        action = obj.get("action", "")
        if not action:
            errs.append(FieldError("Required", "action"))
        elif len(action) > EVENT_FIELD_MAX:
            errs.append(FieldError("Invalid", "action", "", f"can have at most {EVENT_FIELD_MAX} characters"))
        reason = obj.get("reason", "")
        if not reason:
            errs.append(FieldError("Required", "reason"))
        elif len(reason) > EVENT_FIELD_MAX:
            errs.append(FieldError("Invalid", "reason", "", f"can have at most {EVENT_FIELD_MAX} characters"))
        if len(obj.get("message", "")) > EVENT_NOTE_MAX:
            errs.append(FieldError("TooLong", "note" if strict_v1 else "message",
                                   detail=f"may not be more than {EVENT_NOTE_MAX} bytes"))
    for msg in dns_subdomain(namespace) if namespace else []:
        errs.append(FieldError("Invalid", "namespace", namespace, msg))
    if strict_v1:
        for msg in dns_subdomain(meta.get("name", "")) if meta.get("name") else []:
            errs.append(FieldError("Invalid", "metadata.name", meta.get("name"), msg))
        if not obj.get("eventTime"):
            errs.append(FieldError("Required", "eventTime"))
        if obj.get("type") not in ("Normal", "Warning"):
            errs.append(FieldError("Invalid", "type", "", f"has invalid value: {obj.get('type', '')}"))
        if obj.get("firstTimestamp"):
            errs.append(FieldError("Invalid", "deprecatedFirstTimestamp", "", "needs to be unset"))
        if obj.get("lastTimestamp"):
            errs.append(FieldError("Invalid", "deprecatedLastTimestamp", "", "needs to be unset"))
        if obj.get("count"):
            errs.append(FieldError("Invalid", "deprecatedCount", "", "needs to be unset"))
        if obj.get("source"):
            errs.append(FieldError("Invalid", "deprecatedSource", "", "needs to be unset"))
        series = obj.get("series")
        if series is not None:
            if (series.get("count") or 0) < 2:
                errs.append(FieldError("Invalid", "series.count", "", "should be at least 2"))
            if not series.get("lastObservedTime"):
                errs.append(FieldError("Required", "series.lastObservedTime"))
    return errs


# -- resource.k8s.io (Dynamic Resource Allocation) and policy/v1 -----------------------------------------------
# From the API reference of resource.k8s.io/v1 (1.37) and pkg/apis/resource/validation: a driver name is a DNS
# subdomain of at most 63 characters; a pool name one or more DNS subdomains joined by "/", at most 253; a device
# name a DNS label; an attribute holds exactly one value; a slice names its node in exactly one way and lists at
# most 128 devices. A DeviceTaint's key is a label name, its value a label value, its effect None, NoSchedule or
# NoExecute (PreferNoSchedule, valid on a Node, is not valid here).
DEVICE_TAINT_EFFECTS = ("None", "NoSchedule", "NoExecute")
MAX_DEVICES_PER_SLICE = 128
_ATTRIBUTE_VALUES = ("bool", "int", "string", "version", "bools", "ints", "strings", "versions")


def driver_name(value: str) -> list[str]:
    errs = dns_subdomain(value)
    if len(value) > 63:
        errs.insert(0, "must be no more than 63 characters")
    return errs


def pool_name(value: str) -> list[str]:
    if len(value) > 253:
        return ["must be no more than 253 characters"]
    errs: list[str] = []
    for part in value.split("/"):
        errs.extend(dns_subdomain(part) if part else ["segments must not be empty"])
    return errs


def _names(errs: list[FieldError], path: str, value, rule, required: bool) -> None:
    if value in (None, ""):
        if required:
            errs.append(FieldError("Required", path))
        return
    for msg in rule(value):
        errs.append(FieldError("Invalid", path, value, msg))


def device_taint(taint: dict, path: str) -> list[FieldError]:
    errs: list[FieldError] = []
    key = taint.get("key") or ""
    if not key:
        errs.append(FieldError("Required", f"{path}.key"))
    else:
        errs.extend(FieldError("Invalid", f"{path}.key", key, m) for m in qualified_name(key))
    value = taint.get("value") or ""
    errs.extend(FieldError("Invalid", f"{path}.value", value, m) for m in label_value(value))
    effect = taint.get("effect") or ""
    if not effect:
        errs.append(FieldError("Required", f"{path}.effect"))
    elif effect not in DEVICE_TAINT_EFFECTS:
        errs.append(FieldError("NotSupported", f"{path}.effect", effect,
                               "supported values: " + ", ".join(f'"{e}"' for e in DEVICE_TAINT_EFFECTS)))
    return errs


def device_taint_rule(obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        return [FieldError("Required", "spec")]
    sel = spec.get("deviceSelector") or {}
    _names(errs, "spec.deviceSelector.driver", sel.get("driver"), driver_name, False)
    _names(errs, "spec.deviceSelector.pool", sel.get("pool"), pool_name, False)
    _names(errs, "spec.deviceSelector.device", sel.get("device"), dns_label, False)
    taint = spec.get("taint")
    if not isinstance(taint, dict):
        errs.append(FieldError("Required", "spec.taint"))
    else:
        errs.extend(device_taint(taint, "spec.taint"))
    return errs


def resource_slice(obj: dict) -> list[FieldError]:
    errs: list[FieldError] = []
    spec = obj.get("spec") or {}
    _names(errs, "spec.driver", spec.get("driver"), driver_name, True)
    pool = spec.get("pool") or {}
    _names(errs, "spec.pool.name", pool.get("name"), pool_name, True)
    for key in ("generation", "resourceSliceCount"):
        if pool.get(key) is not None and pool[key] < (1 if key == "resourceSliceCount" else 0):
            errs.append(FieldError("Invalid", f"spec.pool.{key}", pool[key],
                                   "must be greater than 0" if key == "resourceSliceCount" else "must be "
                                   "greater than or equal to 0"))
    where = [k for k in ("nodeName", "nodeSelector", "allNodes", "perDeviceNodeSelection") if spec.get(k)]
    if len(where) != 1:
        errs.append(FieldError("Invalid", "spec", where or None,
                               "exactly one of `nodeName`, `nodeSelector`, `allNodes`, `perDeviceNodeSelection` "
                               "is required"))
    elif where[0] == "nodeName":
        _names(errs, "spec.nodeName", spec["nodeName"], dns_subdomain, True)
    devices = spec.get("devices") or []
    if len(devices) > MAX_DEVICES_PER_SLICE:
        errs.append(FieldError("Invalid", "spec.devices", len(devices),
                               f"must have at most {MAX_DEVICES_PER_SLICE} items"))
    seen: set[str] = set()
    for i, dev in enumerate(devices):
        path = f"spec.devices[{i}]"
        name = dev.get("name") or ""
        _names(errs, f"{path}.name", name, dns_label, True)
        if name and name in seen:
            errs.append(FieldError("Duplicate", f"{path}.name", name))
        seen.add(name)
        for attr, val in (dev.get("attributes") or {}).items():
            apath = f"{path}.attributes[{attr}]"
            errs.extend(FieldError("Invalid", apath, attr, m) for m in qualified_name(attr))
            count = sum(1 for k in _ATTRIBUTE_VALUES if (val or {}).get(k) is not None)
            if count != 1:
                errs.append(FieldError("Invalid", apath, val, "exactly one value must be specified"))
        for j, taint in enumerate(dev.get("taints") or []):
            errs.extend(device_taint(taint, f"{path}.taints[{j}]"))
    return errs


def pod_disruption_budget(obj: dict) -> list[FieldError]:
    spec = obj.get("spec") or {}
    errs: list[FieldError] = []
    if spec.get("minAvailable") is not None and spec.get("maxUnavailable") is not None:
        errs.append(FieldError("Invalid", "spec", spec, "minAvailable and maxUnavailable cannot be both set"))
    for key in ("minAvailable", "maxUnavailable"):
        v = spec.get(key)
        if isinstance(v, int) and v < 0:
            errs.append(FieldError("Invalid", f"spec.{key}", v, "must be greater than or equal to 0"))
        if isinstance(v, str) and not re.fullmatch(r"\d+%", v):
            errs.append(FieldError("Invalid", f"spec.{key}", v, "a valid percent string must be a numeric string "
                                   "followed by an ending '%'"))
    return errs
