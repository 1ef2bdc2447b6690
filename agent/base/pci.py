"""PCI addresses and the GPUs installed on the PCI bus.

normalize() is the one spelling of a PCI function that every source joins on (GPU readings, GPU events, pod
attribution); count_gpus() reads sysfs to tell "SMI broken" (GPUs on the bus, no SMI answer) from "no GPU".
"""
from __future__ import annotations

import re
from pathlib import Path

# [pci:][domain:]bus:device[.function], hex, ASCII only (int() would take other scripts' digits), each part
# within its width (a 400-digit "domain" is not an address).
_ADDRESS = re.compile(r"(?:pci:)?(?:([0-9a-f]{1,8}):)?([0-9a-f]{1,2}):([0-9a-f]{1,2})(?:\.([0-7]))?", re.ASCII)
LABEL_MAX = 64


def normalize(addr: str | None) -> str | None:
    """Every spelling of a PCI function -> 0000:3b:00.0; None when it is not an address.

    NVRM prints "PCI:0000:3b:00" (no function) or "0000:3b:00" (old drivers), NVML and nvidia-smi
    "00000000:3B:00.0", amdgpu and amd-smi "0000:3b:00.0"; a missing domain is domain 0 and a missing
    function is function 0 (a GPU is function 0 of its device)."""
    if not addr:
        return None
    m = _ADDRESS.fullmatch(addr.strip().lower())
    if m is None:
        return None
    dom, bus, dev, fn = m.groups()
    return f"{int(dom or '0', 16):04x}:{int(bus, 16):02x}:{int(dev, 16):02x}.{fn or '0'}"


def label(addr: str | None) -> str | None:
    """A GPU's address as shown (the pci_bus_id label): normalized when it is an address, else as printed
    (lower-cased, bounded), so one odd field never fails the GPU's reading; it then joins with nothing."""
    if not addr or not addr.strip():
        return None
    return normalize(addr) or addr.strip().lower()[:LABEL_MAX]

VENDORS = {"0x1002": "amd", "0x10de": "nvidia"}
# PCI base classes: 0x03 display controller (VGA 0x0300, 3D 0x0302, other 0x0380), 0x12 processing accelerator.
GPU_CLASSES = ("0x03", "0x12")


def gpu_functions(sysfs: Path) -> dict[str, str] | None:
    """normalized address -> vendor of every GPU PCI function; None when the PCI tree is not there (e.g. a
    snapshot without it). Virtual functions count like physical ones: a VM or an SR-IOV guest sees its GPUs that
    way. An entry whose name is not an address is kept under its own (bounded) name: it still counts."""
    devices = sysfs / "bus" / "pci" / "devices"
    if not devices.is_dir():
        return None
    found: dict[str, str] = {}
    for dev in devices.iterdir():
        try:
            vendor = (dev / "vendor").read_text().strip().lower()
            klass = (dev / "class").read_text().strip().lower()
        except OSError:
            continue
        if vendor in VENDORS and klass.startswith(GPU_CLASSES):
            found[normalize(dev.name) or dev.name[:LABEL_MAX]] = VENDORS[vendor]
    return found


def by_vendor(functions: dict[str, str]) -> dict[str, int]:
    """vendor -> number of GPU PCI functions, from gpu_functions()'s answer."""
    counts: dict[str, int] = {}
    for vendor in functions.values():
        counts[vendor] = counts.get(vendor, 0) + 1
    return counts


def count_gpus(sysfs: Path) -> dict[str, int] | None:
    """vendor -> number of GPU PCI functions; None when the PCI tree is not there."""
    found = gpu_functions(sysfs)
    return None if found is None else by_vendor(found)
