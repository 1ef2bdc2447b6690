"""Which pod holds which GPU and RDMA device, and the join with the GPU collector's identities.

Sources, best first:
  1. kubelet PodResources (podresources.py): device-plugin ids and DRA devices per container. NVIDIA's plugin
     reports GPU/MIG UUIDs (time-slicing appends "::N"; --device-id-strategy=index gives plain indices), AMD's
     reports PCI bus addresses; DRA devices are matched by a UUID or a bus address inside the device name or
     its CDI names.
  2. The container's OCI spec, for containers that PodResources says nothing about: /dev/nvidiaN,
     /dev/dri/renderDN (cardN), /dev/infiniband/uverbsN, and NVIDIA_VISIBLE_DEVICES. Privileged containers
     see every device and are skipped.
Every id is reduced to join keys ("uuid:...", "bdf:0000:0c:00.0", "nvidia-index:3", "ib:mlx5_0"); a GPU
reading has the same keys, so the join is a dictionary lookup. Pure, except DeviceResolver (sysfs/procfs).
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

from agent.base.pci import normalize as normalize_pci
from agent.base.validate import index as small_number
from .model import Container, PodRef, SpecFacts

_UUID = re.compile(r"(?:(?:gpu|mig)-)?([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", re.I)
_BDF = re.compile(r"(?<![0-9a-f])([0-9a-f]{4,8})[:-]([0-9a-f]{2})[:-]([0-9a-f]{2})[.-]([0-7])(?![0-9a-f])", re.I)
_REPLICA = re.compile(r"::\d+$")  # NVIDIA time-slicing: GPU-<uuid>::3 is replica 3 of that GPU


def keys_for_id(raw: str, nvidia_index: bool = False) -> list[str]:
    """Join keys a device id stands for. `nvidia_index`: a bare number is an NVIDIA plugin index."""
    s = _REPLICA.sub("", raw.strip())
    keys = [f"uuid:{m.group(1).lower()}" for m in _UUID.finditer(s)]
    rest = _UUID.sub(" ", s)
    keys += [f"bdf:{int(m.group(1), 16):04x}:{m.group(2)}:{m.group(3)}.{m.group(4)}".lower()
             for m in _BDF.finditer(rest)]
    if not keys and nvidia_index and small_number(s) is not None:  # ASCII and small: "²".isdigit() is True
        keys.append(f"nvidia-index:{small_number(s)}")
    return list(dict.fromkeys(keys))


def gpu_keys(g: Any) -> list[str]:
    """Join keys of a GPU reading (agent.sources.gpu.model.GpuReading, or anything with its attributes)."""
    keys = keys_for_id(g.uuid or "")
    bdf = normalize_pci(getattr(g, "pci_bus_id", None))
    if bdf:
        keys.append(f"bdf:{bdf}")
    if getattr(g, "vendor", "") == "nvidia" and not getattr(g, "partition", ""):
        keys.append(f"nvidia-index:{g.index}")
    return list(dict.fromkeys(keys))


# -- the OCI spec ---------------------------------------------------------------------------------------
def parse_spec(raw: bytes | str | Mapping | None) -> SpecFacts:
    """SpecFacts from a runtime spec (JSON bytes as the Containers service returns it, or a parsed dict).
    Never raises: a field of the wrong type (a list where an object belongs, a number for a path) counts as
    absent, and a spec that is not JSON at all (or nested past the decoder's depth) says nothing."""
    try:
        spec = json.loads(raw) if isinstance(raw, (bytes, str)) and raw else (raw or {})
    except (ValueError, RecursionError):
        return SpecFacts()
    if not isinstance(spec, Mapping):
        return SpecFacts()
    linux, process = _mapping(spec.get("linux")), _mapping(spec.get("process"))
    paths = tuple(d["path"] for d in _list(linux.get("devices"))
                  if isinstance(d, Mapping) and isinstance(d.get("path"), str) and d["path"])
    visible: tuple[str, ...] = ()
    for entry in _list(process.get("env")):
        if not isinstance(entry, str):
            continue
        name, _, value = entry.partition("=")
        if name == "NVIDIA_VISIBLE_DEVICES" and value not in ("", "all", "none", "void"):
            visible = tuple(v.strip() for v in value.split(",") if v.strip())
    caps = _list(_mapping(process.get("capabilities")).get("bounding"))
    return SpecFacts(paths, visible, "CAP_SYS_ADMIN" in caps)


def _mapping(v: Any) -> Mapping:
    return v if isinstance(v, Mapping) else {}


def _list(v: Any) -> list:
    return v if isinstance(v, list) else []


class DeviceResolver:
    """Device nodes and RDMA ids -> join keys, through sysfs and procfs (injected roots)."""

    def __init__(self, sysfs: Path, procfs: Path) -> None:
        self.sysfs, self.procfs = Path(sysfs), Path(procfs)
        self._nvidia_minors: dict[int, str] | None = None

    def nvidia_minors(self) -> dict[int, str]:
        """/proc/driver/nvidia/gpus/<bdf>/information says "Device Minor: N": /dev/nvidiaN is that GPU."""
        if self._nvidia_minors is None:
            self._nvidia_minors = {}
            for info in sorted((self.procfs / "driver" / "nvidia" / "gpus").glob("*/information")):
                try:
                    m = re.search(r"^Device Minor:\s*([0-9]{1,5})\s*$", info.read_text(), re.M)
                except OSError:
                    continue
                bdf = normalize_pci(info.parent.name)
                if m and bdf:
                    self._nvidia_minors[int(m.group(1))] = bdf
        return self._nvidia_minors

    def path_keys(self, path: str) -> tuple[str, list[str]] | None:
        """(kind, keys) for a device path in a container spec, None for devices that are neither."""
        if m := re.fullmatch(r"/dev/nvidia([0-9]{1,5})", path):
            bdf = self.nvidia_minors().get(int(m.group(1)))
            return "gpu", [f"bdf:{bdf}"] if bdf else []
        if m := re.fullmatch(r"/dev/dri/((?:renderD|card)\d+)", path):
            bdf = self._pci_of(self.sysfs / "class" / "drm" / m.group(1) / "device")
            return "gpu", [f"bdf:{bdf}"] if bdf else []
        if m := re.fullmatch(r"/dev/infiniband/(uverbs\d+)", path):
            try:
                ibdev = (self.sysfs / "class" / "infiniband_verbs" / m.group(1) / "ibdev").read_text().strip()
            except OSError:
                return "rdma", []
            return "rdma", [f"ib:{ibdev}"]
        return None

    def rdma_keys(self, device_id: str) -> list[str]:
        """An RDMA plugin's device id: an IB device name (mlx5_0), or a PCI function that has IB devices."""
        ib = self.sysfs / "class" / "infiniband"
        if re.fullmatch(r"[\w.-]+", device_id) and (ib / device_id).exists():
            return [f"ib:{device_id}"]
        keys = []
        for k in keys_for_id(device_id):
            if k.startswith("bdf:"):
                devs = self.sysfs / "bus" / "pci" / "devices" / k[4:] / "infiniband"
                try:
                    keys += [f"ib:{d}" for d in sorted(os.listdir(devs))]
                except OSError:
                    pass
        return keys

    @staticmethod
    def _pci_of(link: Path) -> str | None:
        try:
            name = Path(os.path.realpath(link)).name
        except OSError:
            return None
        return normalize_pci(name) if _BDF.fullmatch(name) else None


# -- attribution ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Device:
    """One device a container holds."""

    ref: PodRef
    kind: str  # gpu | rdma
    resource: str  # nvidia.com/gpu, amd.com/cpx_nps4, a DRA driver, or linux.devices / NVIDIA_VISIBLE_DEVICES
    device_id: str  # as the source reported it
    source: str  # device-plugin | dra | spec
    keys: tuple[str, ...]


@dataclass
class Attribution:
    devices: list[Device]

    def pod_devices(self) -> dict[str, tuple[PodRef, ...]]:
        """Join key -> the containers holding that device (more than one for time-sliced GPUs)."""
        out: dict[str, list[PodRef]] = {}
        for d in self.devices:
            for k in d.keys:
                refs = out.setdefault(k, [])
                if d.ref not in refs:
                    refs.append(d.ref)
        return {k: tuple(v) for k, v in out.items()}

    def gpu_pods(self) -> set[tuple[str, str]]:
        return {(d.ref.namespace, d.ref.pod) for d in self.devices if d.kind == "gpu"}


def _prefixed(resource: str, prefixes: Iterable[str]) -> bool:
    return any(resource.startswith(p) for p in prefixes)


def attribute(allocations: Iterable[Any], containers: Iterable[Container], resolver: DeviceResolver,
              gpus: Iterable[Any] = (), gpu_prefixes: Iterable[str] = (), rdma_prefixes: Iterable[str] = (),
              spec_fallback: bool = True) -> Attribution:
    """PodResources allocations first; the spec fallback for running containers they say nothing about."""
    known_gpu_keys = {k for g in gpus for k in gpu_keys(g)}
    devices: list[Device] = []
    covered: set[PodRef] = set()
    for a in allocations:
        keys = list(dict.fromkeys(k for t in a.match_text
                                  for k in keys_for_id(t, nvidia_index=a.resource.startswith("nvidia.com/"))))
        if _prefixed(a.resource, gpu_prefixes) or any(k in known_gpu_keys for k in keys):
            kind = "gpu"
        elif _prefixed(a.resource, rdma_prefixes):
            kind, keys = "rdma", resolver.rdma_keys(a.device_id) or keys
        elif ib := resolver.rdma_keys(a.device_id):
            kind, keys = "rdma", ib
        else:
            continue  # another kind of device (an FPGA, a NIC VF): not ours to attribute
        devices.append(Device(a.ref, kind, a.resource, a.device_id, a.source, tuple(keys)))
        covered.add(a.ref)
    if spec_fallback:
        for c in containers:
            ref = c.ref
            if ref is None or ref in covered or c.spec.privileged or c.status not in ("running", "paused"):
                continue
            for path in c.spec.device_paths:
                found = resolver.path_keys(path)
                if found is not None:
                    devices.append(Device(ref, found[0], "linux.devices", path, "spec", tuple(found[1])))
            for v in c.spec.visible_gpus:
                keys = keys_for_id(v, nvidia_index=True)
                if keys:
                    devices.append(Device(ref, "gpu", "NVIDIA_VISIBLE_DEVICES", v, "spec", tuple(keys)))
    return Attribution(devices)


def spec_gpu_keys(spec: SpecFacts, resolver: DeviceResolver) -> list[str]:
    """GPU keys a (possibly deleted) container's spec names: tells whether an event came from a GPU pod."""
    if spec.privileged:
        return []
    keys = []
    for path in spec.device_paths:
        found = resolver.path_keys(path)
        if found is not None and found[0] == "gpu":
            keys += found[1] or [f"path:{path}"]
    for v in spec.visible_gpus:
        keys += keys_for_id(v, nvidia_index=True)
    return keys


# -- the GPU -> pod join --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GpuPod:
    gpu: str  # the `gpu` label of the GPU collector's series
    uuid: str
    pci_bus_id: str
    namespace: str
    pod: str
    container: str

    def to_json(self) -> dict[str, str]:
        return asdict(self)


def join_gpus(gpus: Iterable[Any], pod_devices: Mapping[str, Iterable[PodRef]]) -> list[GpuPod]:
    """One row per (GPU, container holding it), in GPU order."""
    rows = []
    for g in gpus:
        seen: list[PodRef] = []
        for k in gpu_keys(g):
            for ref in pod_devices.get(k, ()):
                if ref not in seen:
                    seen.append(ref)
        rows += [GpuPod(g.name, g.uuid or "", g.pci_bus_id or "", *ref) for ref in seen]
    return rows


def gpu_pod_rows(facts: Any) -> list[GpuPod]:
    """The join of what the two sources published: facts.gpus (GPU source) and facts.pod_devices."""
    return join_gpus(facts.gpus or [], facts.pod_devices or {})


def gpu_pod_table(facts: Any) -> str:
    """`agent --once`: every GPU with the pod using it ("-" when idle); "" when attribution is unavailable."""
    gpus = list(facts.gpus or [])
    if facts.pod_devices is None or not gpus:
        return ""
    by_gpu: dict[str, list[str]] = {}
    for r in gpu_pod_rows(facts):
        by_gpu.setdefault(r.gpu, []).append(f"{r.namespace}/{r.pod} ({r.container})")
    lines = [("GPU", "PCI BUS ID", "POD (CONTAINER)")]
    lines += [(g.name, g.pci_bus_id or g.uuid or "", ", ".join(by_gpu.get(g.name, [])) or "-") for g in gpus]
    w0, w1 = (max(len(row[i]) for row in lines) for i in (0, 1))
    return "\n" + "\n".join(f"{a.ljust(w0)}  {b.ljust(w1)}  {c}" for a, b, c in lines) + "\n"
