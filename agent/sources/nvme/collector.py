"""NVMe (`nvme`): the SMART / health log of each local NVMe controller (/sys/class/nvme/nvme*), read with
`nvme smart-log /dev/<ctrl> -o json` (nvme-cli, under a deadline: agent/base/tools.py), or a snapshot's
DIR/nvme/<ctrl>/smart-log.json. Findings (component `nvme`, entity the controller):

  nvme.critical_warning   fatal (reliability degraded, read-only media, volatile backup failed, spare below
                          threshold) / warning (temperature alone)
  nvme.media_errors       warning  media and data integrity errors above `media_errors_warning` (0)
  nvme.percentage_used    warning  endurance used at or above `percentage_used_warning` (90%)
  nvme.controller_state   fatal (dead) / warning (resetting, connecting, new, deleting): sysfs `state`
  nvme.temperature        warning  the composite temperature is outside the drive's thresholds (hwmon
                          temp1_alarm, the SMART log's critical warning bit 1 as the kernel reads it)
A controller whose log cannot be read (no nvme-cli, the tool failed or hung) is unknown with the reason, with
warning severity: the kernel rules (NVMe timeouts, I/O errors, read-only remounts) and the mounts checks
still see a failing drive's effects.

Privileges: the SMART log is an admin passthrough ioctl on /dev/nvmeN, which needs CAP_SYS_ADMIN, and a
container reaches the device node only with device-cgroup access. The base DaemonSet has neither, so there the
three SMART checks say exactly "nvme smart-log needs CAP_SYS_ADMIN and /dev/nvmeN: enable component nvme-smart"
(checked before running the tool: the capability in this process's effective set, the node in `dev`), and the
unprivileged part still runs: state, model, firmware and temperature from sysfs (sysfs.py says what sysfs has
and what it lacks). daemonset/components/nvme-smart (Helm: nvme.smartLog) adds the access; docs/deploy.md.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.config import CollectorSettings, in_range
from agent.base.findings import FATAL, WARNING, Finding, bad, ok, unknown
from agent.base.metrics import MetricSet
from agent.base.tools import Unavailable, run_tool
from .metrics import (NVME_CRITICAL_WARNING, NVME_INFO, NVME_MEDIA_ERRORS, NVME_SPARE, NVME_SPARE_THRESHOLD,
                      NVME_TEMPERATURE, NVME_USED)
from .parsers import SmartLog, parse_smart_log
from .sysfs import SysfsInfo, read_controller

_CTRL = re.compile(r"nvme[0-9]{1,4}")
WARNING_ONLY_BITS = 1 << 1  # temperature
CAP_SYS_ADMIN = 21
NEEDS_ACCESS = "nvme smart-log needs CAP_SYS_ADMIN and /dev/{ctrl}: enable component nvme-smart"
# What nvme-cli prints when the open or the ioctl is refused (EACCES, EPERM): the same missing access.
_DENIED = re.compile(r"Permission denied|Operation not permitted|\bEACCES\b|\bEPERM\b", re.IGNORECASE)
TRANSIENT = {"new", "resetting", "connecting", "deleting", "deleting (no IO)"}


def effective_capabilities(status: str = "/proc/self/status") -> int | None:
    """This process's effective capability set (CapEff), None when it cannot be read. The agent's own process,
    not the host's procfs: what matters is what the agent may do."""
    try:
        with open(status) as f:
            for line in f:
                if line.startswith("CapEff:"):
                    return int(line.split()[1], 16)
    except (OSError, ValueError, IndexError):
        return None
    return None


@dataclass
class NvmeSettings(CollectorSettings):
    interval_seconds: float = 60.0
    timeout_seconds: float = 30.0
    smi_timeout_seconds: float = 10.0  # one `nvme smart-log` run
    media_errors_warning: int = 0
    percentage_used_warning: int = 90

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        in_range(f"{prefix}.percentage_used_warning", self.percentage_used_warning, 1, 255)


@dataclass
class NvmeReading:
    logs: dict[str, SmartLog | str]  # controller -> its log, or the finding's message saying why it was not read
    sysfs: dict[str, SysfsInfo] = field(default_factory=dict)  # what sysfs showed, where it showed anything


class NvmeCollector(Collector):
    name = "nvme"
    component = "nvme"
    Settings = NvmeSettings

    def __init__(self, settings: NvmeSettings, ctx: Context,
                 tool: Callable[[list[str], float], str] = run_tool, dev: Path = Path("/dev"),
                 capabilities: Callable[[], int | None] = effective_capabilities) -> None:
        super().__init__(settings, ctx)
        self._tool = tool
        self._dev = dev  # the container's /dev (the nvme-smart component mounts the host's there)
        self._caps = capabilities

    def _controllers(self) -> list[str]:
        snap = self.ctx.roots.snapshot
        sysfs = self.ctx.roots.sys("class", "nvme")
        roots = [snap / "nvme", sysfs] if snap is not None else [sysfs]
        names: set[str] = set()
        for root in roots:  # a snapshot without SMART logs (taken without the access) still has sysfs
            try:
                names |= {p.name for p in root.iterdir() if _CTRL.fullmatch(p.name)}
            except OSError:
                pass
        if not names:
            raise NoData(f"no NVMe controller under {self.ctx.roots.show(roots[0])}")
        return sorted(names)[:256]

    def access(self, ctrl: str) -> str | None:
        """None when `nvme smart-log /dev/<ctrl>` can work here, else the message that says what is missing.
        A capability set that cannot be read is not refused: the tool then says."""
        caps = self._caps()
        if not (self._dev / ctrl).exists() or (caps is not None and not caps >> CAP_SYS_ADMIN & 1):
            return NEEDS_ACCESS.format(ctrl=ctrl)
        return None

    def read(self) -> NvmeReading:
        logs: dict[str, SmartLog | str] = {}
        info: dict[str, SysfsInfo] = {}
        snap = self.ctx.roots.snapshot
        for ctrl in self._controllers():
            si = read_controller(self.ctx.roots.sys("class", "nvme", ctrl))
            if si is not None:
                info[ctrl] = si
            try:
                if snap is not None:
                    path = snap / "nvme" / ctrl / "smart-log.json"
                    if not path.is_file():
                        logs[ctrl] = "smart-log not in the snapshot (taken without nvme-cli or its access)"
                        continue
                    text = path.read_text(errors="replace")
                else:
                    denied = self.access(ctrl)
                    if denied is not None:
                        logs[ctrl] = denied
                        continue
                    text = self._tool(["nvme", "smart-log", f"/dev/{ctrl}", "-o", "json"],
                                      self.settings.smi_timeout_seconds)
                logs[ctrl] = parse_smart_log(text)
            except Unavailable as e:
                logs[ctrl] = f"smart-log not read: nvme-cli not available: {e}"
            except (OSError, RuntimeError, TimeoutError, ValueError) as e:
                text = str(e)[:300] or type(e).__name__
                # The device cgroup or the capability refused what the checks above could not see.
                logs[ctrl] = f"{NEEDS_ACCESS.format(ctrl=ctrl)} ({text})" if snap is None and _DENIED.search(text) \
                    else f"smart-log not read: {text}"
        return NvmeReading(logs, info)

    def evaluate(self, reading: NvmeReading, previous: Observation | None, elapsed: float | None) -> Output:
        ms = MetricSet()
        ms.declare(NVME_MEDIA_ERRORS)
        out: list[Finding] = []
        s = self.settings
        for ctrl, log in sorted(reading.logs.items()):
            si = reading.sysfs.get(ctrl)
            if si is not None:
                out += self._sysfs(ms, ctrl, si, log if isinstance(log, SmartLog) else None)
            if isinstance(log, str):
                for check in ("nvme.critical_warning", "nvme.media_errors", "nvme.percentage_used"):
                    out.append(unknown(check, "nvme", ctrl, log, WARNING))
                continue
            lab = {"device": ctrl}
            for spec, v in ((NVME_CRITICAL_WARNING, log.critical_warning),
                            (NVME_USED, None if log.percent_used is None else log.percent_used / 100),
                            (NVME_SPARE, None if log.avail_spare is None else log.avail_spare / 100),
                            (NVME_SPARE_THRESHOLD, None if log.spare_thresh is None else log.spare_thresh / 100),
                            (NVME_MEDIA_ERRORS, log.media_errors),
                            (NVME_TEMPERATURE, None if log.temperature_k is None else log.temperature_k - 273)):
                if v is not None:
                    ms.add(spec, lab, v)
            invalid = f" (invalid {', '.join(log.invalid)})" if log.invalid else ""
            cw = log.critical_warning
            if cw is None:
                out.append(unknown("nvme.critical_warning", "nvme", ctrl, f"critical_warning not read{invalid}"))
            elif cw:
                sev = WARNING if cw & ~WARNING_ONLY_BITS == 0 else FATAL
                out.append(bad("nvme.critical_warning", "nvme", ctrl, "critical warning 0x%02x: %s" % (
                    cw, "; ".join(log.warnings())), sev, value=cw, threshold=0,
                    action="drain the node and replace the drive" if sev == FATAL else "check the drive's cooling"))
            else:
                out.append(ok("nvme.critical_warning", "nvme", ctrl, "no critical warning"))
            if log.media_errors is None:
                out.append(unknown("nvme.media_errors", "nvme", ctrl, f"media_errors not read{invalid}", WARNING))
            elif log.media_errors > s.media_errors_warning:
                out.append(bad("nvme.media_errors", "nvme", ctrl, f"{log.media_errors} media and data integrity "
                               "errors", WARNING, value=log.media_errors, threshold=s.media_errors_warning,
                               action="plan the drive's replacement; back up what is on it"))
            else:
                out.append(ok("nvme.media_errors", "nvme", ctrl, f"{log.media_errors} media errors", WARNING))
            if log.percent_used is None:
                out.append(unknown("nvme.percentage_used", "nvme", ctrl, f"percent_used not read{invalid}", WARNING))
            elif log.percent_used >= s.percentage_used_warning:
                out.append(bad("nvme.percentage_used", "nvme", ctrl, f"{log.percent_used}% of endurance used",
                               WARNING, value=log.percent_used, threshold=s.percentage_used_warning,
                               action="plan the drive's replacement"))
            else:
                out.append(ok("nvme.percentage_used", "nvme", ctrl, f"{log.percent_used}% of endurance used",
                              WARNING, value=log.percent_used))
        return Output(ms, out)

    @staticmethod
    def _sysfs(ms: MetricSet, ctrl: str, si: SysfsInfo, log: SmartLog | None) -> list[Finding]:
        """The unprivileged part: controller state and temperature from sysfs (hwmon)."""
        out: list[Finding] = []
        ms.add(NVME_INFO, {"device": ctrl, "model": si.model or "", "serial": si.serial or "",
                           "firmware_revision": si.firmware or "", "state": si.state or ""}, 1)
        if si.temperature_c is not None and (log is None or log.temperature_k is None):
            ms.add(NVME_TEMPERATURE, {"device": ctrl}, si.temperature_c)
        bad_fields = f" (invalid {', '.join(si.invalid)})" if si.invalid else ""
        if si.state == "live":
            out.append(ok("nvme.controller_state", "nvme", ctrl, "controller live"))
        elif si.state == "dead":
            out.append(bad("nvme.controller_state", "nvme", ctrl, "controller dead: the kernel gave up on it",
                           FATAL, action="drain the node; reseat or replace the drive"))
        elif si.state in TRANSIENT:
            out.append(bad("nvme.controller_state", "nvme", ctrl, f"controller {si.state}", WARNING,
                           action="watch the kernel log (NVMe timeouts, resets); replace the drive if it repeats"))
        elif any(f.startswith("state=") for f in si.invalid):
            out.append(unknown("nvme.controller_state", "nvme", ctrl, f"controller state not read{bad_fields}"))
        if si.temperature_alarm:
            out.append(bad("nvme.temperature", "nvme", ctrl, "temperature outside the drive's thresholds" + (
                f" ({si.temperature_c:g} C)" if si.temperature_c is not None else ""), WARNING,
                value=si.temperature_c, action="check the drive's cooling (airflow, heatsink)"))
        elif si.temperature_alarm is False:
            out.append(ok("nvme.temperature", "nvme", ctrl, "temperature within thresholds" + (
                f" ({si.temperature_c:g} C)" if si.temperature_c is not None else ""), WARNING,
                value=si.temperature_c))
        elif any("temp1_alarm" in f for f in si.invalid):
            out.append(unknown("nvme.temperature", "nvme", ctrl, f"temperature alarm not read{bad_fields}", WARNING))
        return out
