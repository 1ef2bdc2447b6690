"""GPUs installed on the PCI bus, from sysfs: tells "SMI broken" (GPUs on the bus, no SMI answer) apart from
"no GPU here"."""
from __future__ import annotations

from pathlib import Path

VENDORS = {"0x1002": "amd", "0x10de": "nvidia"}
# PCI base classes: 0x03 display controller (VGA 0x0300, 3D 0x0302, other 0x0380), 0x12 processing accelerator.
GPU_CLASSES = ("0x03", "0x12")


def count_gpus(sysfs: Path) -> dict[str, int] | None:
    """vendor -> number of GPU PCI functions; None when the PCI tree is not there (e.g. a snapshot without it).
    Virtual functions count like physical ones: a VM or an SR-IOV guest sees its GPUs that way."""
    devices = sysfs / "bus" / "pci" / "devices"
    if not devices.is_dir():
        return None
    counts: dict[str, int] = {}
    for dev in devices.iterdir():
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor in VENDORS and klass.startswith(GPU_CLASSES):
            counts[VENDORS[vendor]] = counts.get(VENDORS[vendor], 0) + 1
    return counts
