"""The live NVIDIA backend on NVML (nvidia-ml-py). `pynvml` is imported inside the backend, never at module
import: a node without the package or the driver still loads the agent, and reports the backend unavailable.

Every per-field call is wrapped: "not supported here" (a field this GPU or driver does not have) leaves that
field None; any other NVML error also leaves it None and is listed in GpuInventory.errors, so one bad field
never hides the rest of the GPU. Readings mean what the nvidia-smi XML parser's mean (gpu_nvidia_xml.py).
"""
from __future__ import annotations

from typing import Any, Callable

from agent.base import validate as valid
from agent.base.pci import label as pci_label
from .backend import BackendUnavailable
from .model import GpuInventory, GpuReading, Link, Process, pcie_gen_speed, validate
from .nvidia_smi_xml import (SENSOR_GPU, SENSOR_GPU_MAX, SENSOR_MEMORY, classify_throttle, decode_clock_reasons,
    ecc_counts)

# nvml.h values, spelled here so an injected library only needs the functions.
NVML_ERROR_INVALID_ARGUMENT = 2
NVML_ERROR_NOT_SUPPORTED = 3
NVML_ERROR_NOT_FOUND = 6
NVML_ERROR_DRIVER_NOT_LOADED = 9
NVML_ERROR_LIBRARY_NOT_FOUND = 12
NVML_ERROR_FUNCTION_NOT_FOUND = 13
NVML_ERROR_NO_DATA = 21
NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25
NVML_ERROR_DEPRECATED = 26
# "This GPU/driver does not have that": the field is None, and nothing is wrong.
ABSENT = frozenset({NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_NOT_FOUND,
                    NVML_ERROR_FUNCTION_NOT_FOUND, NVML_ERROR_NO_DATA, NVML_ERROR_ARGUMENT_VERSION_MISMATCH,
                    NVML_ERROR_DEPRECATED})

NVML_TEMPERATURE_GPU = 0
NVML_TEMPERATURE_GPU_MAX = 1  # R570+: hottest point of the die
NVML_TEMPERATURE_THRESHOLD_SLOWDOWN = 1
NVML_TEMPERATURE_THRESHOLD_MEM_MAX = 2
NVML_FI_DEV_MEMORY_TEMP = 82
NVML_MEMORY_ERROR_TYPE_CORRECTED, NVML_MEMORY_ERROR_TYPE_UNCORRECTED = 0, 1
NVML_VOLATILE_ECC, NVML_AGGREGATE_ECC = 0, 1
NVML_MEMORY_LOCATION_DRAM = 2  # == NVML_MEMORY_LOCATION_DEVICE_MEMORY
NVML_MEMORY_LOCATION_SRAM = 7
NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT = 0, 1
NVML_INFOROM_OEM, NVML_INFOROM_ECC, NVML_INFOROM_POWER = 0, 1, 2
NVML_FEATURE_ENABLED = 1
NVML_NVLINK_MAX_LINKS = 18  # nvml.h before R570; newer libraries say more, and stop us with InvalidArgument
NVML_MEMORY_V2 = 0x02000028  # nvmlMemory_v2: sizeof(nvmlMemory_v2_t) | 2 << 24

_ECC_TYPES = (("correctable", NVML_MEMORY_ERROR_TYPE_CORRECTED), ("uncorrectable", NVML_MEMORY_ERROR_TYPE_UNCORRECTED))
_ECC_COUNTERS = ((True, NVML_VOLATILE_ECC), (False, NVML_AGGREGATE_ECC))
_ECC_LOCATIONS = (("dram", NVML_MEMORY_LOCATION_DRAM), ("sram", NVML_MEMORY_LOCATION_SRAM))


def error_code(e: BaseException) -> int | None:
    return getattr(e, "value", None)


def text(v: Any) -> str | None:
    """pynvml returns str from most string getters and bytes from struct fields (PciInfo.busId)."""
    if v is None:
        return None
    s = v.decode(errors="replace") if isinstance(v, (bytes, bytearray)) else str(v)
    s = s.strip("\x00").strip()
    return s or None


def field_value(fv: Any) -> float | None:
    """One nvmlFieldValue_t: None unless its own nvmlReturn is success; the union member by valueType."""
    if getattr(fv, "nvmlReturn", 1) != 0:
        return None
    member = {0: "dVal", 1: "uiVal", 2: "ulVal", 3: "ullVal", 4: "sllVal", 5: "siVal", 6: "usVal"}
    return getattr(fv.value, member.get(fv.valueType, "uiVal"), None)


class _Calls:
    """Calls into NVML for one read: absent fields quietly None, other errors noted in `errors`."""

    def __init__(self, lib: Any, errors: list[str]) -> None:
        self.lib = lib
        self.errors = errors

    def raw(self, fname: str, *args: Any) -> tuple[Any, int | None]:
        """(value, None) or (None, NVML error code); a function the binding lacks is FUNCTION_NOT_FOUND."""
        fn: Callable[..., Any] | None = getattr(self.lib, fname, None)
        if fn is None:
            return None, NVML_ERROR_FUNCTION_NOT_FOUND
        try:
            return fn(*args), None
        except self.lib.NVMLError as e:
            return None, error_code(e)

    def get(self, where: str, fname: str, *args: Any) -> Any:
        value, code = self.raw(fname, *args)
        self.note(where, fname, code)
        return value

    def note(self, where: str, fname: str, code: int | None) -> None:
        if code is not None and code not in ABSENT:
            self.errors.append(f"{where}: {fname}: {self._describe(code)}")

    def _describe(self, code: int | None) -> str:
        try:
            return str(self.lib.NVMLError(code))
        except Exception:  # noqa: BLE001 - only the message is at stake
            return f"NVML error {code}"


# ---- per-field readers (each takes the call helper, the device handle and a label for errors) -------------

def _memory(c: _Calls, h: Any, where: str) -> tuple[int | None, int | None]:
    """(used, total) bytes. nvmlMemory_v2 first: its `used` leaves out driver-reserved memory, as nvidia-smi's
    fb_memory_usage/used does; v1's used is total - free and includes it (480 MiB on an idle H100)."""
    mem, _ = c.raw("nvmlDeviceGetMemoryInfo", h, NVML_MEMORY_V2)
    if mem is None:
        mem = c.get(where, "nvmlDeviceGetMemoryInfo", h)
    if mem is None:
        return None, None
    return getattr(mem, "used", None), getattr(mem, "total", None)


def _temperatures(c: _Calls, h: Any, where: str) -> tuple[dict[str, float], dict[str, float]]:
    temps: dict[str, float] = {}
    gpu = c.get(where, "nvmlDeviceGetTemperature", h, NVML_TEMPERATURE_GPU)
    if gpu is not None:
        temps[SENSOR_GPU] = float(gpu)
    hottest, _ = c.raw("nvmlDeviceGetTemperature", h, NVML_TEMPERATURE_GPU_MAX)  # older drivers: InvalidArgument
    if hottest is not None:
        temps[SENSOR_GPU_MAX] = float(hottest)
    values = c.get(where, "nvmlDeviceGetFieldValues", h, [NVML_FI_DEV_MEMORY_TEMP])
    mem = field_value(values[0]) if values else None
    if mem:  # GPUs without an HBM/GDDR sensor answer 0 rather than an error (dcgm-exporter#460)
        temps[SENSOR_MEMORY] = float(mem)
    limits: dict[str, float] = {}
    for sensor, threshold in ((SENSOR_GPU, NVML_TEMPERATURE_THRESHOLD_SLOWDOWN),
                              (SENSOR_MEMORY, NVML_TEMPERATURE_THRESHOLD_MEM_MAX)):
        v = c.get(where, "nvmlDeviceGetTemperatureThreshold", h, threshold)
        if v:
            limits[sensor] = float(v)
    return temps, limits


def _ecc(c: _Calls, h: Any, where: str) -> list:
    """Totals from nvmlDeviceGetTotalEccErrors (what nvidia-smi sums), blocks for DRAM and SRAM where the
    driver counts by location. Nothing at all while ECC is off (NVML answers NotSupported)."""
    out = []
    for volatile, counter in _ECC_COUNTERS:
        blocks: dict[tuple[str, str], int] = {}
        totals: dict[str, int] = {}
        for typ, etype in _ECC_TYPES:
            total = c.get(where, "nvmlDeviceGetTotalEccErrors", h, etype, counter)
            if total is not None:
                totals[typ] = int(total)
            for block, location in _ECC_LOCATIONS:
                n = c.get(where, "nvmlDeviceGetMemoryErrorCounter", h, etype, counter, location)
                if n is not None:
                    blocks[(typ, block)] = int(n)
        out += ecc_counts(blocks, volatile, totals)
    return out


def _pages(c: _Calls, h: Any, where: str) -> tuple[int | None, int | None]:
    """Retired pages (both causes) and pending (1 when a retirement waits for a reset, like the XML parser)."""
    lists = [c.get(where, "nvmlDeviceGetRetiredPages", h, cause)
             for cause in (NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT, NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT)]
    known = [len(p) for p in lists if p is not None]
    pending = c.get(where, "nvmlDeviceGetRetiredPagesPendingStatus", h)
    return (sum(known) if known else None), (None if pending is None else int(pending == NVML_FEATURE_ENABLED))


def _throttle(c: _Calls, h: Any, where: str) -> tuple[list[str], list[str]]:
    mask, _ = c.raw("nvmlDeviceGetCurrentClocksEventReasons", h)  # the R535+ name of the same bitmask
    if mask is None:
        mask = c.get(where, "nvmlDeviceGetCurrentClocksThrottleReasons", h)
    if mask is None:
        return [], []
    return classify_throttle(decode_clock_reasons(int(mask)))


def _processes(c: _Calls, h: Any, where: str) -> list[Process]:
    """Compute and graphics processes; a C+G process is listed by both and kept once."""
    out: dict[int, Process] = {}
    for fname in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in c.get(where, fname, h) or []:
            if p.pid in out:
                continue
            name, _ = c.raw("nvmlSystemGetProcessName", p.pid)  # the process may have exited meanwhile
            used = getattr(p, "usedGpuMemory", None)
            out[p.pid] = Process(int(p.pid), text(name), int(used) if used is not None else None)
    return list(out.values())


def _links(c: _Calls, h: Any, where: str) -> list[tuple[Link, str | None]]:
    """NVLink state per link index until the driver says the index does not exist (NotSupported on GPUs
    without NVLink, InvalidArgument past the last link). Returned with the remote PCI address, for peers."""
    out = []
    for link in range(NVML_NVLINK_MAX_LINKS):
        state, code = c.raw("nvmlDeviceGetNvLinkState", h, link)
        if code in (NVML_ERROR_NOT_SUPPORTED, NVML_ERROR_INVALID_ARGUMENT, NVML_ERROR_FUNCTION_NOT_FOUND):
            break
        if code is not None:
            c.note(where, "nvmlDeviceGetNvLinkState", code)
            out.append((Link(f"nvlink{link}", None, None, kind="nvlink"), None))
            continue
        remote, _ = c.raw("nvmlDeviceGetNvLinkRemotePciInfo", h, link)
        bdf = pci_label(text(getattr(remote, "busId", None)))
        out.append((Link(f"nvlink{link}", None, state == NVML_FEATURE_ENABLED, kind="nvlink"), bdf))
    return out


def _firmware(c: _Calls, h: Any, where: str) -> dict[str, str]:
    values = {
        "vbios": c.get(where, "nvmlDeviceGetVbiosVersion", h),
        "inforom_image": c.get(where, "nvmlDeviceGetInforomImageVersion", h),
        "inforom_oem": c.get(where, "nvmlDeviceGetInforomVersion", h, NVML_INFOROM_OEM),
        "inforom_ecc": c.get(where, "nvmlDeviceGetInforomVersion", h, NVML_INFOROM_ECC),
        "inforom_pwr": c.get(where, "nvmlDeviceGetInforomVersion", h, NVML_INFOROM_POWER),
        "gsp": c.get(where, "nvmlDeviceGetGspFirmwareVersion", h),
    }
    return {k: t for k, t in ((k, text(v)) for k, v in values.items()) if t is not None}


def _watts(milliwatts: Any) -> float | None:
    return milliwatts / 1000.0 if milliwatts is not None else None


def read_device(c: _Calls, h: Any, position: int, driver: str | None) -> tuple[GpuReading, list]:
    """One whole GPU. The index is the minor number (/dev/nvidiaN), as the XML parser uses, else the NVML
    enumeration index."""
    minor = c.get(f"gpu{position}", "nvmlDeviceGetMinorNumber", h)
    index = valid.index(minor)
    index = index if index is not None else position
    where = f"gpu{index}"
    pci = c.get(where, "nvmlDeviceGetPciInfo", h)
    util = c.get(where, "nvmlDeviceGetUtilizationRates", h)
    used, total = _memory(c, h, where)
    temps, limits = _temperatures(c, h, where)
    retired, pending = _pages(c, h, where)
    rows = c.get(where, "nvmlDeviceGetRemappedRows", h)
    gen, max_gen = (c.get(where, f"nvmlDevice{f}PcieLinkGeneration", h) for f in ("GetCurr", "GetMax"))
    active, hardware = _throttle(c, h, where)
    links = _links(c, h, where)
    reading = GpuReading(
        index=index,
        vendor="nvidia",
        model=text(c.get(where, "nvmlDeviceGetName", h)),
        serial=text(c.get(where, "nvmlDeviceGetSerial", h)),
        uuid=text(c.get(where, "nvmlDeviceGetUUID", h)),
        pci_bus_id=pci_label(text(getattr(pci, "busId", None))),
        driver=driver,
        firmware=_firmware(c, h, where),
        utilization=util.gpu / 100.0 if util is not None else None,
        memory_used_bytes=used,
        memory_total_bytes=total,
        temperatures=temps,
        temperature_limits=limits,
        power_watts=_watts(c.get(where, "nvmlDeviceGetPowerUsage", h)),
        power_limit_watts=_watts(c.get(where, "nvmlDeviceGetEnforcedPowerLimit", h)),
        ecc=_ecc(c, h, where),
        retired_pages=retired,
        pending_pages=pending,
        row_remap_correctable=int(rows[0]) if rows is not None else None,
        row_remap_uncorrectable=int(rows[1]) if rows is not None else None,
        row_remap_pending=bool(rows[2]) if rows is not None else None,
        row_remap_failure=bool(rows[3]) if rows is not None else None,
        pcie_width=c.get(where, "nvmlDeviceGetCurrPcieLinkWidth", h),
        pcie_max_width=c.get(where, "nvmlDeviceGetMaxPcieLinkWidth", h),
        pcie_speed_gts=pcie_gen_speed(gen),
        pcie_max_speed_gts=pcie_gen_speed(max_gen),
        pcie_replay_count=c.get(where, "nvmlDeviceGetPcieReplayCounter", h),
        links=[link for link, _ in links],
        throttle_active=active,
        throttle_hardware=hardware,
        processes=_processes(c, h, where),
    )
    return validate(reading), [(link, bdf) for link, bdf in links if bdf]


def read_mig(c: _Calls, h: Any, parent: GpuReading) -> list[GpuReading]:
    """MIG instances as partition readings (partition = GPU instance id), identity and memory only, like the
    XML parser: health counters stay on the parent GPU."""
    mode = c.get(parent.entity, "nvmlDeviceGetMigMode", h)
    if not mode or mode[0] != 1:
        return []
    out: dict[str, GpuReading] = {}
    for i in range(c.get(parent.entity, "nvmlDeviceGetMaxMigDeviceCount", h) or 0):
        mh, _ = c.raw("nvmlDeviceGetMigDeviceHandleByIndex", h, i)  # NotFound: no instance in that slot
        gi = c.get(parent.entity, "nvmlDeviceGetGpuInstanceId", mh) if mh is not None else None
        if gi is None or str(gi) in out:
            continue
        used, total = _memory(c, mh, f"{parent.entity}/{gi}")
        out[str(gi)] = GpuReading(
            index=parent.index, vendor="nvidia", model=parent.model, serial=parent.serial,
            uuid=text(c.get(parent.entity, "nvmlDeviceGetUUID", mh)), pci_bus_id=parent.pci_bus_id,
            driver=parent.driver, partition=str(gi), memory_used_bytes=used, memory_total_bytes=total)
        validate(out[str(gi)])
    return list(out.values())


def resolve_peers(gpus: list[GpuReading], remote: list[tuple[Link, str]]) -> None:
    """An NVLink's peer is the GPU at its remote PCI address; an NVSwitch (or anything else) stays None."""
    by_bdf = {g.pci_bus_id: str(g.index) for g in gpus if g.pci_bus_id and not g.partition}
    for link, bdf in remote:
        link.peer = by_bdf.get(bdf)


class NvmlBackend:
    """NVML through nvidia-ml-py; `lib` injects a stand-in module (tests)."""

    name = "nvml"
    vendor = "nvidia"

    def __init__(self, lib: Any = None) -> None:
        self._lib = lib
        self._initialized = False

    def _library(self) -> Any:
        if self._lib is None:
            try:
                import pynvml  # noqa: PLC0415 - lazy on purpose
            except ImportError as e:
                raise BackendUnavailable(f"nvidia-ml-py (pynvml) is not installed: {e}") from None
            self._lib = pynvml
        return self._lib

    def _init(self) -> Any:
        lib = self._library()
        if self._initialized:
            return lib
        try:
            lib.nvmlInit()
        except lib.NVMLError as e:
            code = error_code(e)
            if code == NVML_ERROR_LIBRARY_NOT_FOUND:
                raise BackendUnavailable(f"NVML library (libnvidia-ml.so.1) not found: {e}") from None
            if code == NVML_ERROR_DRIVER_NOT_LOADED:
                raise BackendUnavailable(f"NVIDIA driver not loaded: {e}") from None
            raise RuntimeError(f"nvmlInit failed: {e}") from None
        self._initialized = True
        return lib

    def read(self) -> GpuInventory:
        lib = self._init()
        errors: list[str] = []
        c = _Calls(lib, errors)
        driver = text(c.get("system", "nvmlSystemGetDriverVersion"))
        count = lib.nvmlDeviceGetCount()  # failing here leaves nothing to report: the read fails
        gpus: list[GpuReading] = []
        remote: list[tuple[Link, str]] = []
        for position in range(count):
            try:
                h = lib.nvmlDeviceGetHandleByIndex(position)
            except lib.NVMLError as e:  # a lost GPU: the others are still read, the count rule sees the gap
                errors.append(f"gpu{position}: nvmlDeviceGetHandleByIndex: {e}")
                continue
            reading, links = read_device(c, h, position, driver)
            gpus.append(reading)
            gpus.extend(read_mig(c, h, reading))
            remote += links
        resolve_peers(gpus, remote)
        return GpuInventory(backend=self.name, vendor=self.vendor, gpus=gpus, errors=errors)

    def close(self) -> None:
        if self._initialized and self._lib is not None:
            self._initialized = False
            try:
                self._lib.nvmlShutdown()
            except self._lib.NVMLError:
                pass
