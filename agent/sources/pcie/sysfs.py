"""PCIe Advanced Error Reporting counters from sysfs (drivers/pci/pcie/aer.c, kernel 5.1+):

    /sys/bus/pci/devices/<bdf>/aer_dev_correctable   "RxErr 0\\nBadTLP 3\\n...\\nTOTAL_ERR_COR 3\\n"
    /sys/bus/pci/devices/<bdf>/aer_dev_nonfatal      "Undefined 0\\nDLP 0\\n...\\nTOTAL_ERR_NONFATAL 0\\n"
    /sys/bus/pci/devices/<bdf>/aer_dev_fatal         "... TOTAL_ERR_FATAL 0\\n"

Which devices: GPUs (display/processing class of AMD or NVIDIA), network and InfiniBand controllers (class 0x02,
HCAs and NICs), NVMe controllers (0x010802), and every PCI bridge above them (the switch and root ports that
report a link's errors). Counters never decrease within a boot; one unreadable file costs that file, one bad
line that line."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from agent.base.pci import GPU_CLASSES, VENDORS, normalize
from agent.base.validate import COUNTER_MAX, ascii_int

FILES = {"correctable": "aer_dev_correctable", "nonfatal": "aer_dev_nonfatal", "fatal": "aer_dev_fatal"}
TOTALS = {"TOTAL_ERR_COR", "TOTAL_ERR_NONFATAL", "TOTAL_ERR_FATAL"}
_LINE = re.compile(r"^([A-Za-z][A-Za-z0-9_]{0,63})\s+(\S+)$")
_BDF = re.compile(r"^[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]$")


@dataclass
class AerDevice:
    pci: str
    role: str  # gpu | nic | nvme | bridge
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # severity -> type -> count (TOTAL_* too)
    invalid: list[str] = field(default_factory=list)  # fields that read an impossible value
    missing: list[str] = field(default_factory=list)  # severities whose file could not be read

    def total(self, severity: str) -> int | None:
        c = self.counts.get(severity)
        if c is None:
            return None
        key = {"correctable": "TOTAL_ERR_COR", "nonfatal": "TOTAL_ERR_NONFATAL", "fatal": "TOTAL_ERR_FATAL"}[severity]
        return c.get(key, sum(v for k, v in c.items() if k not in TOTALS) if c else None)


def parse_counts(text: str, where: str, invalid: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in text.splitlines()[:256]:
        m = _LINE.match(line.strip())
        if not m:
            continue
        n = ascii_int(m.group(2), 0, COUNTER_MAX)
        if n is None:
            invalid.append(f"{where} {m.group(1)}={m.group(2)[:20]}")
            continue
        out[m.group(1)] = n
    return out


def _read(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(65536).decode("ascii", errors="replace")
    except OSError:
        return None


def role(dev: Path) -> str | None:
    cls = (_read(dev / "class") or "").strip().lower()
    vendor = (_read(dev / "vendor") or "").strip().lower()
    if vendor in VENDORS and cls.startswith(GPU_CLASSES):
        return "gpu"
    if cls.startswith("0x02"):
        return "nic"
    if cls.startswith("0x010802"):
        return "nvme"
    return None


def upstream(sysfs: Path, dev: Path) -> list[str]:
    """The PCI addresses of the bridges above a device: the PCI parts of its real sysfs path."""
    try:
        real = Path(os.path.realpath(dev))
    except OSError:
        return []
    parts = [p for p in real.parts[:-1] if _BDF.match(p)]
    return parts


def discover(sysfs: Path) -> list[tuple[str, str, Path]]:
    root = sysfs / "bus" / "pci" / "devices"
    try:
        entries = sorted(root.iterdir())
    except OSError:
        return []
    wanted: dict[str, tuple[str, Path]] = {}
    for dev in entries[:4096]:
        r = role(dev)
        if r is None:
            continue
        wanted[dev.name] = (r, dev)
        for b in upstream(sysfs, dev):
            wanted.setdefault(b, ("bridge", root / b))
    return [(normalize(pci) or pci, r, path) for pci, (r, path) in sorted(wanted.items())]


def read_device(pci: str, r: str, path: Path) -> AerDevice | None:
    dev = AerDevice(pci, r)
    for sev, name in FILES.items():
        text = _read(path / name)
        if text is None:
            dev.missing.append(sev)
            continue
        dev.counts[sev] = parse_counts(text, name, dev.invalid)
    if not dev.counts:
        return None  # no AER reporting on this device (no capability, or a kernel before 5.1)
    return dev
