"""Per-device quarantine on clusters with Dynamic Resource Allocation (DESIGN §9): a fault that is one GPU's
takes that GPU out of service with a DeviceTaintRule, and the node's other GPUs stay allocatable.

Pure parts (scope, matching, the rule's body) and a thin API class (`DeviceApi`), like policy.py and kube.py.
- Scope: the policy decides per check (`DeviceConfig.checks`, fnmatch patterns): ECC, row remap, retired pages,
  the GPU's Xids, RAS/CPER, XGMI/NVLink and probes are a device's; anything else (GPU count, driver, SMI
  unresponsive, RDMA ports, node checks) is the node's, and so is a device check whose entity names no GPU.
- Matching: the finding's entity ("gpu3": the GPU's minor number on NVIDIA, its amd-smi index on AMD;
  "pci:0000:3b:00.0" when the agent could not map the bus address to an index) against the devices the node's
  ResourceSlices publish, or first the bus address the agent sent with it (Event.bus_id / Problem.bus_id). A bus
  address matches the standard attribute `resource.kubernetes.io/pciBusID` (set by AMD's DRA driver on full GPUs
  and, with the parent's address, on partitions: ROCm/k8s-gpu-dra-driver docs "Device Attributes and
  Capabilities", cmd/gpu-kubeletplugin/deviceinfo.go), its `pciAddr` (that driver's auto-partition devices, same
  document), or NVIDIA's `pcieBusID` (NVIDIA/k8s-dra-driver-gpu cmd/gpu-kubelet-plugin/deviceinfo.go). Every
  device carrying the address is that GPU or a partition of it, and all are tainted. An index matches only where
  its meaning is known: NVIDIA's driver names a GPU `gpu-<minor>` (its CanonicalName) and a MIG device
  `gpu-<minor>-mig-...` with `parentUUID` (all of them are tainted: they are slices of the sick GPU), or an int
  attribute `minor`. AMD's device names use the DRM card and render indices, not amd-smi's: an AMD "gpuN"
  without a bus id (an older agent) matches nothing, and the fault falls back to the node (never fail open),
  which the Event says.
- The rule: cluster-scoped, a deterministic name per (node, driver, pool, device) so a retried create is a 409,
  Vigil's labels (which rules are Vigil's: only those are ever deleted) and an annotation with what it is for.
- The API version is discovered from the server (GET /apis/resource.k8s.io): v1 where offered (1.37+), else
  v1beta2 (1.36); an older server (v1alpha3 only, 1.33-1.35) or one without the group gets node quarantine.
"""
from __future__ import annotations

import fnmatch
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any, Iterable

from agent.base.pci import normalize as normalize_pci

GROUP = "resource.k8s.io"
VERSIONS = ("v1", "v1beta2")  # preferred first; DeviceTaintRule has the same shape in both
MANAGED_BY = "app.kubernetes.io/managed-by"
MANAGER = "vigil"
NODE_LABEL = "vigil.dev/node"
RULE_ANNOTATION = "vigil.dev/v1.device-quarantine"
TAINT_KEY = "vigil.dev/unhealthy"
EFFECTS = ("NoSchedule", "NoExecute")
DEVICE_CHECKS = ("gpu.ecc.*", "gpu.row_remap.*", "gpu.pages.*", "gpu.xid", "gpu.ras", "gpu.cper", "gpu.reset",
                 "gpu.xgmi", "gpu.nvlink", "probe.*")
PCI_ATTRIBUTES = ("resource.kubernetes.io/pciBusID", "pcieBusID", "pciBusID", "pciAddr")
NVIDIA_DRIVER = "gpu.nvidia.com"

# The Kubernetes calls device quarantine makes (components/device-quarantine grants exactly these): (group,
# resource, verb, cluster-wide). Discovery (GET /apis/resource.k8s.io) is every authenticated user's.
API_CALLS = frozenset({(GROUP, "resourceslices", "list", True), (GROUP, "devicetaintrules", "list", True),
                       (GROUP, "devicetaintrules", "create", True), (GROUP, "devicetaintrules", "delete", True),
                       (GROUP, "resourceclaims", "get", True)})  # get: the pods holding a device (blast.py)

_GPU_ENTITY = re.compile(r"gpu(\d{1,4})(?:/.*)?", re.ASCII)


@dataclass(frozen=True)
class DeviceConfig:
    enabled: bool = False  # --device-quarantine
    effect: str = "NoSchedule"  # --device-effect NoExecute: DRA evicts the pods using the device
    checks: tuple[str, ...] = DEVICE_CHECKS

    def __post_init__(self) -> None:
        if self.effect not in EFFECTS:
            raise ValueError(f"device effect: expected one of {', '.join(EFFECTS)}, got {self.effect!r}")


@dataclass(frozen=True)
class Target:
    """One DRA device: what a DeviceTaintRule's selector names."""

    driver: str
    pool: str
    device: str

    @property
    def key(self) -> str:
        return f"{self.driver}/{self.pool}/{self.device}"


def device_scoped(check: str, entity: str, cfg: DeviceConfig) -> bool:
    """Whether a fault of `check` on `entity` is one device's (else the node's)."""
    if gpu_ref(entity) is None:
        return False
    return any(fnmatch.fnmatchcase(check, pattern) for pattern in cfg.checks)


def gpu_ref(entity: str) -> tuple[str, Any] | None:
    """("index", 3) for "gpu3" (a partition "gpu3/1" is its GPU's), ("pci", "0000:3b:00.0") for "pci:...";
    None for anything else."""
    m = _GPU_ENTITY.fullmatch(entity)
    if m:
        return "index", int(m.group(1))
    if entity.startswith("pci:"):
        bdf = normalize_pci(entity[4:])
        if bdf is not None:
            return "pci", bdf
    return None


def _dict(v: Any) -> dict:
    return v if isinstance(v, dict) else {}


def _attr(device: dict, name: str) -> Any:
    value = _dict(device.get("attributes")).get(name)
    if not isinstance(value, dict):
        return None
    for kind in ("string", "int", "version", "bool"):
        if kind in value:
            return value[kind]
    return None


def match(entity: str, slices: Iterable[dict], bus_id: str = "") -> tuple[list[Target], str]:
    """The devices of the node's ResourceSlices that are the GPU `entity` names (a GPU and its partitions), or
    ([], why not). Ambiguity (two whole GPUs match) is no match: the node is quarantined instead.

    `bus_id` (Event.bus_id: the agent's PCI address of the entity's GPU, normalised at intake) is matched first
    (then the entity, where no device carries the address), against the PCI attributes: one physical GPU has one address, so every device carrying it is that GPU or one of
    its partitions (AMD's partitions carry their parent's address) and all are tainted. Without it (an older
    agent) the entity alone decides, as before: an AMD "gpuN" then matches nothing."""
    ref = gpu_ref(entity)
    if ref is None:
        return [], f"{entity!r} names no GPU"
    bus = normalize_pci(bus_id) if bus_id else None
    if bus is not None and ref[0] == "index":
        targets, _ = match(f"pci:{bus}", slices)
        if targets:
            return targets, ""
        # no device publishes that address (a driver without PCI attributes): the entity decides, as before
    whole: list[tuple[Target, dict]] = []
    everything: list[tuple[Target, dict]] = []
    for s in slices:
        spec = _dict(_dict(s).get("spec"))
        driver, pool = spec.get("driver"), _dict(spec.get("pool")).get("name")
        if not isinstance(driver, str) or not isinstance(pool, str) or not driver or not pool:
            continue
        devs = spec.get("devices")
        for dev in devs if isinstance(devs, list) else ():
            name = dev.get("name") if isinstance(dev, dict) else None
            if not isinstance(name, str) or not name:
                continue
            t = Target(driver, pool, name)
            everything.append((t, dev))
            if ref[0] == "pci":
                if any(normalize_pci(v) == ref[1] for v in (_attr(dev, a) for a in PCI_ATTRIBUTES)
                       if isinstance(v, str)):
                    whole.append((t, dev))
            elif (driver == NVIDIA_DRIVER and name == f"gpu-{ref[1]}") or _attr(dev, "minor") == ref[1]:
                whole.append((t, dev))
    if not whole:
        return [], f"no device in the node's ResourceSlices matches {entity}"
    parents = {(t.driver, t.pool) for t, _ in whole}
    if ref[0] == "index" and len(whole) > 1 and len({t.device for t, _ in whole}) > 1:
        return [], f"{entity} matches {len(whole)} devices ({', '.join(t.key for t, _ in whole[:4])})"
    out = [t for t, _ in whole]
    uuids = {_attr(d, "uuid") for _, d in whole} - {None}
    for t, dev in everything:  # partitions of the sick GPU (NVIDIA MIG devices name their parent's UUID)
        if (t.driver, t.pool) in parents and t not in out and uuids and _attr(dev, "parentUUID") in uuids:
            out.append(t)
    return out, ""


def rule_name(node: str, t: Target) -> str:
    digest = hashlib.sha256(f"{node}\0{t.key}".encode()).hexdigest()[:12]
    base = re.sub(r"[^a-z0-9-]", "-", f"{node}-{t.device}".lower())[:200].strip("-")
    return f"vigil-{base}-{digest}"


def rule_body(node: str, t: Target, check: str, entity: str, message: str, effect: str, api_version: str,
              since: str, episode: str) -> dict[str, Any]:
    record = {"node": node, "check": check[:256], "entity": entity[:512], "since": since,
              "episode": episode[:1024], "message": message[:1024]}
    return {
        "apiVersion": f"{GROUP}/{api_version}", "kind": "DeviceTaintRule",
        "metadata": {"name": rule_name(node, t),
                     "labels": {MANAGED_BY: MANAGER, NODE_LABEL: node if len(node) <= 63 else _hash_label(node)},
                     "annotations": {RULE_ANNOTATION: json.dumps(record, sort_keys=True, separators=(",", ":"))}},
        "spec": {"deviceSelector": {"driver": t.driver, "pool": t.pool, "device": t.device},
                 "taint": {"key": TAINT_KEY, "value": _label_value(check), "effect": effect}},
    }


def node_label(node: str) -> str:
    return node if len(node) <= 63 else _hash_label(node)


def _hash_label(text: str) -> str:
    return "h-" + hashlib.sha256(text.encode()).hexdigest()[:40]


def _label_value(text: str) -> str:
    """A check name as a label value (63 characters, alphanumerics, '-', '_', '.', alphanumeric at both ends)."""
    v = re.sub(r"[^A-Za-z0-9_.-]", "-", text)[:63].strip("-_.")
    return v


def is_ours(rule: dict) -> bool:
    return ((rule.get("metadata") or {}).get("labels") or {}).get(MANAGED_BY) == MANAGER and \
        RULE_ANNOTATION in ((rule.get("metadata") or {}).get("annotations") or {})


def pick_version(offered: Iterable[str]) -> str | None:
    offered = set(offered)
    return next((v for v in VERSIONS if v in offered), None)


class DeviceApi:
    """The few resource.k8s.io calls, through kube.Kube's transport (retries, errors classified)."""

    def __init__(self, kube: Any) -> None:
        self.kube = kube

    def discover(self) -> str | None:
        """The DeviceTaintRule version to use, from the server's discovery; None when it serves neither."""
        from .kube import NotFound

        try:
            group = self.kube._req("GET", f"/apis/{GROUP}")
        except NotFound:
            return None
        offered = [v.get("version") for v in group.get("versions") or [] if isinstance(v, dict)]
        for version in VERSIONS:
            if version not in offered:
                continue
            try:
                listing = self.kube._req("GET", f"/apis/{GROUP}/{version}")
            except NotFound:
                continue
            if any(r.get("name") == "devicetaintrules" for r in listing.get("resources") or []):
                return version
        return None

    def slices(self, version: str, node: str) -> list[dict]:
        return self.kube._req("GET", f"/apis/{GROUP}/{version}/resourceslices?fieldSelector=spec.nodeName%3D"
                              + _quote(node)).get("items") or []

    def rules(self, version: str, node: str | None = None) -> list[dict]:
        sel = f"{MANAGED_BY}%3D{MANAGER}" + (f"%2C{NODE_LABEL}%3D{_quote(node_label(node))}" if node else "")
        items = self.kube._req("GET", f"/apis/{GROUP}/{version}/devicetaintrules?labelSelector={sel}")
        return [r for r in items.get("items") or [] if is_ours(r)]

    def create_rule(self, version: str, body: dict) -> bool:
        """False when it exists already (a retry of a create that went through)."""
        from .kube import Conflict

        try:
            self.kube._req("POST", f"/apis/{GROUP}/{version}/devicetaintrules", None, body)
            return True
        except Conflict:
            return False

    def delete_rule(self, version: str, rule: dict) -> bool:
        """Delete one of Vigil's rules, with its uid as a precondition (a rule someone replaced is not ours)."""
        from .kube import Conflict, NotFound

        meta = rule.get("metadata") or {}
        body = {"kind": "DeleteOptions", "apiVersion": "v1", "preconditions": {"uid": meta.get("uid")}}
        try:
            self.kube._req("DELETE", f"/apis/{GROUP}/{version}/devicetaintrules/{{name}}", {"name": meta["name"]},
                           body)
            return True
        except (NotFound, Conflict):
            return False


def _quote(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")
