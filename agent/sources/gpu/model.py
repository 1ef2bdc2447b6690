"""One reading model for AMD and NVIDIA GPUs. Every backend (amdsmi, amd-smi JSON, NVML, nvidia-smi XML)
produces these; rules and metrics never look at vendor formats. None means "the hardware did not say"."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from agent.base import validate as valid
from agent.base.validate import Invalid


@dataclass
class EccCount:
    type: str  # correctable | uncorrectable | deferred
    block: str  # "total", or a block name (UMC, GFX, SRAM, DRAM ...)
    count: int
    volatile: bool = True  # since the driver loaded/the last reset; False: lifetime ("aggregate")


@dataclass
class Link:
    """An XGMI or NVLink link as seen from one GPU."""

    name: str  # "xgmi0".."xgmi7", "nvlink0"..
    peer: str | None  # peer GPU index as a string ("7"), or None when unknown
    up: bool | None  # None: disabled/not present
    errors: int | None = None
    kind: str = "xgmi"


@dataclass
class Process:
    pid: int
    name: str | None
    memory_bytes: int | None


@dataclass
class GpuReading:
    index: int
    vendor: str  # amd | nvidia
    model: str | None = None
    serial: str | None = None
    uuid: str | None = None
    pci_bus_id: str | None = None  # normalised 0000:0c:00.0 (lower case, 4-digit domain)
    driver: str | None = None
    firmware: dict[str, str] = field(default_factory=dict)  # vbios/ifwi and component firmware
    partition: str = ""  # MIG instance / MI300 compute partition id, "" for a whole GPU
    utilization: float | None = None  # 0..1
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    temperatures: dict[str, float] = field(default_factory=dict)  # edge, junction, memory
    temperature_limits: dict[str, float] = field(default_factory=dict)  # slowdown limit per sensor
    power_watts: float | None = None
    power_limit_watts: float | None = None
    ecc: list[EccCount] = field(default_factory=list)
    retired_pages: int | None = None  # pages retired for good (AMD bad pages, NVIDIA retired pages)
    pending_pages: int | None = None  # pages waiting for retirement (needs a reset/reboot)
    bad_page_threshold: int | None = None
    bad_page_threshold_exceeded: bool | None = None
    row_remap_correctable: int | None = None  # NVIDIA remapped rows (lifetime)
    row_remap_uncorrectable: int | None = None
    row_remap_pending: bool | None = None  # action: reset the GPU
    row_remap_failure: bool | None = None  # fatal: rows could not be remapped
    pcie_width: int | None = None
    pcie_max_width: int | None = None
    pcie_speed_gts: float | None = None
    pcie_max_speed_gts: float | None = None
    pcie_replay_count: int | None = None
    links: list[Link] = field(default_factory=list)
    throttle_active: list[str] = field(default_factory=list)  # every active reason, vendor names
    throttle_hardware: list[str] = field(default_factory=list)  # the subset that is hardware (thermal, brake)
    processes: list[Process] = field(default_factory=list)
    invalid: list[Invalid] = field(default_factory=list)  # impossible values read, dropped (see validate())
    # check -> why the data it needs could not be read (a failed SMI command, an unreadable field): those
    # checks are unknown on this GPU. A value the hardware does not report (N/A) is None, not unread.
    unread: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The `gpu` label: the index, plus the partition for MIG/CPX instances."""
        return f"{self.index}" if not self.partition else f"{self.index}/{self.partition}"

    @property
    def entity(self) -> str:
        return f"gpu{self.name}"


@dataclass
class GpuInventory:
    """What a backend saw. `backend` names it (amdsmi, amd-smi, nvml, nvidia-smi); errors are per-command
    problems that left part of the reading empty (shown as unknown, not as unhealthy)."""

    backend: str
    vendor: str
    gpus: list[GpuReading]
    errors: list[str] = field(default_factory=list)


@dataclass
class GpuReadings:
    """The GPU collector's reading: every vendor's inventory, and what PCI says is installed."""

    inventories: list[GpuInventory]
    pci_gpus: dict[str, int]  # vendor -> count of GPU PCI functions in sysfs
    unavailable: dict[str, str] = field(default_factory=dict)  # vendor -> why its backend could not run
    # Addresses of GPUs this node should have: on the PCI bus when the agent started, declared
    # (expect.gpu_bus_ids), or reported earlier by this agent. A missing GPU is named from these.
    known_addresses: frozenset[str] = frozenset()

    @property
    def gpus(self) -> list[GpuReading]:
        return [g for inv in self.inventories for g in inv.gpus]


def pcie_generation(speed_gts: float | None) -> int | None:
    """PCIe generation from the per-lane rate (2.5, 5, 8, 16, 32, 64 GT/s)."""
    if speed_gts is None:
        return None
    for gen, rate in ((6, 64.0), (5, 32.0), (4, 16.0), (3, 8.0), (2, 5.0), (1, 2.5)):
        if speed_gts >= rate * 0.95:
            return gen
    return None


PCIE_GEN_SPEED_GTS = {1: 2.5, 2: 5.0, 3: 8.0, 4: 16.0, 5: 32.0, 6: 64.0}


def pcie_gen_speed(gen: Any) -> float | None:
    """Per-lane rate (GT/s) of a PCIe generation; None when unknown (NVIDIA reports generations, not rates)."""
    return PCIE_GEN_SPEED_GTS.get(gen) if isinstance(gen, int) and not isinstance(gen, bool) else None


# -- impossible values (DESIGN §0) ------------------------------------------------------------------------
# Scalar fields: (attribute, key of the check that needs it, name in a finding, predicate).
_SCALARS = (
    ("utilization", "utilization", "utilization", valid.ratio),
    ("memory_used_bytes", "memory", "memory used", valid.counter),
    ("memory_total_bytes", "memory", "memory total", valid.counter),
    ("power_watts", "power", "power", lambda v: valid.in_range(v, 0.0, valid.POWER_MAX_W)),
    ("power_limit_watts", "power", "power limit", lambda v: valid.in_range(v, 0.0, valid.POWER_MAX_W)),
    ("retired_pages", "pages.retired", "retired pages", valid.counter),
    ("pending_pages", "pages.pending", "pending pages", valid.counter),
    ("bad_page_threshold", "pages.retired", "bad page threshold", valid.counter),
    ("row_remap_correctable", "row_remap", "remapped rows (correctable)", valid.counter),
    ("row_remap_uncorrectable", "row_remap", "remapped rows (uncorrectable)", valid.counter),
    ("pcie_width", "pcie.width", "PCIe link width", lambda v: valid.in_range(v, 0, valid.PCIE_WIDTH_MAX)),
    ("pcie_max_width", "pcie.width", "PCIe max link width",
     lambda v: valid.in_range(v, 0, valid.PCIE_WIDTH_MAX)),
    ("pcie_speed_gts", "pcie.generation", "PCIe link speed",
     lambda v: valid.in_range(v, 0.0, valid.PCIE_SPEED_MAX_GTS)),
    ("pcie_max_speed_gts", "pcie.generation", "PCIe max link speed",
     lambda v: valid.in_range(v, 0.0, valid.PCIE_SPEED_MAX_GTS)),
    ("pcie_replay_count", "pcie.replays", "PCIe replay count", valid.counter),
)


def validate(g: GpuReading) -> GpuReading:
    """Drop every impossible value of a reading (it becomes None, or leaves its dict/list) and record it in
    g.invalid, so rules see only possible values and metrics never export an impossible one. Every backend
    calls this on each reading it builds; it never raises."""
    def drop(key: str, name: str, value: Any) -> None:
        g.invalid.append(Invalid(key, name, valid.shown(value)))

    for attr, key, name, ok in _SCALARS:
        v = getattr(g, attr)
        if v is not None and not ok(v):
            drop(key, name, v)
            setattr(g, attr, None)
        elif isinstance(v, float) and attr != "utilization" and valid.counter(v) and ok is valid.counter:
            setattr(g, attr, int(v))  # a count read as 12.0 is the count 12
    for sensor, t in list(g.temperatures.items()):
        if not valid.temperature(t):
            drop(f"temperature.{sensor}", f"temperature ({sensor})", t)
            del g.temperatures[sensor]
    for sensor, t in list(g.temperature_limits.items()):
        if not valid.temperature(t):
            drop("temperature_limit", f"temperature limit ({sensor})", t)
            del g.temperature_limits[sensor]
    kept = []
    for e in g.ecc:
        if valid.counter(e.count):
            e.count = int(e.count)
            kept.append(e)
        elif e.volatile:  # lifetime counts are exported, not judged: they cost only their series
            drop(f"ecc.{e.type}", f"ecc {e.type} ({e.block.lower() if e.block != 'total' else 'total'})", e.count)
        else:
            drop("ecc.aggregate", f"aggregate ecc {e.type} ({e.block.lower()})", e.count)
    g.ecc = kept
    for link in g.links:
        if link.errors is not None and not valid.counter(link.errors):
            drop("link_errors", f"{link.name} errors", link.errors)
            link.errors = None
    procs = []
    for p in g.processes:
        if valid.ascii_int(p.pid, 1, 2**32) is None:
            drop("processes", "process id", p.pid)
            continue
        if p.memory_bytes is not None and not valid.counter(p.memory_bytes):
            drop("processes", f"memory of process {p.pid}", p.memory_bytes)
            p.memory_bytes = None
        procs.append(p)
    g.processes = procs
    return g
