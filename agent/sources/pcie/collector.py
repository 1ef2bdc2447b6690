"""PCIe AER (`pcie`): the AER counters of the GPUs', HCAs'/NICs' and NVMe drives' PCI functions and of the
bridges above them (sysfs.py), exported and judged (component `pcie`, entity `pci:<address>`):

  pcie.aer.fatal        fatal    any fatal uncorrectable error since boot (the link or device was reset or lost)
  pcie.aer.nonfatal     warning  non-fatal uncorrectable errors at more than `nonfatal_warning_per_hour`
                                 between two readings; on a first reading, more than `nonfatal_warning_count`
  pcie.aer.correctable  warning  correctable errors at more than `correctable_warning_per_hour` (a first
                                 reading: more than `correctable_warning_count`); a degrading link or riser
A counter that went down is a reset (a hot-plug, a driver reload): no negative rate. An impossible value is
unknown and not exported.
"""
from __future__ import annotations

from dataclasses import dataclass

from agent.base.collector import Collector, NoData, Observation, Output
from agent.base.config import CollectorSettings
from agent.base.findings import FATAL, WARNING, Finding, bad, ok, unknown
from agent.base.metrics import MetricSet
from .metrics import AER_DEVICE, AER_ERRORS
from .sysfs import TOTALS, AerDevice, discover, read_device


@dataclass
class PcieSettings(CollectorSettings):
    interval_seconds: float = 30.0
    correctable_warning_per_hour: float = 100.0
    correctable_warning_count: int = 1000
    nonfatal_warning_per_hour: float = 1.0
    nonfatal_warning_count: int = 0


@dataclass
class PcieReading:
    devices: list[AerDevice]


class PcieCollector(Collector):
    name = "pcie"
    component = "pcie"
    Settings = PcieSettings

    def read(self) -> PcieReading:
        found = discover(self.ctx.roots.sysfs)
        devices = [d for d in (read_device(p, r, path) for p, r, path in found) if d is not None]
        if not devices:
            raise NoData(f"no GPU, NIC or NVMe PCI function with AER counters under "
                         f"{self.ctx.roots.show(self.ctx.roots.sys('bus', 'pci', 'devices'))}")
        return PcieReading(devices)

    def evaluate(self, reading: PcieReading, previous: Observation | None, elapsed: float | None) -> Output:
        ms = MetricSet()
        ms.declare(AER_ERRORS)
        prev = {d.pci: d for d in previous.reading.devices} if previous else {}
        out: list[Finding] = []
        s = self.settings
        for d in reading.devices:
            ms.add(AER_DEVICE, {"device": d.pci, "role": d.role}, 1)
            for sev, counts in sorted(d.counts.items()):
                for t, n in sorted(counts.items()):
                    ms.add(AER_ERRORS, {"device": d.pci, "severity": sev, "type": "total" if t in TOTALS else t}, n)
            e = f"pci:{d.pci}"
            bad_fields = f"; invalid {', '.join(d.invalid)}" if d.invalid else ""
            fatal = d.total("fatal")
            if fatal is None:
                out.append(unknown("pcie.aer.fatal", "pcie", e, f"aer_dev_fatal not read{bad_fields}"))
            elif fatal > 0:
                out.append(bad("pcie.aer.fatal", "pcie", e, f"{fatal} fatal PCIe error(s) since boot ({d.role})",
                               FATAL, value=fatal, threshold=0,
                               action="drain the node; reseat or replace the device, check its riser and slot"))
            else:
                out.append(ok("pcie.aer.fatal", "pcie", e, f"no fatal PCIe error ({d.role})"))
            p = prev.get(d.pci)
            for sev, per_hour, count, check in (
                    ("nonfatal", s.nonfatal_warning_per_hour, s.nonfatal_warning_count, "pcie.aer.nonfatal"),
                    ("correctable", s.correctable_warning_per_hour, s.correctable_warning_count,
                     "pcie.aer.correctable")):
                out.append(_rate(check, e, sev, d.total(sev), p.total(sev) if p else None, elapsed, per_hour, count))
        return Output(ms, out)


def _rate(check: str, e: str, sev: str, now: int | None, before: int | None, elapsed: float | None,
          per_hour: float, count: int) -> Finding:
    if now is None:
        return unknown(check, "pcie", e, f"aer_dev_{sev} not read", WARNING)
    if before is not None and elapsed and elapsed > 0 and now >= before:
        rate = (now - before) * 3600.0 / elapsed
        if rate > per_hour:
            return bad(check, "pcie", e, f"{rate:.1f} {sev} PCIe errors per hour ({now} since boot)", WARNING,
                       value=round(rate, 2), threshold=per_hour, action="reseat the device or check its riser")
        return ok(check, "pcie", e, f"{now} {sev} errors since boot, {rate:.1f}/h", WARNING, value=round(rate, 2))
    if now > count:  # a first reading (or after a reset): the count since boot
        return bad(check, "pcie", e, f"{now} {sev} PCIe errors since boot", WARNING, value=now, threshold=count,
                   action="watch the rate; reseat the device if it keeps growing")
    return ok(check, "pcie", e, f"{now} {sev} errors since boot", WARNING, value=now)
