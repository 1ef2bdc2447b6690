"""The XID catalogue: what an NVIDIA Xid means for the node, as a severity and a recommended action.

Sources (read 2026): NVIDIA's Xid documentation, https://docs.nvidia.com/deploy/xid-errors/index.html, and its
"Analyzing Xid Errors with the Xid Catalog" page for Ampere and newer GPUs
(https://docs.nvidia.com/deploy/xid-errors/analyzing-xid-catalog.html), whose "Resolution Bucket (Immediate
Action)" column (RESTART_APP, IGNORE, RESET_GPU, RESTART_BM, WORKFLOW_XID_48, ...) is what the severities below
follow; NVIDIA's A100/H100 memory error management guide for Xid 63/64/94/95 and the recovery-action flag; and
NVIDIA/NVSentinel (Apache-2.0), whose syslog health monitor maps the same catalogue
(distros/kubernetes/nvsentinel/charts/gpu-health-monitor/xiderrorsmapping.csv).

Mapping of the catalogue's buckets to Vigil severities:
  RESTART_APP, IGNORE, WORKFLOW_XID_45      -> info    (the application failed, not the GPU: 13, 31, 43, ...)
  RESET_GPU, RESTART_BM, WORKFLOW_XID_48    -> fatal   (the GPU needs a reset, the node a reboot)
  WORKFLOW_NVLINK_ERR (74)                  -> fatal
  WORKFLOW_NVLINK5_ERR (144-150)            -> the driver's own word in the line: "Fatal" fatal, "Nonfatal" warning
  154 (recovery action changed)             -> from the new action: None recovers, Reset/Reboot/Drain+Reset fatal
  anything else, and codes we do not know   -> warning ("contact support"; never fatal by guess)
Deliberate departures, each commented in the table: 63 (row remap pending), 92 (high single-bit rate), 94
(contained ECC error) and 157 are warnings, not the catalogue's IGNORE/RESTART_APP, because each leaves the GPU
needing a reset or a closer look even though the running job may be the only casualty.

Operators can override any code per node class (config `gpu_events.xid_severity: {"109": warning}`).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

FATAL, WARNING, INFO = "fatal", "warning", "info"
IGNORE = "ignore"  # an override only: the code is counted but produces no finding

# Recommended actions, NVSentinel-style verbs a person or a remediation controller can act on.
A_NONE_APP = "none for the node: the application faulted (check the job)"
A_NONE = "none"
A_RESET = "drain the GPU and reset it (nvidia-smi -r)"
A_REBOOT = "drain the node and reboot it; reseat or replace the GPU if it recurs"
A_SUPPORT = "investigate; contact NVIDIA support if it recurs"
A_ROW_REMAP = "reset the GPU when it is idle to apply the pending row remap"
A_ROW_REMAP_FAIL = "drain the GPU and reset it; replace the GPU if the row-remap failure persists"
A_DBE = "drain the GPU and reset it; replace it if Xid 64 or a row-remap failure follows"
A_NVLINK = "drain the GPU, reset it and check its NVLink/NVSwitch fabric"
A_SBE_RATE = "watch the GPU's correctable ECC rate; plan a replacement if it persists"
A_CONTAINED = "restart the application; reset the GPU when it is idle"

# code -> (description, severity, action). Descriptions are NVIDIA's, shortened.
_CATALOGUE: dict[int, tuple[str, str, str]] = {
    # Application faults (catalogue: RESTART_APP / IGNORE). DESIGN: 13, 31, 43 are application faults.
    8: ("GPU stopped processing (channel idle timeout)", INFO, A_NONE_APP),
    11: ("invalid or corrupted push buffer stream", INFO, A_NONE_APP),
    13: ("graphics engine exception", INFO, A_NONE_APP),
    14: ("fake error (test)", INFO, A_NONE),
    25: ("illegal graphics notify", INFO, A_NONE_APP),
    31: ("GPU memory page fault", INFO, A_NONE_APP),
    32: ("invalid or corrupted push buffer stream (PBDMA)", INFO, A_NONE_APP),
    37: ("FECS unimplemented firmware method", INFO, A_NONE),
    38: ("FECS watchdog timeout", INFO, A_NONE),
    39: ("copy engine 0 exception", INFO, A_NONE_APP),
    40: ("copy engine 1 exception", INFO, A_NONE_APP),
    41: ("copy engine 2 exception", INFO, A_NONE_APP),
    43: ("GPU stopped processing (channel reset by the driver)", INFO, A_NONE_APP),
    44: ("graphics engine fault during context switch", INFO, A_NONE_APP),
    45: ("preemptive cleanup after a previous error", INFO, A_NONE),
    60: ("SEC2 exception", INFO, A_NONE_APP),
    66: ("FECS register access violation", INFO, A_NONE),
    67: ("FECS verification violation", INFO, A_NONE),
    68: ("NVDEC0 exception", INFO, A_NONE_APP),
    69: ("graphics engine class error", INFO, A_NONE_APP),
    80: ("push buffer CRC mismatch", INFO, A_NONE_APP),
    93: ("InfoROM erase limit exceeded", INFO, A_NONE),
    106: ("SMBPBI test message", INFO, A_NONE),
    107: ("SMBPBI test message (silent)", INFO, A_NONE),
    121: ("C2C link error (corrected)", INFO, A_NONE),
    137: ("NVLink FLA privilege error", INFO, A_NONE_APP),
    141: ("fast path error", INFO, A_NONE),
    152: ("DLA SMMU error", INFO, A_NONE),
    153: ("DLA timeout", INFO, A_NONE),
    161: ("channel retirement failure", INFO, A_NONE),
    # Memory errors (A100/H100 memory error management; Xid 48 workflow).
    48: ("double-bit (uncorrectable) ECC error", FATAL, A_DBE),
    # Catalogue IGNORE; on Ampere+ 63 means a row is marked for remapping and the remap needs a GPU reset.
    63: ("row remapping event (reset the GPU to activate)", WARNING, A_ROW_REMAP),
    64: ("row remapping failure", FATAL, A_ROW_REMAP_FAIL),
    # Catalogue IGNORE; a high single-bit rate is an early sign of failing memory.
    92: ("high single-bit ECC error rate", WARNING, A_SBE_RATE),
    # Catalogue RESTART_APP: the error was contained to one application, but the memory needs a remap.
    94: ("contained ECC error", WARNING, A_CONTAINED),
    95: ("uncontained ECC error", FATAL, A_RESET),
    140: ("unrecoverable ECC error escape", FATAL, A_RESET),
    156: ("resource retirement event", FATAL, A_RESET),
    # Catalogue IGNORE; a failed retirement deserves a look.
    157: ("resource retirement failure", WARNING, A_SUPPORT),
    # The GPU itself (catalogue RESET_GPU / RESTART_BM).
    46: ("GPU stopped processing (GPU timeout)", FATAL, A_RESET),
    62: ("internal micro-controller halt (PMU)", FATAL, A_RESET),
    74: ("NVLink error", FATAL, A_NVLINK),
    79: ("GPU has fallen off the bus", FATAL, A_REBOOT),
    109: ("context switch timeout", FATAL, A_RESET),
    110: ("security fault", FATAL, A_RESET),
    119: ("GSP RPC timeout", FATAL, A_RESET),
    120: ("GSP error", FATAL, A_RESET),
    136: ("NVLink ALI training failure", FATAL, A_NVLINK),
    143: ("GPU initialization failure", FATAL, A_RESET),
    151: ("channel key rotation error", FATAL, "restart the VM"),
    155: ("NVLink software-defined error", FATAL, A_NVLINK),
    158: ("GPU fatal timeout", FATAL, A_RESET),
    160: ("channel retirement event", FATAL, A_REBOOT),
    162: ("GPU error requiring a reset", FATAL, A_RESET),
    # Warnings with a specific action.
    54: ("power-reduced clocking", WARNING, "check the GPU's power cabling and supply"),
    78: ("vGPU start error", WARNING, "update the vGPU software"),
    159: ("CHI non-data error", WARNING, "check the UVM driver"),
}
for _c in range(126, 136):  # copy engines 10..19
    _CATALOGUE[_c] = (f"copy engine {_c - 116} exception", INFO, A_NONE_APP)
for _c, _n in ((70, 3), (71, 4), (72, 5), (75, 6), (76, 7), (77, 8), (85, 9)):
    _CATALOGUE[_c] = (f"copy engine {_n} exception", INFO, A_NONE_APP)
for _c in (82, 83, 84, 86, 88, 89, 96, 97, 98, 99, 100, 101, 102, 103, 104, 105, 139):
    _CATALOGUE[_c] = ("video/JPEG/optical-flow engine exception", INFO, A_NONE_APP)
NVLINK5 = range(144, 151)  # NVLink 5 (Blackwell) errors; the line says Fatal or Nonfatal
for _c in NVLINK5:
    _CATALOGUE[_c] = ("NVLink error", WARNING, A_NVLINK)
RECOVERY_ACTION_CHANGED = 154
_CATALOGUE[RECOVERY_ACTION_CHANGED] = ("GPU recovery action changed", INFO, A_NONE)


@dataclass(frozen=True)
class XidInfo:
    code: int
    description: str
    severity: str  # fatal | warning | info | ignore
    action: str
    known: bool = True  # False: not in the catalogue (warning, contact support)


@dataclass(frozen=True)
class RecoveryChange:
    """Xid 154: "GPU recovery action changed from 0x0 (None) to 0x1 (GPU Reset Required)"."""

    old: int
    new: int
    label: str  # the driver's words for the new action

    @property
    def recovered(self) -> bool:
        return self.new == 0


# nvmlDeviceGpuRecoveryAction_t (nvml.h; cuda.bindings.nvml.DeviceGpuRecoveryAction) -> severity, action.
RECOVERY_ACTIONS: dict[int, tuple[str, str, str]] = {
    0: ("None", INFO, A_NONE),
    1: ("GPU Reset Required", FATAL, A_RESET),
    2: ("Node Reboot Required", FATAL, "drain the node and reboot it"),
    3: ("Drain P2P", WARNING, "drain peer-to-peer traffic from the GPU"),
    4: ("Drain and Reset", FATAL, "drain peer-to-peer traffic, then reset the GPU"),
    5: ("Recover IMEX Domain", FATAL, "recover the IMEX domain"),
    6: ("Bus Reset", FATAL, "reset the GPU's PCIe bus"),
    7: ("System Reboot", FATAL, "drain the node and reboot it"),
}

_RECOVERY = re.compile(r"recovery action changed from 0x([0-9a-fA-F]+)(?: \(([^)]*)\))? to 0x([0-9a-fA-F]+)"
                       r"(?: \(([^)]*)\))?")
_NVLINK5_SEVERITY = re.compile(r"\b(Nonfatal|Non-fatal|Fatal)\b", re.IGNORECASE)


def recovery_change(text: str) -> RecoveryChange | None:
    m = _RECOVERY.search(text)
    if not m:
        return None
    new = int(m.group(3), 16)
    label = m.group(4) or RECOVERY_ACTIONS.get(new, (f"0x{new:x}",))[0]
    return RecoveryChange(int(m.group(1), 16), new, label)


def recovery_info(action: int, label: str | None = None) -> XidInfo:
    """What a recovery action (NVML event data, or Xid 154's new value) asks for."""
    name, severity, what = RECOVERY_ACTIONS.get(action, (label or f"0x{action:x}", FATAL, A_SUPPORT))
    return XidInfo(RECOVERY_ACTION_CHANGED, f"GPU recovery action: {label or name}", severity, what,
                   action in RECOVERY_ACTIONS)


def lookup(code: int, text: str = "", overrides: dict[str, str] | None = None) -> XidInfo:
    """Severity and action of Xid `code`; `text` is the rest of the kernel line (154 and 144-150 read it)."""
    if code == RECOVERY_ACTION_CHANGED:
        change = recovery_change(text)
        info = recovery_info(change.new, change.label) if change else XidInfo(
            code, _CATALOGUE[code][0], INFO, A_NONE)
    elif code in _CATALOGUE:
        description, severity, action = _CATALOGUE[code]
        if code in NVLINK5:
            m = _NVLINK5_SEVERITY.search(text)
            if m:
                severity = FATAL if m.group(1).lower() == "fatal" else WARNING
        info = XidInfo(code, description, severity, action)
    else:
        info = XidInfo(code, "unknown Xid (not in the catalogue)", WARNING, A_SUPPORT, known=False)
    override = (overrides or {}).get(str(code))
    if override:
        info = XidInfo(info.code, info.description, override, info.action, info.known)
    return info
