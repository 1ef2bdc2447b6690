"""One reading model for AMD and NVIDIA GPUs. Every backend (amdsmi, amd-smi JSON, NVML, nvidia-smi XML)
produces these; rules and metrics never look at vendor formats. None means "the hardware did not say"."""
from __future__ import annotations

from dataclasses import dataclass, field


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


def pcie_gen_speed(gen: int | None) -> float | None:
    """Per-lane rate (GT/s) of a PCIe generation; None when unknown (NVIDIA reports generations, not rates)."""
    return PCIE_GEN_SPEED_GTS.get(int(gen)) if gen is not None else None
