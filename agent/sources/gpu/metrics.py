"""The GPU source's metric families, declared once with their label names, and readings -> samples."""
from __future__ import annotations

from agent.base.metrics import Counter, Gauge, MetricSet
from .model import GpuReading, GpuReadings

GPU_BACKEND_INFO = Gauge("vigil_gpu_backend_info", "GPU backend in use per vendor.", ("backend", "vendor"))
GPU_DEVICES = Gauge("vigil_gpu_devices", "GPUs the SMI reports (whole devices).", ())
GPU_DEVICES_EXPECTED = Gauge("vigil_gpu_devices_expected", "GPUs this node should have (config or node.json).", ())
GPU_ECC_AGGREGATE_ERRORS = Counter("vigil_gpu_ecc_aggregate_errors_total", "ECC errors over the GPU's lifetime "
                                   "(exported, not judged).", ("block", "gpu", "type"))
GPU_ECC_ERRORS = Counter("vigil_gpu_ecc_errors_total", "ECC errors since the driver loaded (volatile).",
                         ("block", "gpu", "type"))
GPU_FIRMWARE_INFO = Gauge("vigil_gpu_firmware_info", "GPU firmware versions.", ("firmware", "gpu", "version"))
GPU_INFO = Gauge("vigil_gpu_info", "GPU identity.",
                 ("driver", "gpu", "model", "partition", "pci_bus_id", "serial", "uuid", "vendor"))
GPU_LINK_ERRORS = Counter("vigil_gpu_link_errors_total", "XGMI/NVLink link errors.", ("gpu", "link", "peer"))
GPU_LINK_UP = Gauge("vigil_gpu_link_up", "XGMI/NVLink link state (1 up).", ("gpu", "link", "peer"))
GPU_MEMORY_TOTAL_BYTES = Gauge("vigil_gpu_memory_total_bytes", "GPU memory size.", ("gpu",))
GPU_MEMORY_USED_BYTES = Gauge("vigil_gpu_memory_used_bytes", "GPU memory in use.", ("gpu",))
GPU_PCI_DEVICES = Gauge("vigil_gpu_pci_devices", "GPU PCI functions on the bus.", ("vendor",))
GPU_PCIE_LINK_MAX_SPEED_GTS = Gauge("vigil_gpu_pcie_link_max_speed_gts", "PCIe per-lane rate the GPU supports "
                                    "(GT/s).", ("gpu",))
GPU_PCIE_LINK_MAX_WIDTH = Gauge("vigil_gpu_pcie_link_max_width", "PCIe link width the GPU supports.", ("gpu",))
GPU_PCIE_LINK_SPEED_GTS = Gauge("vigil_gpu_pcie_link_speed_gts", "PCIe per-lane rate now (GT/s).", ("gpu",))
GPU_PCIE_LINK_WIDTH = Gauge("vigil_gpu_pcie_link_width", "PCIe link width now.", ("gpu",))
GPU_PCIE_REPLAYS = Counter("vigil_gpu_pcie_replays_total", "PCIe replays.", ("gpu",))
GPU_PENDING_RETIREMENT_PAGES = Gauge("vigil_gpu_pending_retirement_pages", "Memory pages pending retirement.",
                                     ("gpu",))
GPU_POWER_LIMIT_WATTS = Gauge("vigil_gpu_power_limit_watts", "GPU power cap.", ("gpu",))
GPU_POWER_WATTS = Gauge("vigil_gpu_power_watts", "GPU power draw.", ("gpu",))
GPU_PROCESSES = Gauge("vigil_gpu_processes", "Processes using the GPU.", ("gpu",))
GPU_REMAPPED_ROWS = Gauge("vigil_gpu_remapped_rows", "Remapped rows by cause.", ("cause", "gpu"))
GPU_RETIRED_PAGES = Gauge("vigil_gpu_retired_pages", "Memory pages retired.", ("gpu",))
GPU_ROW_REMAP_FAILURE = Gauge("vigil_gpu_row_remap_failure", "1 when a row remap failed.", ("gpu",))
GPU_ROW_REMAP_PENDING = Gauge("vigil_gpu_row_remap_pending", "1 when a row remap waits for a GPU reset.", ("gpu",))
GPU_TEMPERATURE_CELSIUS = Gauge("vigil_gpu_temperature_celsius", "GPU temperature by sensor.", ("gpu", "sensor"))
GPU_TEMPERATURE_SLOWDOWN_CELSIUS = Gauge("vigil_gpu_temperature_slowdown_celsius", "Temperature at which the GPU "
                                         "slows down.", ("gpu", "sensor"))
GPU_THROTTLE_ACTIVE = Gauge("vigil_gpu_throttle_active", "1 for each active clock throttle reason.",
                            ("gpu", "hardware", "reason"))
GPU_UTILIZATION_RATIO = Gauge("vigil_gpu_utilization_ratio", "GPU busy ratio (0..1).", ("gpu",))


def gpu_metrics(r: GpuReadings, expected: int | None) -> MetricSet:
    ms = MetricSet()
    for inv in r.inventories:
        ms.add(GPU_BACKEND_INFO, {"vendor": inv.vendor, "backend": inv.backend}, 1)
    for vendor, n in sorted(r.pci_gpus.items()):
        ms.add(GPU_PCI_DEVICES, {"vendor": vendor}, n)
    if r.inventories:
        ms.add(GPU_DEVICES, {}, sum(1 for g in r.gpus if not g.partition))
    elif not r.unavailable and not sum(r.pci_gpus.values()) and not expected:
        ms.add(GPU_DEVICES, {}, 0)  # looked, found none: say 0 rather than nothing
    if expected is not None:
        ms.add(GPU_DEVICES_EXPECTED, {}, expected)
    for g in r.gpus:
        _one_gpu(ms, g)
    return ms


def _one_gpu(ms: MetricSet, g: GpuReading) -> None:
    gpu = {"gpu": g.name}
    ms.add(GPU_INFO, {
        "gpu": g.name, "vendor": g.vendor, "model": g.model, "serial": g.serial, "uuid": g.uuid,
        "pci_bus_id": g.pci_bus_id, "driver": g.driver, "partition": g.partition}, 1)
    for fw, version in sorted(g.firmware.items()):
        ms.add(GPU_FIRMWARE_INFO, {**gpu, "firmware": fw, "version": version}, 1)
    ms.add(GPU_UTILIZATION_RATIO, gpu, g.utilization)
    ms.add(GPU_MEMORY_USED_BYTES, gpu, g.memory_used_bytes)
    ms.add(GPU_MEMORY_TOTAL_BYTES, gpu, g.memory_total_bytes)
    for sensor, t in sorted(g.temperatures.items()):
        ms.add(GPU_TEMPERATURE_CELSIUS, {**gpu, "sensor": sensor}, t)
    for sensor, t in sorted(g.temperature_limits.items()):
        ms.add(GPU_TEMPERATURE_SLOWDOWN_CELSIUS, {**gpu, "sensor": sensor}, t)
    ms.add(GPU_POWER_WATTS, gpu, g.power_watts)
    ms.add(GPU_POWER_LIMIT_WATTS, gpu, g.power_limit_watts)
    for e in g.ecc:
        labels = {**gpu, "type": e.type, "block": e.block}
        if e.volatile:
            ms.add(GPU_ECC_ERRORS, labels, e.count)
        else:
            ms.add(GPU_ECC_AGGREGATE_ERRORS, labels, e.count)
    ms.add(GPU_RETIRED_PAGES, gpu, g.retired_pages)
    ms.add(GPU_PENDING_RETIREMENT_PAGES, gpu, g.pending_pages)
    ms.add(GPU_ROW_REMAP_PENDING, gpu, _bool(g.row_remap_pending))
    ms.add(GPU_ROW_REMAP_FAILURE, gpu, _bool(g.row_remap_failure))
    ms.add(GPU_REMAPPED_ROWS, {**gpu, "cause": "correctable"}, g.row_remap_correctable)
    ms.add(GPU_REMAPPED_ROWS, {**gpu, "cause": "uncorrectable"}, g.row_remap_uncorrectable)
    ms.add(GPU_PCIE_LINK_WIDTH, gpu, g.pcie_width)
    ms.add(GPU_PCIE_LINK_MAX_WIDTH, gpu, g.pcie_max_width)
    ms.add(GPU_PCIE_LINK_SPEED_GTS, gpu, g.pcie_speed_gts)
    ms.add(GPU_PCIE_LINK_MAX_SPEED_GTS, gpu, g.pcie_max_speed_gts)
    ms.add(GPU_PCIE_REPLAYS, gpu, g.pcie_replay_count)
    for link in g.links:
        if link.up is None:
            continue
        labels = {**gpu, "link": link.name, "peer": link.peer or ""}
        ms.add(GPU_LINK_UP, labels, 1 if link.up else 0)
        ms.add(GPU_LINK_ERRORS, labels, link.errors)
    for reason in sorted(set(g.throttle_active)):
        hardware = "true" if reason in g.throttle_hardware else "false"
        ms.add(GPU_THROTTLE_ACTIVE, {**gpu, "reason": reason, "hardware": hardware}, 1)
    ms.add(GPU_PROCESSES, gpu, len(g.processes))


def _bool(v: bool | None) -> int | None:
    return None if v is None else int(v)
