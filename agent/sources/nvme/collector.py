"""NVMe (`nvme`): the SMART / health log of each local NVMe controller (/sys/class/nvme/nvme*), read with
`nvme smart-log /dev/<ctrl> -o json` (nvme-cli, under a deadline: agent/base/tools.py), or a snapshot's
DIR/nvme/<ctrl>/smart-log.json. Findings (component `nvme`, entity the controller):

  nvme.critical_warning   fatal (reliability degraded, read-only media, volatile backup failed, spare below
                          threshold) / warning (temperature alone)
  nvme.media_errors       warning  media and data integrity errors above `media_errors_warning` (0)
  nvme.percentage_used    warning  endurance used at or above `percentage_used_warning` (90%)
A controller whose log cannot be read (no nvme-cli, the tool failed or hung) is unknown with the reason, with
warning severity: the kernel rules (NVMe timeouts, I/O errors, read-only remounts) and the mounts checks
still see a failing drive's effects.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.config import CollectorSettings, in_range
from agent.base.findings import FATAL, WARNING, Finding, bad, ok, unknown
from agent.base.metrics import MetricSet
from agent.base.tools import Unavailable, run_tool
from .metrics import (NVME_CRITICAL_WARNING, NVME_MEDIA_ERRORS, NVME_SPARE, NVME_SPARE_THRESHOLD, NVME_TEMPERATURE,
                      NVME_USED)
from .parsers import SmartLog, parse_smart_log

_CTRL = re.compile(r"nvme[0-9]{1,4}")
WARNING_ONLY_BITS = 1 << 1  # temperature


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
    logs: dict[str, SmartLog | str]  # controller -> its log, or why it could not be read


class NvmeCollector(Collector):
    name = "nvme"
    component = "nvme"
    Settings = NvmeSettings

    def __init__(self, settings: NvmeSettings, ctx: Context,
                 tool: Callable[[list[str], float], str] = run_tool) -> None:
        super().__init__(settings, ctx)
        self._tool = tool

    def _controllers(self) -> list[str]:
        snap = self.ctx.roots.snapshot
        root = snap / "nvme" if snap is not None else self.ctx.roots.sys("class", "nvme")
        try:
            names = sorted(p.name for p in root.iterdir() if _CTRL.fullmatch(p.name))
        except OSError:
            names = []
        if not names:
            raise NoData(f"no NVMe controller under {self.ctx.roots.show(root)}")
        return names[:256]

    def read(self) -> NvmeReading:
        logs: dict[str, SmartLog | str] = {}
        snap = self.ctx.roots.snapshot
        for ctrl in self._controllers():
            try:
                if snap is not None:
                    text = (snap / "nvme" / ctrl / "smart-log.json").read_text(errors="replace")
                else:
                    text = self._tool(["nvme", "smart-log", f"/dev/{ctrl}", "-o", "json"],
                                      self.settings.smi_timeout_seconds)
                logs[ctrl] = parse_smart_log(text)
            except Unavailable as e:
                logs[ctrl] = f"nvme-cli not available: {e}"
            except (OSError, RuntimeError, TimeoutError, ValueError) as e:
                logs[ctrl] = str(e)[:300] or type(e).__name__
        return NvmeReading(logs)

    def evaluate(self, reading: NvmeReading, previous: Observation | None, elapsed: float | None) -> Output:
        ms = MetricSet()
        ms.declare(NVME_MEDIA_ERRORS)
        out: list[Finding] = []
        s = self.settings
        for ctrl, log in sorted(reading.logs.items()):
            if isinstance(log, str):
                for check in ("nvme.critical_warning", "nvme.media_errors", "nvme.percentage_used"):
                    out.append(unknown(check, "nvme", ctrl, f"smart-log not read: {log}", WARNING))
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
