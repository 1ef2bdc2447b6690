"""AMD GPUs from `amd-smi <cmd> --json`: run live through the CLI, or replayed from a node snapshot.

The parsers are pure functions of decoded JSON. They accept every shape amd-smi has printed since ROCm 6.0:
a plain list (amd-smi < 26), `{"gpu_data": [...]}` (amd-smi >= 26), bare numbers, `{"value", "unit"}`
dicts, the string "N/A" in place of any value or whole section. A surprising shape skips that one field:
the parser never raises on what the tool prints (see ../shared/reference/amd-smi-schema-differences.md).
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

from agent.base import validate as valid
from agent.base.pci import label as pci_label
from agent.base.tools import DEFAULT_MAX_STDOUT, ToolError, ToolOutputTooLarge, run_tool
from .backend import BackendUnavailable
from .model import EccCount, GpuInventory, GpuReading, Link, Process, validate

COMMANDS = ("list", "static", "metric", "process", "bad-pages", "xgmi", "firmware")
# The checks (rules.py) each command's output feeds. When a command failed, or printed nothing for a GPU,
# exactly these are unknown on that GPU (DESIGN §0: a partial read keeps what was read). list, process and
# firmware carry identity, attribution and versions only. "gpu.temperature" stands for every sensor.
NEEDED_BY = {
    "metric": ("gpu.ecc.uncorrectable", "gpu.ecc.correctable", "gpu.ecc.deferred", "gpu.temperature",
               "gpu.pcie.width", "gpu.pcie.generation", "gpu.throttle"),
    "static": ("gpu.pcie.width", "gpu.pcie.generation"),  # the link's maximum width and speed
    "bad-pages": ("gpu.pages.retired", "gpu.pages.pending"),
    "xgmi": ("gpu.xgmi",),
}
PER_GPU = ("static", "metric", "bad-pages")  # print one entry per GPU (xgmi's link status is version-dependent)

ECC_TYPES = ("correctable", "uncorrectable", "deferred")
# amd-smi sensor name -> our sensor name (DESIGN §5: edge, junction, memory).
TEMPERATURE_SENSORS = {"edge": "edge", "hotspot": "junction", "mem": "memory"}
TEMPERATURE_LIMITS = {"slowdown_edge_temperature": "edge", "slowdown_hotspot_temperature": "junction",
                      "slowdown_vram_temperature": "memory"}
# MI300+ violation kinds (metric --throttle). PPT is the power cap doing its job: active, but not hardware.
VIOLATIONS = ("prochot", "ppt", "socket_thermal", "vr_thermal", "hbm_thermal")
HARDWARE_VIOLATIONS = frozenset({"prochot", "socket_thermal", "vr_thermal", "hbm_thermal"})
NO_BAD_PAGES = "no bad pages found."

# Sizes go to bytes; amd-smi computes "MB" from bytes by 1024**2, so its MB is a MiB.
_UNIT_SCALE = {"b": 1, "kb": 1024, "kib": 1024, "mb": 1024**2, "mib": 1024**2, "gb": 1024**3, "gib": 1024**3,
               "tb": 1024**4, "mw": 1e-3, "uw": 1e-6, "µw": 1e-6}
_NUMBER_WITH_UNIT = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s*([^\d\s].*)?$")


# -- values ---------------------------------------------------------------------------------------------
def value_of(v: Any) -> float | None:
    """Any amd-smi value as a float in base units, or None when it is N/A or not a number.
    Takes 152, 15.3, {"value": 152, "unit": "W"}, {"value": "N/A", "unit": "mV"}, "N/A", "550 W", "32 GT/s".
    NaN, Inf and integers too wide for a float (+-Inf) come back as they are: impossible values are the
    validator's to name (model.validate), never silently "not reported"."""
    unit = None
    if isinstance(v, dict):
        v, unit = v.get("value"), v.get("unit")
    if isinstance(v, (int, float)):
        number = valid.to_float(v)  # None for a bool: an int in Python, never a reading here
        if number is None:
            return None
    elif isinstance(v, str):
        m = _NUMBER_WITH_UNIT.match(v)
        if not m:
            return None
        number = float(m.group(1))  # a 400-digit string is inf here, and flagged later
        unit = unit or m.group(2)
    else:
        return None
    if isinstance(unit, str):
        number *= _UNIT_SCALE.get(unit.strip().lower(), 1)
    return number


def int_of(v: Any) -> int | None:
    """value_of rounded to an int; a non-finite value stays a float for the validator to flag."""
    f = value_of(v)
    if f is None or not math.isfinite(f):
        return f  # type: ignore[return-value]
    return int(round(f))


def text_of(v: Any) -> str | None:
    """A string field, None when absent, empty or N/A."""
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return valid.shown(v)  # str() of a 5,000-digit int raises
    if not isinstance(v, str):
        return None
    v = v.strip()
    return None if not v or v.upper() == "N/A" else v


def bool_of(v: Any) -> bool | None:
    if isinstance(v, bool):
        return v
    if isinstance(v, str) and v.strip().lower() in ("true", "false"):
        return v.strip().lower() == "true"
    return None


def section(entry: Any, *path: str) -> dict:
    """entry[path...] when every step is a dict; {} otherwise (a whole section may be "N/A")."""
    for key in path:
        entry = entry.get(key) if isinstance(entry, dict) else None
    return entry if isinstance(entry, dict) else {}


def first_value(d: dict, *keys: str) -> float | None:
    for key in keys:
        v = value_of(d.get(key))
        if v is not None:
            return v
    return None


# -- top-level shapes -----------------------------------------------------------------------------------
def _flatten(items: Any) -> list[dict]:
    """Dicts from a list that may nest lists (7.x xgmi prints `"xgmi_metric": [[...]]`). Iterative: a list
    nested as deep as the JSON decoder allows must not overflow the stack here."""
    if isinstance(items, dict):
        return [items]
    out: list[dict] = []
    stack = [iter(items)] if isinstance(items, list) else []
    while stack:
        item = next(stack[-1], _END)
        if item is _END:
            stack.pop()
        elif isinstance(item, list):
            stack.append(iter(item))
        elif isinstance(item, dict):
            out.append(item)
    return out


_END = object()


def gpu_entries(doc: Any, key: str = "gpu_data") -> list[dict] | None:
    """Per-GPU entries from either top-level shape; None when the shape is not one amd-smi prints."""
    if isinstance(doc, list):
        return _flatten(doc)
    if isinstance(doc, dict):
        if key in doc:
            return _flatten(doc[key])
        if "gpu" in doc:  # one GPU selected with -g
            return [doc]
        if not doc:
            return []
    return None


def gpu_index(entry: dict) -> int | None:
    """The entry's GPU index: a small int or ASCII digits ("²" and a 400-digit number are not indexes)."""
    return valid.index(entry.get("gpu"))


def by_gpu(entries: list[dict]) -> dict[int, dict]:
    """Index entries by GPU; a later entry for the same GPU (watch mode) wins."""
    out: dict[int, dict] = {}
    for entry in entries:
        idx = gpu_index(entry)
        if idx is not None:
            out[idx] = entry
    return out


def decode_json(text: str) -> Any:
    """amd-smi's stdout as JSON. Watch mode prints a banner line before the JSON, so a document may also
    start at the beginning of a later line; it must run to the end of the output. Raises ValueError when
    there is no complete JSON document (an error message, or output cut short: a nested object inside a
    truncated document is never taken for the whole)."""
    try:
        return json.loads(text)
    except RecursionError:  # nested deeper than the decoder goes: not an output amd-smi prints
        raise ValueError("JSON nested too deep") from None
    except ValueError as e:
        whole = e
    decoder = json.JSONDecoder()
    for m in re.finditer(r"(?m)^[\[{]", text):  # top-level documents start at column 0
        if m.start() == 0:
            continue  # that was the whole text: json.loads above said why it failed
        try:
            doc, end = decoder.raw_decode(text, m.start())
        except RecursionError:
            raise ValueError("JSON nested too deep") from None
        except ValueError:
            continue
        if not text[end:].strip():
            return doc
    if not text.strip():
        raise ValueError("empty output")
    if re.match(r"\s*[\[{]", text) and isinstance(whole, json.JSONDecodeError):
        raise ValueError(f"incomplete JSON ({whole.msg} at offset {whole.pos} of {len(text)}: cut short?)")
    raise ValueError(f"no JSON in output: {text.strip().splitlines()[0][:200]}")


# -- per-section parsers (one amd-smi entry -> some GpuReading fields) ---------------------------------
def parse_identity(g: GpuReading, listed: dict, static: dict) -> None:
    asic, board = section(static, "asic"), section(static, "board")
    g.model = text_of(asic.get("market_name"))
    g.serial = text_of(asic.get("asic_serial")) or text_of(board.get("product_serial"))
    g.uuid = text_of(listed.get("uuid"))
    g.pci_bus_id = pci_label(text_of(listed.get("bdf")) or text_of(section(static, "bus").get("bdf")))
    g.driver = text_of(section(static, "driver").get("version"))


def parse_firmware(static: dict, firmware: dict) -> dict[str, str]:
    fw: dict[str, str] = {}
    for key in ("ifwi", "vbios"):  # 7.1 renamed vbios to ifwi
        version = text_of(section(static, key).get("version"))
        if version:
            fw[key] = version
    fw_list = firmware.get("fw_list")
    for item in fw_list if isinstance(fw_list, list) else []:
        if not isinstance(item, dict):
            continue
        name, version = text_of(item.get("fw_id") or item.get("fw_name")), text_of(item.get("fw_version"))
        if name and version:
            fw[name] = version
    return fw


def compute_partition_mode(static: dict) -> str | None:
    """SPX/DPX/QPX/CPX from `static --partition` (key renamed in 6.4.2); None when not printed."""
    part = section(static, "partition")
    return text_of(part.get("accelerator_partition") or part.get("compute_partition"))


def partition_id(listed: dict, static: dict) -> int | None:
    pid = small_int(listed.get("partition_id"))
    return pid if pid is not None else small_int(section(static, "partition").get("partition_id"))


def small_int(v: Any) -> int | None:
    """An identifier (partition id): a small non-negative whole number, else None."""
    f = value_of(v)
    return int(f) if f is not None and valid.in_range(f, 0, valid.INDEX_MAX) and f.is_integer() else None


def partition_label(pid: int | None, mode: str | None, node_partitioned: bool) -> str:
    """"" for a whole GPU; the partition id when the GPU is split into compute partitions (DPX/QPX/CPX).
    When the mode is unknown (7.1's default `static` omits it), a node where any GPU reports a partition id
    above 0 counts as split."""
    if pid is None:
        return ""
    if mode is not None:
        return "" if mode.upper() == "SPX" else str(pid)
    return str(pid) if node_partitioned else ""


def parse_partition(listed: dict, static: dict, node_partitioned: bool) -> str:
    return partition_label(partition_id(listed, static), compute_partition_mode(static), node_partitioned)


def parse_usage(g: GpuReading, metric: dict) -> None:
    gfx = value_of(section(metric, "usage").get("gfx_activity"))
    g.utilization = None if gfx is None else gfx / 100.0


def parse_memory(g: GpuReading, metric: dict, static: dict) -> None:
    mem = section(metric, "mem_usage")
    g.memory_used_bytes = int_of(mem.get("used_vram"))
    g.memory_total_bytes = int_of(mem.get("total_vram"))
    if g.memory_total_bytes is None:
        g.memory_total_bytes = int_of(section(static, "vram").get("size"))


def parse_temperatures(g: GpuReading, metric: dict, static: dict) -> None:
    temps, limits = section(metric, "temperature"), section(static, "limit")
    g.temperatures = {ours: t for theirs, ours in TEMPERATURE_SENSORS.items()
                      if (t := value_of(temps.get(theirs))) is not None}
    g.temperature_limits = {ours: t for theirs, ours in TEMPERATURE_LIMITS.items()
                            if (t := value_of(limits.get(theirs))) is not None}


def parse_power(g: GpuReading, metric: dict, static: dict) -> None:
    power = section(metric, "power")
    # 6.1+ socket_power; 6.0 current_power; the library's names as a last resort.
    g.power_watts = first_value(power, "socket_power", "current_power", "current_socket_power",
                                "average_socket_power")
    g.power_limit_watts = first_value(section(static, "limit"), "socket_power", "max_power")
    if g.power_limit_watts is None:
        g.power_limit_watts = first_value(power, "power_limit")  # 6.0 printed the cap with the reading


def parse_ecc(metric: dict) -> list[EccCount]:
    out: list[EccCount] = []
    for block, counts in section(metric, "ecc_blocks").items():
        if not isinstance(counts, dict):
            continue
        for kind in ECC_TYPES:
            n = int_of(counts.get(f"{kind}_count"))
            if n is not None:
                out.append(EccCount(kind, str(block), n))
    totals = section(metric, "ecc")
    for kind in ECC_TYPES:
        n = int_of(totals.get(f"total_{kind}_count"))
        if n is not None:
            out.append(EccCount(kind, "total", n))
    return out


def count_pages(v: Any) -> int | None:
    """A bad-pages field: "No bad pages found." is 0, one page is printed as a bare dict (the CLI drops the
    brackets around a single entry), several as a list; "N/A" (the library call failed) is unknown."""
    if isinstance(v, list):
        return sum(1 for item in v if isinstance(item, dict))
    if isinstance(v, dict):
        return 1
    if isinstance(v, str) and v.strip().lower() == NO_BAD_PAGES:
        return 0
    return None


def parse_bad_pages(g: GpuReading, bad_pages: dict | None, static: dict) -> None:
    if bad_pages is not None:
        g.retired_pages = count_pages(bad_pages.get("retired"))
        g.pending_pages = count_pages(bad_pages.get("pending"))
    ras = section(static, "ras")
    g.bad_page_threshold = int_of(ras.get("bad_page_threshold"))
    g.bad_page_threshold_exceeded = bool_of(ras.get("bad_page_threshold_exceeded"))


def parse_pcie(g: GpuReading, metric: dict, static: dict) -> None:
    pcie, bus = section(metric, "pcie"), section(static, "bus")
    g.pcie_width = int_of(pcie.get("width"))
    g.pcie_speed_gts = value_of(pcie.get("speed"))
    g.pcie_replay_count = int_of(pcie.get("replay_count"))
    g.pcie_max_width = int_of(bus.get("max_pcie_width"))
    g.pcie_max_speed_gts = value_of(bus.get("max_pcie_speed"))


def peer_of_slot(slot: int, own: int) -> int:
    """XGMI link slots skip the GPU itself: slot k is peer k below the own index, peer k+1 from it on."""
    return slot if slot < own else slot + 1


def parse_links(own: int, status: Any) -> list[Link]:
    """`xgmi --link-status` slots: U up, D down; X (disabled: no peer in that slot) and N/A are skipped, so
    an unused slot never looks like a down link."""
    if not isinstance(status, list):
        return []
    links = []
    for slot, state in enumerate(status):
        s = state.strip().upper() if isinstance(state, str) else ""
        if s in ("U", "D"):
            links.append(Link(f"xgmi{slot}", str(peer_of_slot(slot, own)), s == "U", kind="xgmi"))
    return links


def is_active(v: Any) -> bool:
    """A violation status: the CLI prints "ACTIVE" or "NOT ACTIVE", the library True, False or "N/A"."""
    return v is True or (isinstance(v, str) and v.strip().upper() == "ACTIVE")


def parse_throttle(g: GpuReading, metric: dict) -> None:
    """7.x: the scalar *_violation_status of each MI300 violation kind. The per-XCP entries (low_utilization,
    gfx_clk_below_host_limit*) are ACTIVE on an idle GPU and are not throttling. 6.x: power.throttle_status."""
    throttle = section(metric, "throttle")
    for kind in VIOLATIONS:
        if is_active(throttle.get(f"{kind}_violation_status")):
            g.throttle_active.append(kind)
            if kind in HARDWARE_VIOLATIONS:
                g.throttle_hardware.append(kind)
    status = section(metric, "power").get("throttle_status")
    if isinstance(status, str) and status.strip().upper() == "THROTTLED" and "throttled" not in g.throttle_active:
        g.throttle_active.append("throttled")  # cause unknown: not counted as hardware


def parse_processes(entry: dict) -> list[Process]:
    plist = entry.get("process_list")
    out = []
    for item in plist if isinstance(plist, list) else []:
        info = item.get("process_info", item) if isinstance(item, dict) else None
        if not isinstance(info, dict):  # "No running processes detected"
            continue
        pid = int_of(info.get("pid"))
        if pid is None:
            continue
        mem = int_of(info.get("mem_usage"))
        if mem is None:
            mem = int_of(info.get("mem"))
        out.append(Process(pid, text_of(info.get("name")), mem))
    return out


# -- the whole node -------------------------------------------------------------------------------------
def parse_outputs(outputs: dict[str, object], failed: dict[str, str] | None = None) -> tuple[list[GpuReading], list[str]]:
    """Readings from decoded `amd-smi <cmd> --json` outputs (cmd -> JSON; any subset). `failed` names the
    commands that ran but gave nothing usable (cmd -> why): the checks they feed are marked unread on every
    GPU. Returns the readings, sorted by GPU index, and messages about outputs whose shape was not understood."""
    errors: list[str] = []
    failed = dict(failed or {})
    per_cmd: dict[str, dict[int, dict]] = {}
    link_status: dict[int, Any] = {}
    for cmd, doc in outputs.items():
        key = "xgmi_metric" if cmd == "xgmi" else "gpu_data"
        entries = gpu_entries(doc, key)
        if entries is None:
            errors.append(f"amd-smi {cmd}: unexpected JSON shape ({type(doc).__name__})")
            failed[cmd] = errors[-1]
            continue
        per_cmd[cmd] = by_gpu(entries)
        if cmd == "xgmi" and isinstance(doc, dict):  # 6.x prints no link status at all
            for idx, e in by_gpu(_flatten(doc.get("link_status"))).items():
                link_status[idx] = e.get("link_status")

    def entry(cmd: str, idx: int) -> dict:
        return per_cmd.get(cmd, {}).get(idx, {})

    indices = sorted({idx for entries in per_cmd.values() for idx in entries})
    partitioned = any((partition_id(entry("list", i), entry("static", i)) or 0) > 0 for i in indices)
    readings = []
    for idx in indices:
        listed, static, metric = entry("list", idx), entry("static", idx), entry("metric", idx)
        g = GpuReading(index=idx, vendor="amd")
        parse_identity(g, listed, static)
        g.firmware = parse_firmware(static, entry("firmware", idx))
        g.partition = parse_partition(listed, static, partitioned)
        parse_usage(g, metric)
        parse_memory(g, metric, static)
        parse_temperatures(g, metric, static)
        parse_power(g, metric, static)
        g.ecc = parse_ecc(metric)
        parse_bad_pages(g, per_cmd["bad-pages"].get(idx, {}) if "bad-pages" in per_cmd else None, static)
        parse_pcie(g, metric, static)
        g.links = parse_links(idx, link_status.get(idx))
        parse_throttle(g, metric)
        g.processes = parse_processes(entry("process", idx))
        g.unread = unread_checks(idx, failed, per_cmd)
        readings.append(validate(g))
    return readings, errors


def unread_checks(idx: int, failed: dict[str, str], per_cmd: dict[str, dict[int, dict]]) -> dict[str, str]:
    """check -> why its data is missing on GPU `idx`: its command failed, or printed no entry for this GPU
    while printing others. A command absent from a snapshot was not captured, and is not judged."""
    unread: dict[str, str] = {}
    for cmd, checks in NEEDED_BY.items():
        why = failed.get(cmd)
        if why is None and cmd in PER_GPU and cmd in per_cmd and idx not in per_cmd[cmd]:
            why = f"amd-smi {cmd} printed nothing for GPU {idx}"
        for check in checks if why else ():
            unread.setdefault(check, why)
    return unread


class AmdSmiCliBackend:
    """GpuBackend over `amd-smi <cmd> --json`, live or from a snapshot's DIR/amd-smi/<cmd>.json files."""

    name = "amd-smi"
    vendor = "amd"

    def __init__(self, snapshot_dir: Path | None = None, binary: str = "amd-smi", timeout: float = 8.0,
                 max_output: int = DEFAULT_MAX_STDOUT) -> None:
        self.snapshot_dir = Path(snapshot_dir) if snapshot_dir is not None else None
        self.binary = binary
        self.timeout = timeout
        self.max_output = max_output

    def read(self) -> GpuInventory:
        texts, failed = self._snapshot() if self.snapshot_dir is not None else self._live()
        outputs: dict[str, object] = {}
        for cmd, text in texts.items():
            try:
                outputs[cmd] = decode_json(text)
            except ValueError as e:
                failed[cmd] = f"amd-smi {cmd}: {e}"
        readings, parse_errors = parse_outputs(outputs, failed)
        return GpuInventory(self.name, self.vendor, readings, list(failed.values()) + parse_errors)

    def _snapshot(self) -> tuple[dict[str, str], dict[str, str]]:
        assert self.snapshot_dir is not None
        texts, failed = {}, {}
        for cmd in COMMANDS:
            path = self.snapshot_dir / f"{cmd}.json"
            if not path.is_file():
                continue
            try:
                texts[cmd] = path.read_text(encoding="utf-8", errors="replace")
            except OSError as e:
                failed[cmd] = f"amd-smi {cmd}: cannot read {path}: {e.strerror or e}"
        if not texts and not failed:
            raise BackendUnavailable(f"no amd-smi output in {self.snapshot_dir}")
        return texts, failed

    def _live(self) -> tuple[dict[str, str], dict[str, str]]:
        """One run per command. A missing binary (BackendUnavailable) and a hang (ToolHung, a TimeoutError:
        the tool is stuck in the driver, so starting the next command would only stack another stuck process)
        end the read; a command that fails, or prints more than the cap, only leaves its part unread."""
        texts, failed = {}, {}
        for cmd in COMMANDS:
            try:
                texts[cmd] = run_tool([self.binary, cmd, "--json"], self.timeout, self.max_output)
            except ToolOutputTooLarge as e:
                failed[cmd] = f"{e} (gpu.smi_max_output_bytes)"
            except ToolError as e:  # the message names the command, its exit status and its last stderr line
                failed[cmd] = str(e)
            except PermissionError as e:  # present but not executable: as good as missing
                raise BackendUnavailable(f"cannot run {self.binary}: {e.strerror or e}") from None
        return texts, failed

    def close(self) -> None:
        pass
