"""Kernel log records and the GPU events in them.

Record format and the reader: agent/base/kmsg.py (one reader shared with the kernel rules). A snapshot's
DIR/kmsg.txt holds the same records; the sequence number is what the cursor keys on.

Event formats, each from a real log (sources in tests/gpu_events/test_kmsg.py):
  NVRM: Xid (PCI:0000:3b:00): 79, pid=1234, name=python3, GPU has fallen off the bus.
  NVRM: Xid (PCI:0000:01:00 GPU-I:05): 94, pid=7194, Contained: CE User Channel (0x9). RST: No, D-RST: No
  NVRM: Xid (0000:03:00): 14, Channel 00000001                                    (old drivers)
  NVRM: Xid (PCI:0000:04:00): 154, GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)
  NVRM: GPU 0000:04:00.0: GPU has fallen off the bus.   /  NVRM: The NVIDIA GPU 0000:b3:00.0 ... fallen off the bus
  amdgpu 0000:1c:00.0: {1}uncorrectable hardware error(ERREVENT_ATHUB_INTERRUPT) detected!
  amdgpu 0000:01:00.0: amdgpu: 2 uncorrectable hardware errors detected in umc block
  amdgpu 0000:xx:00.0: amdgpu: {3} socket: 0, die: 1, 1 new correctable hardware errors detected in gfx block
  amdgpu 0000:83:00.0: amdgpu: GPU reset(1) succeeded!   /   amdgpu 0000:06:00.0: amdgpu: GPU reset(2) failed
  vigil: gpu reset 0000:3b:00.0     (an operator's acknowledgement after `nvidia-smi -r`: echo it to /dev/kmsg)
"""
from __future__ import annotations

import re

from . import xid as xids
from .model import RAS, RESET, XID, GpuEvent
from agent.base.kmsg import KmsgRecord, parse_record, parse_text, unescape  # noqa: F401 (re-exported)
from agent.base.pci import normalize as normalize_pci
from agent.base.validate import ascii_int

U64 = 2**64 - 1

_PCI = r"(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}(?:\.[0-7])?"
_XID = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<pci>" + _PCI + r")(?P<attr>[^)]*)\):? ?(?P<code>[0-9]+)"
                  r"(?:,\s*(?P<rest>.*))?$")
_PID = re.compile(r"pid=(?:'([^']*)'|([^,\s]*))")
_NAME = re.compile(r"name=(?:'([^']*)'|([^,\s]*))")
_MIG = re.compile(r"GPU-I:\s*(\d+)")
_FALLEN = re.compile(r"NVRM: (?:The NVIDIA GPU|GPU at|GPU) (?:PCI:)?(?P<pci>" + _PCI + r")\b.*?fallen off the bus",
                     re.DOTALL)
_AMDGPU = re.compile(r"amdgpu (?P<pci>[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]): (?P<body>.*)$")
_AMD_UE_EVENT = re.compile(r"[Uu]ncorrectable hardware error\((?P<event>[A-Z0-9_]+)\) detected")
_AMD_COUNT = re.compile(r"(?P<n>[0-9]+) (?:new )?(?P<type>uncorrectable|correctable|deferred) hardware errors? "
                        r"detected in (?P<block>\w+) block")
_AMD_RESET_OK = re.compile(r"GPU reset(?:\((\d+)\))? succeeded")
_AMD_RESET_FAIL = re.compile(r"GPU reset(?:\((\d+)\))? failed")
_ACK = re.compile(r"^vigil: gpu reset (?P<target>all|(?:PCI:)?" + _PCI + r")\s*$", re.IGNORECASE)

XID_MAX = 65535  # Xid codes run to a few hundred

RAS_SEVERITY = {
    "uncorrectable": (xids.FATAL, "drain the GPU and reset it; check its bad pages"),
    "deferred": (xids.WARNING, "reset the GPU when it is idle; watch its bad pages"),
    "correctable": (xids.INFO, "none (corrected by ECC)"),
}


def _opt(m: re.Match | None) -> str | None:
    if not m:
        return None
    v = m.group(1) if m.group(1) is not None else m.group(2)
    return v if v not in (None, "", "<unknown>", "N/A") else None


def events(rec: KmsgRecord, btime: float | None = None, overrides: dict[str, str] | None = None) -> list[GpuEvent]:
    """The GPU events in one kernel record (usually none). `btime`: boot time (epoch seconds) to date them."""
    text = rec.text
    if "NVRM" not in text and "amdgpu" not in text and "vigil:" not in text:
        return []
    at = btime + rec.usec / 1e6 if btime is not None and rec.usec is not None else None
    key = f"kmsg:{rec.seq}"
    out: list[GpuEvent] = []
    for line in text.split("\n"):
        m = _XID.search(line)
        # An Xid code is a small number; 5,000 digits is a garbled line, and costs only that line.
        if m and ascii_int(m.group("code"), 0, XID_MAX) is not None:
            out.append(_xid_event(m, line.strip(), key, at, overrides))
    if out:
        return out
    m = _FALLEN.search(text)
    if m:
        info = xids.lookup(79, overrides=overrides)
        return [GpuEvent(XID, "79", info.severity, "GPU has fallen off the bus (no Xid line)", info.action,
                         "kmsg", " ".join(text.split()), key, pci=normalize_pci(m.group("pci")), at=at,
                         fallen_off_bus=True)]
    m = _AMDGPU.search(text)
    if m:
        return _amdgpu_events(normalize_pci(m.group("pci")), m.group("body"), " ".join(text.split()), key, at)
    m = _ACK.match(text.strip())
    if m:
        target = m.group("target")
        everyone = target.lower() == "all"
        return [GpuEvent(RESET, "ok", xids.INFO, "GPU reset acknowledged by an operator", None, "kmsg", text.strip(),
                         key, pci=None if everyone else normalize_pci(target), at=at, recovers=True,
                         all_gpus=everyone)]
    return []


def _xid_event(m: re.Match, line: str, key: str, at: float | None, overrides: dict[str, str] | None) -> GpuEvent:
    code = int(m.group("code"))
    rest = m.group("rest") or ""
    info = xids.lookup(code, rest, overrides)
    mig = _MIG.search(m.group("attr") or "")
    details = {k: v for k, v in (("pid", _opt(_PID.search(rest))), ("process", _opt(_NAME.search(rest)))) if v}
    recovers = False
    if code == xids.RECOVERY_ACTION_CHANGED:
        change = xids.recovery_change(rest)
        recovers = bool(change and change.recovered)
        if change:
            details["recovery_action"] = change.label
    return GpuEvent(XID, str(code), info.severity, info.description, info.action, "kmsg", line[line.find("NVRM"):],
                    key, pci=normalize_pci(m.group("pci")), at=at, recovers=recovers,
                    partition=(mig.group(1).lstrip("0") or "0") if mig else "", details=details)


def _amdgpu_events(pci: str | None, body: str, text: str, key: str, at: float | None) -> list[GpuEvent]:
    m = _AMD_UE_EVENT.search(body)
    if m:
        return [GpuEvent(RAS, "uncorrectable", xids.FATAL, f"uncorrectable hardware error ({m.group('event')})",
                         "drain the GPU and reset it; reboot the node if the reset fails", "kmsg", text, key,
                         pci=pci, at=at, details={"event": m.group("event")})]
    if "detected in total" not in body:
        m = _AMD_COUNT.search(body)
        if m and (ascii_int(m.group("n"), 0, U64) or 0) > 0:
            kind = m.group("type")
            severity, action = RAS_SEVERITY[kind]
            return [GpuEvent(RAS, kind, severity, f"{m.group('n')} {kind} error(s) in the {m.group('block')} block",
                             action, "kmsg", text, key, pci=pci, at=at,
                             details={"count": int(m.group("n")), "block": m.group("block").lower()})]
    if _AMD_RESET_OK.search(body):
        return [GpuEvent(RESET, "ok", xids.INFO, "GPU reset by the driver", None, "kmsg", text, key, pci=pci,
                         at=at, recovers=True)]
    if _AMD_RESET_FAIL.search(body):
        return [GpuEvent(RESET, "failed", xids.FATAL, "GPU reset failed", "drain the node and reboot it", "kmsg",
                         text, key, pci=pci, at=at)]
    return []
