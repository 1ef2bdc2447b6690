"""What sysfs tells about an NVMe controller without any privilege (/sys/class/nvme/nvmeN/, kernel 5.5+ for
hwmon), and what it does not.

Available unprivileged:
  state                 the controller's state (drivers/nvme/host/core.c nvme_sysfs_show_state): live, new,
                        resetting, connecting, deleting, "deleting (no IO)", dead
  model, serial, firmware_rev, transport, cntrltype (io/discovery/admin, 5.16+)
  hwmon*/temp1_input    (nvmeN/device/hwmon/hwmon* on 5.5) composite temperature in millidegrees C (drivers/nvme/host/hwmon.c: the KERNEL reads
                        the SMART log for it, so an unprivileged reader gets the temperature)
  hwmon*/temp1_alarm    1 when the SMART log's critical warning has bit 1 set (temperature), else 0
  hwmon*/temp{2..9}_input  the drive's other temperature sensors, where it has them
Not available (the SMART / health log page needs the admin passthrough ioctl, CAP_SYS_ADMIN and the device
node /dev/nvmeN): critical warning bits 0, 2-5 (spare below threshold, reliability degraded, read-only media,
volatile backup failed, PMR read-only), media errors, percentage used, available spare. Those come only from
`nvme smart-log` (collector.py) or a snapshot's recorded log.

One unreadable file costs that file (None); an impossible value is None and named in `invalid`."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agent.base.validate import ascii_int

STATES = {"live", "new", "resetting", "connecting", "deleting", "deleting (no IO)", "dead"}
TEMP_MILLI_MIN, TEMP_MILLI_MAX = -273_150, 1_000_000  # below absolute zero or above 1000 C: not a reading


@dataclass
class SysfsInfo:
    state: str | None = None
    model: str | None = None
    serial: str | None = None
    firmware: str | None = None
    transport: str | None = None
    temperature_c: float | None = None  # composite (hwmon temp1_input)
    temperature_alarm: bool | None = None  # hwmon temp1_alarm: critical warning bit 1
    invalid: list[str] = field(default_factory=list)


def _text(path: Path, limit: int = 256) -> str | None:
    try:
        with open(path, "rb") as f:
            return f.read(limit).decode("ascii", errors="replace").strip() or None
    except OSError:
        return None


def read_controller(ctrl: Path) -> SysfsInfo | None:
    """The sysfs view of one controller directory; None when it has none of these files (an older kernel, or a
    snapshot that did not record them)."""
    info = SysfsInfo(state=_text(ctrl / "state"), model=_text(ctrl / "model"), serial=_text(ctrl / "serial"),
                     firmware=_text(ctrl / "firmware_rev"), transport=_text(ctrl / "transport"))
    if info.state is not None and info.state not in STATES:
        info.invalid.append(f"state={info.state[:40]}")
        info.state = None
    hwmons: list[Path] = []
    # The hwmon device's parent is the controller (ctrl->device: nvmeN/hwmonM) since 5.6; 5.5 registered it on
    # the PCI function (ctrl->dev: nvmeN/device/hwmon/hwmonM).
    for parent in (ctrl, ctrl / "device" / "hwmon"):
        try:
            hwmons += sorted(p for p in parent.iterdir() if p.name.startswith("hwmon") and p.name != "hwmon")[:4]
        except OSError:
            pass
    for hw in hwmons:
        raw = _text(hw / "temp1_input", 64)
        if raw is not None:
            milli = ascii_int(raw, TEMP_MILLI_MIN, TEMP_MILLI_MAX)
            if milli is None:
                info.invalid.append(f"{hw.name}/temp1_input={raw[:24]}")
            else:
                info.temperature_c = milli / 1000.0
        alarm = _text(hw / "temp1_alarm", 16)
        if alarm is not None:
            if alarm in ("0", "1"):
                info.temperature_alarm = alarm == "1"
            else:
                info.invalid.append(f"{hw.name}/temp1_alarm={alarm[:24]}")
        if info.temperature_c is not None or info.temperature_alarm is not None:
            break
    if info.state is None and info.temperature_c is None and info.temperature_alarm is None and not info.invalid \
            and info.model is None:
        return None
    return info
