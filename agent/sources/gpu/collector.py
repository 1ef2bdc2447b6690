"""GPU collector: AMD (amdsmi library, else the amd-smi CLI) and NVIDIA (NVML, else nvidia-smi), or a node
snapshot's captured outputs, all mapped to one reading model (gpu_model.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from agent.base.config import CollectorSettings, ConfigError
from agent.base.findings import Finding
from . import rules
from agent.base.metrics import MetricSet
from agent.base import pci
from agent.base.collector import Collector, Context, Observation, Output
from .backend import BackendUnavailable, GpuBackend
from .model import GpuInventory, GpuReading, GpuReadings

log = logging.getLogger(__name__)

Backend = Literal["auto", "amdsmi", "amd-smi", "nvml", "nvidia-smi"]


@dataclass
class GpuSettings(CollectorSettings, rules.GpuThresholds):
    backend: Backend = "auto"  # auto: per vendor on the PCI bus, library first, then the CLI
    smi_timeout_seconds: float = 6.0  # one amd-smi / nvidia-smi CLI run (the collector deadline covers all)

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        for key in ("temperature_warning_celsius", "temperature_fatal_celsius"):
            for sensor in getattr(self, key):
                if sensor not in ("edge", "junction", "memory"):
                    raise ConfigError(f"{prefix}.{key}.{sensor}: unknown sensor (known: edge, junction, memory)")
        if not 0 <= self.busy_utilization_ratio <= 1:
            raise ConfigError(f"{prefix}.busy_utilization_ratio: must be within 0..1")


class _Chain:
    """A vendor's backends in order of preference; the first one that is available sticks."""

    def __init__(self, vendor: str, factories: list) -> None:
        self.vendor = vendor
        self.factories = factories
        self.current: GpuBackend | None = None
        self.reasons: list[str] = []

    def read(self) -> GpuInventory:
        if self.current is not None:
            return self.current.read()
        self.reasons = []
        for make in self.factories:
            backend = make()
            try:
                inv = backend.read()
            except BackendUnavailable as e:
                self.reasons.append(f"{backend.name}: {e}")
                continue
            self.current = backend
            return inv
        raise BackendUnavailable("; ".join(self.reasons) or "no backend")

    def close(self) -> None:
        if self.current is not None:
            self.current.close()


def _amd_lib():
    from .amdsmi_lib import AmdSmiLibBackend
    return AmdSmiLibBackend()


class GpuCollector(Collector):
    name = "gpu"
    component = "gpu"
    Settings = GpuSettings

    def __init__(self, settings: GpuSettings, ctx: Context, chains: list[_Chain] | None = None) -> None:
        super().__init__(settings, ctx)
        self._chains = chains
        self._pci: dict[str, int] | None = None

    # -- backends -------------------------------------------------------------------------------------
    def _build_chains(self) -> list[_Chain]:
        from .amd_smi_cli import AmdSmiCliBackend
        from .nvidia_smi_xml import NvidiaSmiBackend

        s, snap = self.settings, self.ctx.roots.snapshot
        if snap is not None:  # replay what the snapshot holds, nothing live
            chains = []
            if (snap / "amd-smi").is_dir():
                chains.append(_Chain("amd", [lambda: AmdSmiCliBackend(snapshot_dir=snap / "amd-smi")]))
            if (snap / "nvidia-smi" / "q.xml").is_file():
                chains.append(_Chain("nvidia", [lambda: NvidiaSmiBackend(xml_path=snap / "nvidia-smi" / "q.xml")]))
            return chains
        amd_cli = lambda: AmdSmiCliBackend(timeout=s.smi_timeout_seconds)  # noqa: E731
        nv_xml = lambda: NvidiaSmiBackend(timeout=s.smi_timeout_seconds)  # noqa: E731

        def nvml():
            from .nvml import NvmlBackend
            return NvmlBackend()

        explicit = {"amdsmi": ("amd", [_amd_lib]), "amd-smi": ("amd", [amd_cli]),
                    "nvml": ("nvidia", [nvml]), "nvidia-smi": ("nvidia", [nv_xml])}
        if s.backend != "auto":
            vendor, factories = explicit[s.backend]
            return [_Chain(vendor, factories)]
        on_bus = self._pci if self._pci is not None else {"amd": 1, "nvidia": 1}  # no PCI tree: try both
        chains = []
        if on_bus.get("amd"):
            chains.append(_Chain("amd", [_amd_lib, amd_cli]))
        if on_bus.get("nvidia"):
            chains.append(_Chain("nvidia", [nvml, nv_xml]))
        return chains

    # -- collector contract ---------------------------------------------------------------------------
    def read(self) -> GpuReadings:
        if self._pci is None:
            self._pci = pci.count_gpus(self.ctx.roots.sysfs)
        if self._chains is None:
            self._chains = self._build_chains()
        inventories, unavailable = [], {}
        if self.ctx.roots.snapshot is not None:
            # GPUs on the bus but no SMI output captured: the SMI was broken when the snapshot was taken.
            for vendor in sorted(set(self._pci or {}) - {c.vendor for c in self._chains}):
                unavailable[vendor] = "no SMI output in the snapshot"
        for chain in self._chains:
            try:
                inventories.append(chain.read())
            except BackendUnavailable as e:
                unavailable[chain.vendor] = str(e)
        readings = GpuReadings(inventories, self._pci or {}, unavailable)
        # Other sources (GPU events, pod attribution) map PCI addresses and UUIDs to GPU indexes with this.
        self.ctx.shared["gpus"] = readings.gpus
        return readings

    def evaluate(self, reading: GpuReadings, previous: Observation | None, elapsed: float | None) -> Output:
        prev = previous.reading if previous else None
        findings = rules.evaluate(reading, self.ctx.expect.gpus, self.settings, self.ctx.node, prev, elapsed)
        for inv in reading.inventories:
            if inv.errors:  # one finding per backend: (check, entity) must be unique in a cycle
                findings.append(Finding("gpu.backend", "gpu", inv.backend, "unknown", "warning",
                                        "; ".join(inv.errors)))
        return Output(gpu_metrics(reading, self.ctx.expect.gpus), findings)

    def unresponsive(self, stuck_seconds: float) -> list[Finding]:
        names = [c.current.name if c.current else c.vendor for c in (self._chains or [])]
        return [rules.smi_unresponsive(self.ctx.node, names, stuck_seconds)]

    def close(self) -> None:
        for chain in self._chains or []:
            try:
                chain.close()
            except Exception:  # shutting down: nothing more to do
                log.debug("closing %s backend failed", chain.vendor, exc_info=True)


# -- metrics ---------------------------------------------------------------------------------------------
def gpu_metrics(r: GpuReadings, expected: int | None) -> MetricSet:
    ms = MetricSet()
    for inv in r.inventories:
        ms.gauge("vigil_gpu_backend_info", "GPU backend in use per vendor.",
                 {"vendor": inv.vendor, "backend": inv.backend}, 1)
    for vendor, n in sorted(r.pci_gpus.items()):
        ms.gauge("vigil_gpu_pci_devices", "GPU PCI functions on the bus.", {"vendor": vendor}, n)
    if r.inventories:
        ms.gauge("vigil_gpu_devices", "GPUs the SMI reports (whole devices).", {},
                 sum(1 for g in r.gpus if not g.partition))
    if expected is not None:
        ms.gauge("vigil_gpu_devices_expected", "GPUs this node should have (config or node.json).", {}, expected)
    for g in r.gpus:
        _one_gpu(ms, g)
    return ms


def _one_gpu(ms: MetricSet, g: GpuReading) -> None:
    gpu = {"gpu": g.name}
    ms.gauge("vigil_gpu_info", "GPU identity.", {
        "gpu": g.name, "vendor": g.vendor, "model": g.model, "serial": g.serial, "uuid": g.uuid,
        "pci_bus_id": g.pci_bus_id, "driver": g.driver, "partition": g.partition}, 1)
    for fw, version in sorted(g.firmware.items()):
        ms.gauge("vigil_gpu_firmware_info", "GPU firmware versions.", {**gpu, "firmware": fw, "version": version}, 1)
    ms.gauge("vigil_gpu_utilization_ratio", "GPU busy ratio (0..1).", gpu, g.utilization)
    ms.gauge("vigil_gpu_memory_used_bytes", "GPU memory in use.", gpu, g.memory_used_bytes)
    ms.gauge("vigil_gpu_memory_total_bytes", "GPU memory size.", gpu, g.memory_total_bytes)
    for sensor, t in sorted(g.temperatures.items()):
        ms.gauge("vigil_gpu_temperature_celsius", "GPU temperature by sensor.", {**gpu, "sensor": sensor}, t)
    for sensor, t in sorted(g.temperature_limits.items()):
        ms.gauge("vigil_gpu_temperature_slowdown_celsius", "Temperature at which the GPU slows down.",
                 {**gpu, "sensor": sensor}, t)
    ms.gauge("vigil_gpu_power_watts", "GPU power draw.", gpu, g.power_watts)
    ms.gauge("vigil_gpu_power_limit_watts", "GPU power cap.", gpu, g.power_limit_watts)
    for e in g.ecc:
        labels = {**gpu, "type": e.type, "block": e.block}
        if e.volatile:
            ms.counter("vigil_gpu_ecc_errors_total", "ECC errors since the driver loaded (volatile).", labels, e.count)
        else:
            ms.counter("vigil_gpu_ecc_aggregate_errors_total", "ECC errors over the GPU's lifetime (exported, not "
                       "judged).", labels, e.count)
    ms.gauge("vigil_gpu_retired_pages", "Memory pages retired.", gpu, g.retired_pages)
    ms.gauge("vigil_gpu_pending_retirement_pages", "Memory pages pending retirement.", gpu, g.pending_pages)
    ms.gauge("vigil_gpu_row_remap_pending", "1 when a row remap waits for a GPU reset.", gpu,
             _bool(g.row_remap_pending))
    ms.gauge("vigil_gpu_row_remap_failure", "1 when a row remap failed.", gpu, _bool(g.row_remap_failure))
    ms.gauge("vigil_gpu_remapped_rows", "Remapped rows by cause.", {**gpu, "cause": "correctable"},
             g.row_remap_correctable)
    ms.gauge("vigil_gpu_remapped_rows", "Remapped rows by cause.", {**gpu, "cause": "uncorrectable"},
             g.row_remap_uncorrectable)
    ms.gauge("vigil_gpu_pcie_link_width", "PCIe link width now.", gpu, g.pcie_width)
    ms.gauge("vigil_gpu_pcie_link_max_width", "PCIe link width the GPU supports.", gpu, g.pcie_max_width)
    ms.gauge("vigil_gpu_pcie_link_speed_gts", "PCIe per-lane rate now (GT/s).", gpu, g.pcie_speed_gts)
    ms.gauge("vigil_gpu_pcie_link_max_speed_gts", "PCIe per-lane rate the GPU supports (GT/s).", gpu,
             g.pcie_max_speed_gts)
    ms.counter("vigil_gpu_pcie_replays_total", "PCIe replays.", gpu, g.pcie_replay_count)
    for link in g.links:
        if link.up is None:
            continue
        labels = {**gpu, "link": link.name, "peer": link.peer or ""}
        ms.gauge("vigil_gpu_link_up", "XGMI/NVLink link state (1 up).", labels, 1 if link.up else 0)
        ms.counter("vigil_gpu_link_errors_total", "XGMI/NVLink link errors.", labels, link.errors)
    for reason in sorted(set(g.throttle_active)):
        ms.gauge("vigil_gpu_throttle_active", "1 for each active clock throttle reason.",
                 {**gpu, "reason": reason, "hardware": "true" if reason in g.throttle_hardware else "false"}, 1)
    ms.gauge("vigil_gpu_processes", "Processes using the GPU.", gpu, len(g.processes))


def _bool(v: bool | None) -> int | None:
    return None if v is None else int(v)
