"""AMD GPUs live through the `amdsmi` Python library (ROCm's libamd_smi.so underneath).

`amdsmi` is imported on the first read, never at agent start: without libamd_smi.so, `import amdsmi` prints
to stdout and then raises KeyError (not ImportError), see ../shared/reference/import_without_libamd_smi.txt.
Every per-GPU call is wrapped on its own: a field the hardware does not support (AMDSMI_STATUS_NOT_SUPPORTED)
stays None, and no single failing call loses the rest of the GPU. Return shapes are those of the amdsmi
7.x Python layer (../shared/reference/amdsmi-python-api.md); values may be "N/A" where the C library returned
a sentinel, so they go through the same value helpers as the CLI's JSON.
"""
from __future__ import annotations

import contextlib
import importlib
import io
from typing import Any, Callable

from .amd_smi_cli import (HARDWARE_VIOLATIONS, ECC_TYPES, small_int, int_of, is_active, parse_links, partition_label,
    text_of, value_of)
from agent.base import validate as valid
from agent.base.errors import error_text, one_line
from agent.base.pci import label as pci_label
from .backend import BackendUnavailable
from .model import EccCount, GpuInventory, GpuReading, Process, validate

# Status codes that mean "this GPU does not have it": not worth an error message.
QUIET_STATUS = {2, 3}  # AMDSMI_STATUS_NOT_SUPPORTED, AMDSMI_STATUS_NOT_YET_IMPLEMENTED
# Our sensor -> AmdSmiTemperatureType member names, newest first (HOTSPOT was JUNCTION in older wrappers).
TEMPERATURE_TYPES = {"edge": ("EDGE",), "junction": ("HOTSPOT", "JUNCTION"), "memory": ("VRAM",)}
# amdsmi_get_violation_status() keys for the violation kinds the CLI names in `metric --throttle`.
VIOLATION_KEYS = {"prochot": "active_prochot_thrm", "ppt": "active_ppt_pwr", "socket_thermal": "active_socket_thrm",
                  "vr_thermal": "active_vr_thrm", "hbm_thermal": "active_hbm_thrm"}
NOT_A_BLOCK = {"INVALID", "RESERVED", "LAST"}




def error_code(e: BaseException) -> int | None:
    code = getattr(e, "err_code", None)
    return code if isinstance(code, int) else None


def mt_to_gts(v: Any) -> float | None:
    """PCIe rate: the library reports MT/s (the CLI divides by 1000) though its docs say GT/s."""
    f = value_of(v)
    if f is None:
        return None
    return f / 1000.0 if f >= 1000 else f


def mib_to_bytes(v: Any) -> int | None:
    return int_of({"value": v, "unit": "MB"})


def first_power(info: dict) -> float | None:
    """socket_power (7.x) or current (MI300+) or average (MI200/Navi); a 0 beside a real value is the field
    that part does not fill."""
    values = [value_of(info.get(k)) for k in ("socket_power", "current_socket_power", "average_socket_power")]
    numeric = [v for v in values if v is not None]
    return next((v for v in numeric if v > 0), numeric[0] if numeric else None)


def page_status(v: Any, lib: Any) -> str | None:
    """RESERVED / PENDING / UNRESERVABLE from the library's enum value (or a name, to be lenient)."""
    if isinstance(v, str):
        return v.upper().replace("AMDSMI_MEM_PAGE_STATUS_", "")
    enum = getattr(lib, "AmdSmiMemoryPageStatus", None)
    try:
        return enum(v).name if enum is not None else None
    except (ValueError, TypeError):
        return None


def fw_name(v: Any) -> str | None:
    name = getattr(v, "name", v)  # an AmdSmiFwBlock member in 7.x, a string in older wrappers
    if not isinstance(name, str):
        return None
    for prefix in ("AMDSMI_FW_ID_", "FW_ID_"):
        name = name.removeprefix(prefix)
    return name or None


class _Gpu:
    """One GPU's calls. `call` turns any library exception into None (and a message unless NOT_SUPPORTED)."""

    def __init__(self, lib: Any, handle: Any, index: int, errors: list[str]) -> None:
        self.lib, self.h, self.index, self.errors = lib, handle, index, errors
        self.exc = getattr(lib, "AmdSmiException", Exception)

    def call(self, name: str, *args: Any) -> Any:
        fn: Callable | None = getattr(self.lib, name, None)
        if fn is None:  # an older library without this call
            return None
        try:
            return fn(self.h, *args)
        except self.exc as e:
            if error_code(e) not in QUIET_STATUS:
                self.errors.append(f"gpu{self.index}: {name}: {one_line(e)}")
        except Exception as e:  # a wrapper bug (ctypes, a key it expects) must not lose the whole GPU
            self.errors.append(f"gpu{self.index}: {name}: {error_text(e)}")
        return None

    def dict_of(self, name: str, *args: Any) -> dict:
        v = self.call(name, *args)
        return v if isinstance(v, dict) else {}

    def enum(self, enum_name: str, *members: str) -> Any:
        enum = getattr(self.lib, enum_name, None)
        return next((getattr(enum, m) for m in members if hasattr(enum, m)), None)


def read_identity(gpu: _Gpu, g: GpuReading) -> None:
    g.pci_bus_id = pci_label(text_of(gpu.call("amdsmi_get_gpu_device_bdf")))
    g.uuid = text_of(gpu.call("amdsmi_get_gpu_device_uuid"))
    asic = gpu.dict_of("amdsmi_get_gpu_asic_info")
    g.model = text_of(asic.get("market_name"))
    g.serial = text_of(asic.get("asic_serial"))
    if g.serial is None:
        g.serial = text_of(gpu.dict_of("amdsmi_get_gpu_board_info").get("product_serial"))
    g.driver = text_of(gpu.dict_of("amdsmi_get_gpu_driver_info").get("driver_version"))


def read_firmware(gpu: _Gpu) -> dict[str, str]:
    fw: dict[str, str] = {}
    # The library call is still "vbios"; amd-smi >= 7.1 prints the same value under IFWI.
    version = text_of(gpu.dict_of("amdsmi_get_gpu_vbios_info").get("version"))
    if version:
        fw["vbios"] = version
    fw_list = gpu.dict_of("amdsmi_get_fw_info").get("fw_list")
    for item in fw_list if isinstance(fw_list, list) else []:
        if isinstance(item, dict):
            name, ver = fw_name(item.get("fw_name", item.get("fw_id"))), text_of(item.get("fw_version"))
            if name and ver:
                fw[name] = ver
    return fw


def read_temperatures(gpu: _Gpu, g: GpuReading) -> None:
    current = gpu.enum("AmdSmiTemperatureMetric", "CURRENT")
    critical = gpu.enum("AmdSmiTemperatureMetric", "CRITICAL")  # what `static --limit` calls slowdown
    for sensor, members in TEMPERATURE_TYPES.items():
        kind = gpu.enum("AmdSmiTemperatureType", *members)
        if kind is None:
            continue
        if current is not None and (t := value_of(gpu.call("amdsmi_get_temp_metric", kind, current))) is not None:
            g.temperatures[sensor] = t
        limit = value_of(gpu.call("amdsmi_get_temp_metric", kind, critical)) if critical is not None else None
        if limit:  # 0 means no limit for that sensor (the CLI prints N/A)
            g.temperature_limits[sensor] = limit


def read_power(gpu: _Gpu, g: GpuReading) -> None:
    info = gpu.dict_of("amdsmi_get_power_info")
    g.power_watts = first_power(info)
    cap = value_of(gpu.dict_of("amdsmi_get_power_cap_info").get("power_cap"))  # microwatts
    g.power_limit_watts = cap / 1e6 if cap else value_of(info.get("power_limit"))


def read_ecc(gpu: _Gpu) -> list[EccCount]:
    out: list[EccCount] = []
    enabled = gpu.call("amdsmi_get_gpu_ecc_enabled")  # bitmask of AmdSmiGpuBlock values
    for block in getattr(gpu.lib, "AmdSmiGpuBlock", []):
        if block.name in NOT_A_BLOCK or (isinstance(enabled, int) and not enabled & int(block)):
            continue
        counts = gpu.dict_of("amdsmi_get_gpu_ecc_count", block)
        out += [EccCount(kind, block.name, n) for kind in ECC_TYPES
                if (n := int_of(counts.get(f"{kind}_count"))) is not None]
    totals = gpu.dict_of("amdsmi_get_gpu_total_ecc_count")
    out += [EccCount(kind, "total", n) for kind in ECC_TYPES if (n := int_of(totals.get(f"{kind}_count"))) is not None]
    return out


def read_bad_pages(gpu: _Gpu, g: GpuReading) -> None:
    pages = gpu.call("amdsmi_get_gpu_bad_page_info")
    if isinstance(pages, list):
        states = [page_status(p.get("status"), gpu.lib) for p in pages if isinstance(p, dict)]
        g.retired_pages, g.pending_pages = states.count("RESERVED"), states.count("PENDING")
    g.bad_page_threshold = int_of(gpu.call("amdsmi_get_gpu_bad_page_threshold"))
    if valid.counter(g.bad_page_threshold) and g.retired_pages is not None:
        # As amd-smi >= 7.0.2 derives BAD_PAGE_THRESHOLD_EXCEEDED: retired pages above the threshold.
        g.bad_page_threshold_exceeded = g.retired_pages > g.bad_page_threshold


def read_pcie(gpu: _Gpu, g: GpuReading) -> None:
    info = gpu.dict_of("amdsmi_get_pcie_info")
    metric, static = info.get("pcie_metric") or {}, info.get("pcie_static") or {}
    if isinstance(metric, dict):
        g.pcie_width = int_of(metric.get("pcie_width"))
        g.pcie_speed_gts = mt_to_gts(metric.get("pcie_speed"))
        g.pcie_replay_count = int_of(metric.get("pcie_replay_count"))
    if isinstance(static, dict):
        g.pcie_max_width = int_of(static.get("max_pcie_width"))
        g.pcie_max_speed_gts = mt_to_gts(static.get("max_pcie_speed"))


def read_links(gpu: _Gpu, g: GpuReading) -> None:
    status = gpu.call("amdsmi_get_gpu_xgmi_link_status")  # 7.x: {"status": [...], "total_links": n}
    g.links = parse_links(g.index, status.get("status") if isinstance(status, dict) else status)


def read_throttle(gpu: _Gpu, g: GpuReading) -> None:
    violations = gpu.call("amdsmi_get_violation_status")  # MI300+ only
    if isinstance(violations, dict):
        for kind, key in VIOLATION_KEYS.items():
            if is_active(violations.get(key)):
                g.throttle_active.append(kind)
                if kind in HARDWARE_VIOLATIONS:
                    g.throttle_hardware.append(kind)
        return
    if gpu.dict_of("amdsmi_get_gpu_metrics_info").get("throttle_status") is True:
        g.throttle_active.append("throttled")  # older parts: throttled, cause unknown


def read_processes(gpu: _Gpu) -> list[Process]:
    plist = gpu.call("amdsmi_get_gpu_process_list")
    out = []
    for p in plist if isinstance(plist, list) else []:
        if isinstance(p, dict) and (pid := int_of(p.get("pid"))) is not None:  # <= 6.1 returned opaque handles
            out.append(Process(pid, text_of(p.get("name")), int_of(p.get("mem"))))
    return out


def read_gpu(lib: Any, handle: Any, index: int, errors: list[str]) -> tuple[GpuReading, int | None, str | None]:
    """One GPU's reading, plus its partition id and compute-partition mode (labelled once all GPUs are read)."""
    gpu = _Gpu(lib, handle, index, errors)
    g = GpuReading(index=index, vendor="amd")
    read_identity(gpu, g)
    g.firmware = read_firmware(gpu)
    gfx = value_of(gpu.dict_of("amdsmi_get_gpu_activity").get("gfx_activity"))
    g.utilization = None if gfx is None else gfx / 100.0
    vram = gpu.dict_of("amdsmi_get_gpu_vram_usage")  # MB, as amdsmi.h documents
    g.memory_used_bytes = mib_to_bytes(vram.get("vram_used"))
    g.memory_total_bytes = mib_to_bytes(vram.get("vram_total"))
    read_temperatures(gpu, g)
    read_power(gpu, g)
    g.ecc = read_ecc(gpu)
    read_bad_pages(gpu, g)
    read_pcie(gpu, g)
    read_links(gpu, g)
    read_throttle(gpu, g)
    g.processes = read_processes(gpu)
    pid = small_int(gpu.dict_of("amdsmi_get_gpu_kfd_info").get("current_partition_id"))
    mode = text_of(gpu.call("amdsmi_get_gpu_compute_partition"))
    return validate(g), pid, mode


class AmdSmiLibBackend:
    """GpuBackend over the amdsmi library. `lib` injects a module (tests pass a fake); None imports amdsmi."""

    name = "amdsmi"
    vendor = "amd"

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib
        self._initialized = False

    def _load(self) -> Any:
        if self._lib is not None:
            return self._lib
        printed = io.StringIO()
        try:
            with contextlib.redirect_stdout(printed):  # the wrapper prints its failure to our stdout
                self._lib = importlib.import_module("amdsmi")
        except KeyError as e:
            said = " ".join(printed.getvalue().split())
            raise BackendUnavailable(f"amdsmi is installed but libamd_smi.so could not be loaded (KeyError {e}; "
                                     f"install ROCm's amd-smi-lib or set ROCM_PATH): {said}") from None
        except (ImportError, OSError, AttributeError) as e:
            raise BackendUnavailable(f"cannot import amdsmi: {one_line(e)}") from None
        return self._lib

    def _init(self) -> Any:
        lib = self._load()
        if not self._initialized:
            try:
                lib.amdsmi_init()  # default flag: AMD GPUs only
            except getattr(lib, "AmdSmiException", Exception) as e:
                # DRIVER_NOT_LOADED (34), no GPU, WSL...: the library cannot work on this node right now.
                raise BackendUnavailable(f"amdsmi_init failed: {one_line(e)}") from None
            self._initialized = True
        return lib

    def read(self) -> GpuInventory:
        lib = self._init()
        errors: list[str] = []
        try:
            handles = list(lib.amdsmi_get_processor_handles())
        except getattr(lib, "AmdSmiException", Exception) as e:
            return GpuInventory(self.name, self.vendor, [], [f"amdsmi_get_processor_handles: {one_line(e)}"])
        results = [read_gpu(lib, h, i, errors) for i, h in enumerate(handles)]
        partitioned = any((pid or 0) > 0 for _, pid, _ in results)
        for g, pid, mode in results:
            g.partition = partition_label(pid, mode, partitioned)
        return GpuInventory(self.name, self.vendor, [g for g, _, _ in results], errors)

    def close(self) -> None:
        if self._initialized and self._lib is not None:
            self._initialized = False
            try:
                self._lib.amdsmi_shut_down()
            except Exception:  # shutting down: nothing more to do
                pass
