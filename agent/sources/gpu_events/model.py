"""One event model for every source (kernel log, NVML events, amd-smi CPER records)."""
from __future__ import annotations

from dataclasses import dataclass, field

XID, RESET, CPER, RAS = "xid", "reset", "cper", "ras"
CHECKS = {XID: "gpu.xid", RESET: "gpu.reset", CPER: "gpu.cper", RAS: "gpu.ras"}


@dataclass(frozen=True)
class GpuEvent:
    kind: str  # xid | reset | cper | ras  (the `kind` label of vigil_gpu_events_total)
    code: str  # the `code` label: Xid number, reset outcome (ok|failed), CPER severity, RAS error type
    severity: str  # fatal | warning | info | ignore
    description: str  # what it means, in a few words
    action: str | None  # recommended action
    source: str  # kmsg | nvml | amd-smi
    text: str  # the kernel line or a summary of the record
    key: str  # unique within its source: "kmsg:<seq>", "cper:<gpu>:<fingerprint>", "nvml:<n>"
    pci: str | None = None  # normalised PCI address 0000:3b:00.0, when the source names one
    gpu: str | None = None  # GPU index as a string, when the source names one (CPER, NVML)
    at: float | None = None  # wall-clock time (epoch seconds), when known
    recovers: bool = False  # a successful reset/recovery: clears the sticky events of its GPU
    all_gpus: bool = False  # an operator's "vigil: gpu reset all"
    fallen_off_bus: bool = False  # "GPU ... has fallen off the bus" without an Xid line (counted as Xid 79)
    partition: str = ""  # MIG GPU instance (GPU-I) the Xid was attributed to
    details: dict = field(default_factory=dict, hash=False, compare=False)

    @property
    def check(self) -> str:
        return CHECKS[self.kind]


    @property
    def detail(self) -> str:
        """What tells two events of one kind and code apart, beyond the GPU (the RAS block, the amdgpu error
        event, the CPER AFIDs), never a timestamp, pid or count: identical events fold into one episode."""
        d = self.details
        return str(d.get("block") or d.get("event") or ",".join(map(str, d.get("afids") or ())) or "")
