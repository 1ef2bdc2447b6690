"""GPU collector: AMD (amdsmi library, else the amd-smi CLI) and NVIDIA (NVML, else nvidia-smi), or a node
snapshot's captured outputs, all mapped to one reading model (gpu_model.py)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from agent.base.config import MAX_DEVICES, CollectorSettings, ConfigError, in_range
from agent.base.findings import Finding, with_bus_ids
from agent.base.tools import DEFAULT_MAX_STDOUT, ToolHung
from . import rules
from agent.base import pci
from agent.base.collector import Collector, Context, Observation, Output
from .backend import BackendUnavailable, GpuBackend
from .model import GpuInventory, GpuReadings

log = logging.getLogger(__name__)

Backend = Literal["auto", "amdsmi", "amd-smi", "nvml", "nvidia-smi"]
MIN_OUTPUT_CAP, MAX_OUTPUT_CAP = 64 * 1024, 256 * 1024 * 1024
from .metrics import gpu_metrics


@dataclass
class GpuSettings(CollectorSettings, rules.GpuThresholds):
    backend: Backend = "auto"  # auto: per vendor on the PCI bus, library first, then the CLI
    smi_timeout_seconds: float = 6.0  # one amd-smi / nvidia-smi CLI run (the collector deadline covers all)
    smi_max_output_bytes: int = DEFAULT_MAX_STDOUT  # one CLI run's stdout; past it the run is killed, unread

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        cap = self.smi_max_output_bytes
        if isinstance(cap, bool) or not isinstance(cap, int) or not MIN_OUTPUT_CAP <= cap <= MAX_OUTPUT_CAP:
            raise ConfigError(f"{prefix}.smi_max_output_bytes: must be an integer within {MIN_OUTPUT_CAP}.."
                              f"{MAX_OUTPUT_CAP} (the agent's whole memory limit is 512 MiB), got {cap!r}")
        for key in ("temperature_warning_celsius", "temperature_fatal_celsius"):
            for sensor, celsius in getattr(self, key).items():
                if sensor not in ("edge", "junction", "memory"):
                    raise ConfigError(f"{prefix}.{key}.{sensor}: unknown sensor (known: edge, junction, memory)")
                # Within physics for a running GPU: none reports above ~125 C before it shuts itself down.
                in_range(f"{prefix}.{key}.{sensor}", celsius, 0, MAX_CELSIUS)
        if not 0 <= self.busy_utilization_ratio <= 1:
            raise ConfigError(f"{prefix}.busy_utilization_ratio: must be within 0..1")
        self.check_thresholds(prefix)
        # No relation to timeout_seconds is required: the read runs several CLI commands in turn, and whichever
        # deadline fires first (the run's or the read's) a stuck SMI is reported as gpu.smi_unresponsive.


MAX_CELSIUS = 150.0


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
        self._pci_addresses: frozenset[str] = frozenset()
        self._seen: set[str] = set()  # bus ids of whole GPUs this agent has read (bounded: MAX_DEVICES)

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
        amd_cli = lambda: AmdSmiCliBackend(timeout=s.smi_timeout_seconds, max_output=s.smi_max_output_bytes)  # noqa: E731
        nv_xml = lambda: NvidiaSmiBackend(timeout=s.smi_timeout_seconds, max_output=s.smi_max_output_bytes)  # noqa: E731

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
            functions = pci.gpu_functions(self.ctx.roots.sysfs)
            self._pci = None if functions is None else pci.by_vendor(functions)  # one walk of the PCI tree
            self._pci_addresses = frozenset(functions or ())
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
        known = self._pci_addresses | frozenset(self.ctx.expect.gpu_bus_ids or ()) | frozenset(self._seen)
        readings = GpuReadings(inventories, self._pci or {}, unavailable, known)
        for g in readings.gpus:
            if g.pci_bus_id and not g.partition and len(self._seen) < MAX_DEVICES:
                self._seen.add(g.pci_bus_id)
        # Other sources (GPU events, pod attribution) map PCI addresses and UUIDs to GPU indexes with this.
        self.ctx.facts.gpus = readings.gpus
        return readings

    def evaluate(self, reading: GpuReadings, previous: Observation | None, elapsed: float | None) -> Output:
        prev = previous.reading if previous else None
        findings = rules.evaluate(reading, self.ctx.expect.gpus, self.settings, self.ctx.node, prev, elapsed)
        # each GPU's findings carry its bus address: the aggregator maps it to the GPU's DRA device
        findings = with_bus_ids(findings, {g.entity: g.pci_bus_id for g in reading.gpus
                                           if g.pci_bus_id and not getattr(g, "partition", None)})
        for inv in reading.inventories:
            if inv.errors:  # one finding per backend: (check, entity) must be unique in a cycle
                findings.append(Finding("gpu.backend", "gpu", inv.backend, "unknown", "warning",
                                        "; ".join(inv.errors)))
        # A read that left checks unread is not a success (vigil_collector_success 0), though what it read counts.
        partial = any(inv.errors for inv in reading.inventories)
        out = Output(gpu_metrics(reading, self.ctx.expect.gpus), findings, partial=partial)
        if not reading.inventories and not self.ctx.expect.gpus and not sum(reading.pci_gpus.values()):
            where = "none on the PCI bus" if self._pci is not None else "no PCI device tree to count them on"
            tried = "; ".join(f"{v}: {why}" for v, why in sorted(reading.unavailable.items()))
            out.absent.append(f"no GPU found ({where}, none expected" + (f"; {tried}" if tried else "") + ")")
        return out

    def unresponsive(self, stuck_seconds: float) -> list[Finding]:
        return [rules.smi_unresponsive(self.ctx.node, self._backend_names(), stuck_seconds)]

    def failed(self, error: BaseException) -> list[Finding]:
        # The CLI's own deadline fired before the collector's (or an earlier call is still stuck): the same
        # stuck SMI as when the collector's deadline fires, so the same finding.
        if isinstance(error, ToolHung):
            stuck = max([p.seconds for p in error.left_behind] or [self.settings.smi_timeout_seconds])
            return [rules.smi_unresponsive(self.ctx.node, self._backend_names(), stuck, str(error))]
        return super().failed(error)

    def _backend_names(self) -> list[str]:
        return [c.current.name if c.current else c.vendor for c in (self._chains or [])]

    def close(self) -> None:
        for chain in self._chains or []:
            try:
                chain.close()
            except Exception:  # shutting down: nothing more to do
                log.debug("closing %s backend failed", chain.vendor, exc_info=True)
