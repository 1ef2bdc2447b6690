"""NVIDIA `nvidia-smi -q -x` XML (DTD v11, v12, v13) -> GpuReading, and the replay/CLI backend built on it.

The parser is pure (text in, readings out) and never raises on the placeholders nvidia-smi prints instead of a
value ("N/A", "[Not Supported]", "Unknown Error", ...): that field is None. The NVML backend (gpu_nvidia.py)
shares the vendor-name tables below, so both backends describe one GPU the same way.
"""
from __future__ import annotations

import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from agent.base import validate as valid
from agent.base.pci import label as pci_label
from agent.base.tools import DEFAULT_MAX_STDOUT, run_tool
from .backend import BackendUnavailable
from .model import EccCount, GpuInventory, GpuReading, Process, pcie_gen_speed, validate

MIB = 1024 * 1024

# Temperature sensors. NVML documents NVML_TEMPERATURE_GPU (nvidia-smi's gpu_temp, DCGM_FI_DEV_GPU_TEMP) as
# "temperature sensor for the GPU die" and, since R570, NVML_TEMPERATURE_GPU_MAX as "temperature from the
# hottest part of the GPU die". The hottest point is what AMD calls junction (hotspot); a single die sensor
# that reads below it is AMD's edge. So gpu_temp -> "edge", GPU_MAX (when the driver has it) -> "junction":
# calling the core sensor "junction" would let a junction threshold tuned on hotspots pass a hotter die.
SENSOR_GPU = "edge"
SENSOR_GPU_MAX = "junction"
SENSOR_MEMORY = "memory"

# Clock event ("throttle") reasons: nvidia-smi element suffix == name, with the NVML bit it mirrors
# (nvml.h nvmlClocksEventReason*/nvmlClocksThrottleReason*; board_limit/reliability from nvidia-ml-py).
CLOCK_REASON_BITS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake_slowdown",
    0x100: "display_clocks_setting",
    0x200: "board_limit",
    0x400: "reliability",
}
# Idle and clock settings lower clocks on purpose: they are not throttling.
NOT_THROTTLING = frozenset({"gpu_idle", "applications_clocks_setting", "display_clocks_setting"})
HARDWARE_THROTTLE = ("hw_slowdown", "hw_thermal_slowdown", "hw_power_brake_slowdown")

_PLACEHOLDERS = frozenset({
    "", "n/a", "not supported", "unknown error", "requested functionality has been deprecated",
    "insufficient permissions", "not available", "unknown",
})
_NUMBER = re.compile(r"^\s*(-?\d+(?:\.\d+)?)\s*([A-Za-z%/]*)")
_UNIT_BYTES = {"b": 1, "kib": 1024, "mib": MIB, "gib": 1024 * MIB, "kb": 1000, "mb": 1000**2, "gb": 1000**3}


# ---- value helpers ---------------------------------------------------------------------------------------

def clean(text: str | None) -> str | None:
    """A string value, or None for nvidia-smi's placeholders ("N/A", "[Not Supported]", "[Unknown Error]")."""
    if text is None:
        return None
    value = text.strip()
    bare = value.strip("[]").strip().lower()
    if bare in _PLACEHOLDERS or (value.startswith("[") and value.endswith("]")):
        return None
    return value


def number(text: str | None) -> float | None:
    """The leading number of "123.48 W", "36 C", "16x", "0 %"; None when there is none."""
    value = clean(text)
    if value is None:
        return None
    m = _NUMBER.match(value)
    return float(m.group(1)) if m else None


def integer(text: str | None) -> int | None:
    """number() as an int; a non-finite number (a 400-digit one reads as inf) stays a float for the
    validator to flag."""
    n = number(text)
    return int(n) if n is not None and math.isfinite(n) else n  # type: ignore[return-value]


def size_bytes(text: str | None) -> int | None:
    """"81559 MiB" -> bytes. nvidia-smi prints MiB; a bare number is taken as MiB too."""
    value = clean(text)
    if value is None:
        return None
    m = _NUMBER.match(value)
    if not m:
        return None
    scale = _UNIT_BYTES.get(m.group(2).lower(), MIB)
    size = float(m.group(1)) * scale
    return int(size) if math.isfinite(size) else size  # type: ignore[return-value]


def yes_no(text: str | None) -> bool | None:
    value = clean(text)
    if value is None:
        return None
    low = value.lower()
    if low in ("yes", "enabled", "active", "true"):
        return True
    if low in ("no", "disabled", "not active", "false"):
        return False
    return None


def _children(node: ET.Element | None, path: str) -> list[ET.Element]:
    found = node.find(path) if node is not None else None
    return list(found) if found is not None else []


def _text(node: ET.Element | None, path: str) -> str | None:
    if node is None:
        return None
    found = node.find(path)
    return found.text if found is not None else None


# ---- shared with the NVML backend --------------------------------------------------------------------------

def classify_throttle(active: list[str]) -> tuple[list[str], list[str]]:
    """Active clock event reasons -> (throttle_active, throttle_hardware), in a stable order."""
    throttling = [r for r in dict.fromkeys(active) if r not in NOT_THROTTLING]
    return throttling, [r for r in throttling if r in HARDWARE_THROTTLE]


def decode_clock_reasons(mask: int) -> list[str]:
    """NVML's clock event bitmask -> the names nvidia-smi uses; unknown bits keep their value."""
    names = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            names.append(CLOCK_REASON_BITS.get(bit, f"unknown_0x{bit:x}"))
        bit <<= 1
    return names


def ecc_counts(blocks: dict[tuple[str, str], int], volatile: bool, totals: dict[str, int] | None = None,
               partial: frozenset[str] | set[str] = frozenset()) -> list[EccCount]:
    """Per-block counts {(type, block): n} plus a "total" per type: the reported total where the source gives
    one, else the sum of its blocks, unless a block of that type was unreadable (`partial`): a sum that
    silently skips an unknown block would read as a real zero."""
    out = [EccCount(t, b, n, volatile) for (t, b), n in blocks.items()]
    totals = dict(totals or {})
    # An impossible block count (-2) summed with a real one (1) would make a plausible-looking total: that
    # type has no derived total, as for an unreadable block (the validator then names the bad block).
    partial = set(partial) | {t for (t, _), n in blocks.items() if not valid.counter(n)}
    for t in dict.fromkeys(t for t, _ in blocks):
        if t not in partial:
            totals.setdefault(t, sum(n for (tt, _), n in blocks.items() if tt == t))
    out += [EccCount(t, "total", n, volatile) for t, n in totals.items()]
    return out


# ---- sections ----------------------------------------------------------------------------------------------

# Old (single_bit/double_bit) ECC block names. NVML's header makes NVML_MEMORY_LOCATION_DRAM an alias of
# DEVICE_MEMORY, and newer nvidia-smi prints it as dram: one name keeps old and new GPUs on one series.
_OLD_ECC_BLOCKS = {"device_memory": "dram"}
_NEW_ECC = re.compile(r"^(sram|dram)_(correctable|uncorrectable)(?:_\w+)?$")


def parse_ecc_group(group: ET.Element | None, volatile: bool) -> list[EccCount]:
    """One <volatile> or <aggregate> element, in either layout (the DTD version does not tell which: a T4 on
    515 prints the first, a Pascal GPU on 513 the second):
    sram_correctable, sram_uncorrectable[_parity|_secded], dram_correctable, dram_uncorrectable; or
    single_bit/double_bit, each holding device_memory, register_file, l1_cache, ..., total."""
    if group is None:
        return []
    blocks: dict[tuple[str, str], int] = {}
    totals: dict[str, int] = {}
    unreadable: set[str] = set()
    entries = [(typ, child.tag, child.text)
               for kind, typ in (("single_bit", "correctable"), ("double_bit", "uncorrectable"))
               for child in _children(group, kind)]
    for child in group:
        m = _NEW_ECC.match(child.tag)
        if m:  # sram_uncorrectable_parity + sram_uncorrectable_secded add up to sram
            entries.append((m.group(2), m.group(1), child.text))
    for typ, tag, value in entries:
        n = integer(value)
        if n is None:
            unreadable.add(typ)
        elif tag == "total":
            totals[typ] = n
        else:
            block = _OLD_ECC_BLOCKS.get(tag, tag)
            blocks[(typ, block)] = blocks.get((typ, block), 0) + n
    return ecc_counts(blocks, volatile, totals, unreadable)


_NOT_SUPPORTED = frozenset({"n/a", "not supported"})


def ecc_read_errors(group: ET.Element | None) -> dict[str, str]:
    """check -> why, for volatile ECC counts that nvidia-smi could not read ("[Unknown Error]", "[GPU is
    lost]"...), as opposed to counts the GPU does not have (N/A, [Not Supported]): the check is unknown, and
    never judged ok on the blocks that did read."""
    out: dict[str, str] = {}
    if group is None:
        return out
    old_layout = {"single_bit": "correctable", "double_bit": "uncorrectable"}
    entries = [(old_layout[kind], child) for kind in old_layout for child in _children(group, kind)]
    entries += [(m.group(2), child) for child in group if (m := _NEW_ECC.match(child.tag))]
    for typ, child in entries:
        raw = (child.text or "").strip()
        if not raw or integer(raw) is not None or raw.strip("[]").strip().lower() in _NOT_SUPPORTED:
            continue
        out.setdefault(f"gpu.ecc.{typ}", f"nvidia-smi: volatile ECC {child.tag} reads {raw!r}")
    return out


def parse_throttle(gpu: ET.Element) -> tuple[list[str], list[str]]:
    """clocks_event_reasons (driver 535+) or clocks_throttle_reasons (older): the "Active" entries."""
    active: list[str] = []
    for section, prefix in (("clocks_event_reasons", "clocks_event_reason_"),
                            ("clocks_throttle_reasons", "clocks_throttle_reason_")):
        for child in _children(gpu, section):
            if child.tag.startswith(prefix) and yes_no(child.text):
                active.append(child.tag[len(prefix):])
    return classify_throttle(active)


def parse_temperatures(gpu: ET.Element) -> tuple[dict[str, float], dict[str, float]]:
    temp = gpu.find("temperature")
    temps: dict[str, float] = {}
    limits: dict[str, float] = {}
    for name, tag in ((SENSOR_GPU, "gpu_temp"), (SENSOR_MEMORY, "memory_temp")):
        v = number(_text(temp, tag))
        if v is not None:
            temps[name] = v
    # Absolute slowdown limits (v11/v12). Hopper with driver 550+ prints them relative to T.Limit instead
    # (gpu_temp_slow_tlimit_threshold): left out rather than turned into a guessed absolute temperature.
    for name, tag in ((SENSOR_GPU, "gpu_temp_slow_threshold"), (SENSOR_MEMORY, "gpu_temp_max_mem_threshold")):
        v = number(_text(temp, tag))
        if v is not None:
            limits[name] = v
    return temps, limits


def parse_power(gpu: ET.Element) -> tuple[float | None, float | None]:
    """Draw and enforced limit in watts. v12+: gpu_power_readings, older: power_readings. The 1 s average comes
    first: it is what NVML's nvmlDeviceGetPowerUsage returns on Ampere (except GA100) and newer."""
    section = gpu.find("gpu_power_readings")
    if section is None:
        section = gpu.find("power_readings")
    draw = limit = None
    for tag in ("average_power_draw", "power_draw", "instant_power_draw"):
        draw = number(_text(section, tag))
        if draw is not None:
            break
    for tag in ("enforced_power_limit", "current_power_limit", "power_limit"):
        limit = number(_text(section, tag))
        if limit is not None:
            break
    return draw, limit


def parse_pages(gpu: ET.Element) -> tuple[int | None, int | None]:
    """Retired pages (single-bit + double-bit retirements) and pending ones. nvidia-smi only says whether a
    retirement is pending, not how many: Yes counts as 1, No as 0."""
    pages = gpu.find("retired_pages")
    counts = [integer(_text(pages, f"{k}/retired_count"))
              for k in ("multiple_single_bit_retirement", "double_bit_retirement")]
    known = [c for c in counts if c is not None]
    retired = sum(known) if known else None
    flags = [yes_no(_text(pages, k)) for k in ("pending_retirement", "pending_blacklist")]
    known_flags = [f for f in flags if f is not None]
    pending = (1 if any(known_flags) else 0) if known_flags else None
    return retired, pending


def parse_processes(gpu: ET.Element) -> list[Process]:
    procs = []
    for p in gpu.findall("processes/process_info"):
        pid = integer(_text(p, "pid"))
        if pid is not None:
            procs.append(Process(pid, clean(_text(p, "process_name")), size_bytes(_text(p, "used_memory"))))
    return procs


def _firmware(gpu: ET.Element) -> dict[str, str]:
    fields = {
        "vbios": _text(gpu, "vbios_version"),
        "inforom_image": _text(gpu, "inforom_version/img_version"),
        "inforom_oem": _text(gpu, "inforom_version/oem_object"),
        "inforom_ecc": _text(gpu, "inforom_version/ecc_object"),
        "inforom_pwr": _text(gpu, "inforom_version/pwr_object"),
        "gsp": _text(gpu, "gsp_firmware_version"),
    }
    return {k: v for k, v in ((k, clean(v)) for k, v in fields.items()) if v is not None}


def parse_gpu(gpu: ET.Element, position: int, driver: str | None) -> GpuReading:
    """One <gpu> element. The index is the minor number (/dev/nvidiaN), else the position in the file."""
    minor = valid.index(integer(_text(gpu, "minor_number")))  # 400 digits: not a minor number
    link = gpu.find("pci/pci_gpu_link_info")
    gen, max_gen = integer(_text(link, "pcie_gen/current_link_gen")), integer(_text(link, "pcie_gen/max_link_gen"))
    temps, limits = parse_temperatures(gpu)
    power, power_limit = parse_power(gpu)
    retired, pending = parse_pages(gpu)
    active, hardware = parse_throttle(gpu)
    util = number(_text(gpu, "utilization/gpu_util"))
    rows = gpu.find("remapped_rows")
    ecc = gpu.find("ecc_errors")
    return validate(GpuReading(
        index=minor if minor is not None else position,
        vendor="nvidia",
        model=clean(_text(gpu, "product_name")),
        serial=clean(_text(gpu, "serial")),
        uuid=clean(_text(gpu, "uuid")),
        pci_bus_id=pci_label(clean(_text(gpu, "pci/pci_bus_id")) or clean(gpu.get("id"))),
        driver=driver,
        firmware=_firmware(gpu),
        utilization=util / 100.0 if util is not None else None,
        memory_used_bytes=size_bytes(_text(gpu, "fb_memory_usage/used")),
        memory_total_bytes=size_bytes(_text(gpu, "fb_memory_usage/total")),
        temperatures=temps,
        temperature_limits=limits,
        power_watts=power,
        power_limit_watts=power_limit,
        ecc=parse_ecc_group(ecc.find("volatile") if ecc is not None else None, True)
        + parse_ecc_group(ecc.find("aggregate") if ecc is not None else None, False),
        retired_pages=retired,
        pending_pages=pending,
        row_remap_correctable=integer(_text(rows, "remapped_row_corr")),
        row_remap_uncorrectable=integer(_text(rows, "remapped_row_unc")),
        row_remap_pending=yes_no(_text(rows, "remapped_row_pending")),
        row_remap_failure=yes_no(_text(rows, "remapped_row_failure")),
        pcie_width=integer(_text(link, "link_widths/current_link_width")),
        pcie_max_width=integer(_text(link, "link_widths/max_link_width")),
        pcie_speed_gts=pcie_gen_speed(gen),
        pcie_max_speed_gts=pcie_gen_speed(max_gen),
        pcie_replay_count=integer(_text(gpu, "pci/replay_counter")),
        throttle_active=active,
        throttle_hardware=hardware,
        processes=parse_processes(gpu),
        unread=ecc_read_errors(ecc.find("volatile") if ecc is not None else None),
    ))


def parse_mig(gpu: ET.Element, parent: GpuReading) -> list[GpuReading]:
    """MIG instances as partition readings (partition = GPU instance id), one per GPU instance: memory belongs
    to the GPU instance, so several compute instances of one GI would only repeat it. They carry identity and
    memory only; health counters stay on the parent, which counts the errors of every instance."""
    if yes_no(_text(gpu, "mig_mode/current_mig")) is not True:
        return []
    out: dict[str, GpuReading] = {}
    for dev in gpu.findall("mig_devices/mig_device"):
        gi = valid.index(integer(_text(dev, "gpu_instance_id")))
        if gi is None or str(gi) in out:
            continue
        out[str(gi)] = validate(GpuReading(
            index=parent.index, vendor="nvidia", model=parent.model, serial=parent.serial, uuid=None,
            pci_bus_id=parent.pci_bus_id, driver=parent.driver, partition=str(gi),
            memory_used_bytes=size_bytes(_text(dev, "fb_memory_usage/used")),
            memory_total_bytes=size_bytes(_text(dev, "fb_memory_usage/total")),
        ))
    return list(out.values())


def parse_xml(text: str) -> list[GpuReading]:
    """Every GPU (and MIG instance) in one `nvidia-smi -q -x` document. Raises ValueError on malformed XML."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as e:
        raise ValueError(f"nvidia-smi XML does not parse: {e}") from None
    if root.tag != "nvidia_smi_log":
        raise ValueError(f"not nvidia-smi -q -x output (root element <{root.tag}>)")
    driver = clean(_text(root, "driver_version"))
    readings: list[GpuReading] = []
    for position, gpu in enumerate(root.findall("gpu")):
        reading = parse_gpu(gpu, position, driver)
        readings.append(reading)
        readings.extend(parse_mig(gpu, reading))
    return readings


# ---- backend -----------------------------------------------------------------------------------------------

# nvidia-smi's own words when the driver is absent (not a GPU fault: the collector compares with PCI).
# A driver/library version mismatch is not among them: that node needs a reboot, and must say so.
_NO_DRIVER = ("couldn't communicate with the nvidia driver", "no devices were found",
              "nvml shared library not found")


class NvidiaSmiBackend:
    """`nvidia-smi -q -x`, live (in its own process group, under a timeout) or replayed from a snapshot's
    nvidia-smi/q.xml."""

    name = "nvidia-smi"
    vendor = "nvidia"

    def __init__(self, xml_path: Path | None = None, binary: str = "nvidia-smi", timeout: float = 8.0,
                 max_output: int = DEFAULT_MAX_STDOUT) -> None:
        self.xml_path = Path(xml_path) if xml_path is not None else None
        self.binary = binary
        self.timeout = timeout
        self.max_output = max_output

    def _replay(self, path: Path) -> str:
        if path.is_dir():  # a snapshot directory given instead of its q.xml
            path = path / "nvidia-smi" / "q.xml"
        try:
            return path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            raise BackendUnavailable(f"{path} not in snapshot") from None

    def _run(self) -> str:
        try:
            return run_tool([self.binary, "-q", "-x"], self.timeout, self.max_output)
        except RuntimeError as e:
            if any(s in str(e).lower() for s in _NO_DRIVER):
                raise BackendUnavailable(f"nvidia-smi: {str(e)[-200:]}") from None
            raise

    def read(self) -> GpuInventory:
        text = self._replay(self.xml_path) if self.xml_path is not None else self._run()
        return GpuInventory(backend=self.name, vendor=self.vendor, gpus=parse_xml(text))

    def close(self) -> None:
        pass
