"""GPU health rules (pure). Readings in, findings out; thresholds come from the gpu config section.

Every check emits a finding for every GPU it could evaluate, ok or not, so `--once --json` and
vigil_check_status show what was checked, not only what failed.

Impossible values (DESIGN §0) reach the rules only as GpuReading.invalid records (model.validate dropped
them): the check that needed one is unknown, naming the field, unless what was read validly already fails it
(a valid count of 2 beside an impossible total is still 2 errors). Invalid fields no check reads (power,
memory, a temperature limit ...) show as one `gpu.values` finding per GPU (warning: they judge nothing).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

from agent.base.config import in_range
from .model import GpuReading, GpuReadings, pcie_generation
from agent.base.findings import FATAL, INFO, OK, WARNING, Finding, bad, ok, unknown

C = "gpu"


@dataclass
class GpuThresholds:
    ecc_uncorrectable_max: int = 0  # volatile uncorrectable errors tolerated (fatal above)
    ecc_correctable_warning_count: int = 10  # correctable since driver load, when no rate is known yet
    ecc_correctable_warning_per_hour: float = 10.0  # correctable rate between two readings
    retired_pages_fatal: int = 60  # NVIDIA advises RMA past ~60 retired pages; AMD has its own threshold too
    temperature_warning_celsius: dict[str, float] = field(
        default_factory=lambda: {"edge": 90.0, "junction": 95.0, "memory": 95.0})
    temperature_fatal_celsius: dict[str, float] = field(
        default_factory=lambda: {"edge": 100.0, "junction": 105.0, "memory": 105.0})
    busy_utilization_ratio: float = 0.10  # PCIe generation is judged only above this (idle links down-train)

    def check_thresholds(self, prefix: str) -> None:
        """The config builder already refuses negative counts and non-finite numbers (-1 would make every
        GPU fatal, NaN would compare false and silence a check); these bound them to what a GPU can count."""
        in_range(f"{prefix}.ecc_uncorrectable_max", self.ecc_uncorrectable_max, 0, 1_000_000)
        in_range(f"{prefix}.ecc_correctable_warning_count", self.ecc_correctable_warning_count, 0, 1_000_000_000)
        in_range(f"{prefix}.ecc_correctable_warning_per_hour", self.ecc_correctable_warning_per_hour, 0, 1e9)
        in_range(f"{prefix}.retired_pages_fatal", self.retired_pages_fatal, 0, 1_000_000)


def evaluate(readings: GpuReadings, expected: int | None, t: GpuThresholds, node: str,
             previous: GpuReadings | None = None, elapsed: float | None = None) -> list[Finding]:
    out = count_check(readings, expected, node)
    prev = {(g.vendor, g.uuid or g.pci_bus_id or g.name): g for g in (previous.gpus if previous else [])}
    for g in readings.gpus:
        if g.partition:  # MIG/CPX instances carry identity and memory; health is judged on the whole GPU
            continue
        p = prev.get((g.vendor, g.uuid or g.pci_bus_id or g.name))
        judged = (ecc_checks(g, t, p, elapsed) + page_checks(g, t) + temperature_checks(g, t) + pcie_checks(g, t)
                  + link_checks(g) + throttle_checks(g))
        # A check whose data was not read cannot be ok (throttling reads as "none" when nothing was read); a
        # failure that other data still shows (a driver flag from another command) stands.
        judged = [f for f in judged if f.status != OK or not _is_unread(g, f.check)]
        out += judged + unread_checks(g, t, {f.check for f in judged})
        out += values_check(g)
    return out


def _is_unread(g: GpuReading, check: str) -> bool:
    return check in g.unread or (check.startswith("gpu.temperature.") and "gpu.temperature" in g.unread)


# Severity of each check when it could not run: the severity it has when it fires (a fatal one makes the
# node unknown). Temperature sensors are fatal where a fatal threshold is configured.
UNREAD_SEVERITY = {
    "gpu.ecc.uncorrectable": FATAL, "gpu.ecc.correctable": WARNING, "gpu.ecc.deferred": WARNING,
    "gpu.pages.retired": FATAL, "gpu.pages.pending": WARNING, "gpu.row_remap.failure": FATAL,
    "gpu.row_remap.pending": WARNING, "gpu.pcie.width": WARNING, "gpu.pcie.generation": WARNING,
    "gpu.xgmi": FATAL, "gpu.nvlink": FATAL, "gpu.throttle": WARNING,
}


def unread_checks(g: GpuReading, t: GpuThresholds, judged: set[str]) -> list[Finding]:
    """Unknown findings for the checks whose data the backend could not read on this GPU (g.unread), unless
    what was read still judged the check (a driver flag from another command)."""
    out = []
    for check, why in sorted(g.unread.items()):
        if check == "gpu.temperature":
            sensors = sorted(set(t.temperature_warning_celsius) | set(t.temperature_fatal_celsius))
            expanded = [(f"{check}.{s}", FATAL if s in t.temperature_fatal_celsius else WARNING) for s in sensors]
        else:
            expanded = [(check, UNREAD_SEVERITY.get(check, FATAL))]
        for name, severity in expanded:
            if name not in judged:
                out.append(unknown(name, C, g.entity, f"not read: {why}", severity=severity))
    return out


# Invalid-record keys that a check below consumes; every other key goes to gpu.values.
_JUDGED = ("ecc.uncorrectable", "ecc.correctable", "ecc.deferred", "pages.retired", "pages.pending",
           "pcie.width", "pcie.generation")


def _invalid(g: GpuReading, key: str) -> str:
    """The messages of g's invalid fields under `key`, joined; "" when none."""
    return "; ".join(i.message for i in g.invalid if i.key == key)


def values_check(g: GpuReading) -> list[Finding]:
    rest = [i for i in g.invalid if i.key not in _JUDGED and not i.key.startswith("temperature.")]
    if not rest:
        return []
    return [unknown("gpu.values", C, g.entity, "; ".join(i.message for i in rest), severity=WARNING)]


def count_check(r: GpuReadings, expected: int | None, node: str) -> list[Finding]:
    found = sum(1 for g in r.gpus if not g.partition)
    pci = sum(r.pci_gpus.values()) if r.pci_gpus else None
    want = expected if expected is not None else pci
    unavailable = "; ".join(f"{v}: {why}" for v, why in sorted(r.unavailable.items()))
    if unavailable and not r.inventories:
        # No SMI could run. With GPUs expected (declared or on the bus) we cannot tell their health.
        if pci is not None and expected is not None and pci < expected:
            return [bad("gpu.count", C, node, f"{pci} GPUs on the PCI bus, {expected} expected; {_missing(r)}",
                        value=pci, threshold=expected, action="drain the node and inspect the GPUs")]
        if want:
            return [unknown("gpu.count", C, node, f"GPU backend unavailable ({unavailable}); {want} GPUs expected",
                            threshold=want)]
        return []  # no GPU on this node and none expected: absent hardware is not a failure
    if want is None:
        return [ok("gpu.count", C, node, f"{found} GPUs", value=found)] if r.inventories else []
    if found < want:
        src = "expected" if expected is not None else "on the PCI bus"
        return [bad("gpu.count", C, node, f"{found} of {want} GPUs visible ({want} {src}); {_missing(r)}",
                    value=found, threshold=want, action="drain the node and inspect the missing GPU")]
    return [ok("gpu.count", C, node, f"{found} of {want} GPUs visible", value=found, threshold=want)]


def _missing(r: GpuReadings) -> str:
    """Which GPUs are missing, by PCI address: those known (on the bus at start, declared, or read before) that
    no SMI reports now."""
    visible = {g.pci_bus_id for g in r.gpus if g.pci_bus_id}
    gone = sorted(r.known_addresses - visible)
    if gone:
        shown = ", ".join(gone[:8]) + (f" and {len(gone) - 8} more" if len(gone) > 8 else "")
        return f"missing: {shown}"
    return ("which one is not known (not on the PCI bus when the agent started, not in expect.gpu_bus_ids, not "
            "seen by this agent)")


def _sum(g: GpuReading, type_: str, volatile: bool = True) -> int | None:
    """The count to judge: the vendor's total, the sum of its blocks, or where it gives both, the larger (a
    total that lags or misses a block must not hide a block's errors, nor the other way round)."""
    counts = [e for e in g.ecc if e.type == type_ and e.volatile == volatile]
    if not counts:
        return None
    totals = [e.count for e in counts if e.block == "total"]
    blocks = [e.count for e in counts if e.block != "total"]
    return max(max(totals, default=0), sum(blocks))


def _blocks(g: GpuReading, type_: str) -> str:
    blocks = [f"{e.block} {e.count}" for e in g.ecc if e.type == type_ and e.volatile and e.block != "total"
              and e.count]
    return f" ({', '.join(blocks)})" if blocks else ""


def ecc_checks(g: GpuReading, t: GpuThresholds, prev: GpuReading | None, elapsed: float | None) -> list[Finding]:
    out: list[Finding] = []
    unc = _sum(g, "uncorrectable")
    bad_unc = _invalid(g, "ecc.uncorrectable")
    if unc is not None and unc > t.ecc_uncorrectable_max:
        out.append(bad("gpu.ecc.uncorrectable", C, g.entity,
                       f"{unc} uncorrectable ECC errors{_blocks(g, 'uncorrectable')}"
                       + (f"; {bad_unc}" if bad_unc else ""), value=unc,
                       threshold=t.ecc_uncorrectable_max, action="drain the node; reset or replace the GPU"))
    elif bad_unc:
        out.append(unknown("gpu.ecc.uncorrectable", C, g.entity, bad_unc, threshold=t.ecc_uncorrectable_max))
    elif unc is None:
        # "N/A" / not supported (an APU, a consumer part): nothing to judge, as for an absent sensor. A query
        # that failed is in g.unread instead: unknown, see unread_checks.
        pass
    else:
        out.append(ok("gpu.ecc.uncorrectable", C, g.entity, "no uncorrectable ECC errors", value=unc,
                      threshold=t.ecc_uncorrectable_max))
    deferred, bad_deferred = _sum(g, "deferred"), _invalid(g, "ecc.deferred")
    if deferred:
        out.append(bad("gpu.ecc.deferred", C, g.entity, f"{deferred} deferred (poisoned) ECC errors"
                       f"{_blocks(g, 'deferred')}" + (f"; {bad_deferred}" if bad_deferred else ""),
                       severity=WARNING, value=deferred, threshold=0))
    elif bad_deferred:
        out.append(unknown("gpu.ecc.deferred", C, g.entity, bad_deferred, severity=WARNING, threshold=0))
    corr, bad_corr = _sum(g, "correctable"), _invalid(g, "ecc.correctable")
    if bad_corr and not (corr is not None and corr > t.ecc_correctable_warning_count):
        # Without every count there is no rate and no total to compare; a valid count already above the
        # single-reading limit still fires below.
        out.append(unknown("gpu.ecc.correctable", C, g.entity, bad_corr, severity=WARNING,
                           threshold=t.ecc_correctable_warning_count))
    elif corr is not None:
        prev_corr = _sum(prev, "correctable") if prev else None
        if prev_corr is not None and elapsed and corr >= prev_corr:
            rate = (corr - prev_corr) / elapsed * 3600
            fire, msg, val, thr = (rate > t.ecc_correctable_warning_per_hour,
                                   f"{rate:.1f} correctable ECC errors/hour", round(rate, 3),
                                   t.ecc_correctable_warning_per_hour)
        else:
            fire, msg, val, thr = (corr > t.ecc_correctable_warning_count,
                                   f"{corr} correctable ECC errors since driver load{_blocks(g, 'correctable')}",
                                   corr, t.ecc_correctable_warning_count)
        out.append((bad if fire else ok)("gpu.ecc.correctable", C, g.entity, msg, severity=WARNING, value=val,
                                         threshold=thr))
    return out


def page_checks(g: GpuReading, t: GpuThresholds) -> list[Finding]:
    out: list[Finding] = []
    bad_retired, bad_pending = _invalid(g, "pages.retired"), _invalid(g, "pages.pending")
    if bad_retired and not g.bad_page_threshold_exceeded:
        out.append(unknown("gpu.pages.retired", C, g.entity, bad_retired, threshold=t.retired_pages_fatal))
    elif g.bad_page_threshold_exceeded:
        out.append(bad("gpu.pages.retired", C, g.entity, "bad page threshold exceeded (driver RAS)",
                       value=g.retired_pages, threshold=g.bad_page_threshold, action="replace the GPU"))
    elif g.retired_pages is not None:
        limit = t.retired_pages_fatal
        if g.bad_page_threshold:
            limit = min(limit, g.bad_page_threshold)
        if g.retired_pages > limit:
            out.append(bad("gpu.pages.retired", C, g.entity, f"{g.retired_pages} retired pages", value=g.retired_pages,
                           threshold=limit, action="replace the GPU"))
        else:
            out.append(ok("gpu.pages.retired", C, g.entity, f"{g.retired_pages} retired pages", value=g.retired_pages,
                          threshold=limit))
    if g.pending_pages:
        out.append(bad("gpu.pages.pending", C, g.entity, f"{g.pending_pages} pages pending retirement",
                       severity=WARNING, value=g.pending_pages, threshold=0, action="reset the GPU"))
    elif bad_pending:
        out.append(unknown("gpu.pages.pending", C, g.entity, bad_pending, severity=WARNING, threshold=0))
    if g.row_remap_failure:
        out.append(bad("gpu.row_remap.failure", C, g.entity, "row remapping failed", value=1, threshold=0,
                       action="replace the GPU"))
    elif g.row_remap_failure is not None:
        out.append(ok("gpu.row_remap.failure", C, g.entity, "no row remap failure", value=0, threshold=0))
    if g.row_remap_pending:
        out.append(bad("gpu.row_remap.pending", C, g.entity, "row remap pending", severity=WARNING, value=1,
                       threshold=0, action="reset the GPU"))
    elif g.row_remap_pending is not None:
        out.append(ok("gpu.row_remap.pending", C, g.entity, "no row remap pending", severity=WARNING, value=0,
                      threshold=0))
    return out


def temperature_checks(g: GpuReading, t: GpuThresholds) -> list[Finding]:
    out = []
    for i in g.invalid:
        if i.key.startswith("temperature."):
            sensor = i.key.split(".", 1)[1]
            # The sensor could be past its fatal limit for all we know: unknown at the check's worst severity.
            severity = FATAL if sensor in t.temperature_fatal_celsius else WARNING
            out.append(unknown(f"gpu.{i.key}", C, g.entity, i.message, severity=severity))
    for sensor, temp in sorted(g.temperatures.items()):
        warn = t.temperature_warning_celsius.get(sensor)
        fatal = t.temperature_fatal_celsius.get(sensor)
        check = f"gpu.temperature.{sensor}"
        if fatal is not None and temp > fatal:
            out.append(bad(check, C, g.entity, f"{sensor} {temp:.0f} C", value=temp, threshold=fatal,
                           action="check cooling"))
        elif warn is not None and temp > warn:
            out.append(bad(check, C, g.entity, f"{sensor} {temp:.0f} C", severity=WARNING, value=temp,
                           threshold=warn))
        elif warn is not None or fatal is not None:
            out.append(ok(check, C, g.entity, f"{sensor} {temp:.0f} C", severity=WARNING, value=temp,
                          threshold=warn if warn is not None else fatal))
    return out


def pcie_checks(g: GpuReading, t: GpuThresholds) -> list[Finding]:
    out = []
    if _invalid(g, "pcie.width"):
        out.append(unknown("gpu.pcie.width", C, g.entity, _invalid(g, "pcie.width"), severity=WARNING))
    elif g.pcie_width is not None and g.pcie_max_width:
        if g.pcie_width < g.pcie_max_width:
            out.append(bad("gpu.pcie.width", C, g.entity, f"PCIe link x{g.pcie_width} of x{g.pcie_max_width}",
                           severity=WARNING, value=g.pcie_width, threshold=g.pcie_max_width,
                           action="reseat the GPU or check the riser"))
        else:
            out.append(ok("gpu.pcie.width", C, g.entity, f"PCIe x{g.pcie_width}", severity=WARNING,
                          value=g.pcie_width, threshold=g.pcie_max_width))
    gen, max_gen = pcie_generation(g.pcie_speed_gts), pcie_generation(g.pcie_max_speed_gts)
    util_bad = _invalid(g, "utilization")
    if _invalid(g, "pcie.generation"):
        out.append(unknown("gpu.pcie.generation", C, g.entity, _invalid(g, "pcie.generation"), severity=WARNING))
    elif gen is not None and max_gen is not None:
        busy = g.utilization is not None and g.utilization >= t.busy_utilization_ratio
        if gen < max_gen and util_bad:  # busy or idle decides this check, and the load is not known
            out.append(unknown("gpu.pcie.generation", C, g.entity, f"PCIe Gen{gen} of Gen{max_gen}; {util_bad}",
                               severity=WARNING, value=gen, threshold=max_gen))
        elif gen < max_gen and busy:
            out.append(bad("gpu.pcie.generation", C, g.entity, f"PCIe Gen{gen} of Gen{max_gen} while busy",
                           severity=WARNING, value=gen, threshold=max_gen))
        else:
            idle = " (idle: down-training allowed)" if gen < max_gen else ""
            out.append(ok("gpu.pcie.generation", C, g.entity, f"PCIe Gen{gen} of Gen{max_gen}{idle}",
                          severity=WARNING, value=gen, threshold=max_gen))
    return out


def link_checks(g: GpuReading) -> list[Finding]:
    links = [link for link in g.links if link.up is not None]
    if not links:
        return []
    down = [link for link in links if link.up is False]
    if down:
        names = ", ".join(f"{link.name}" + (f" to gpu{link.peer}" if link.peer is not None else "") for link in down)
        return [bad(f"gpu.{links[0].kind}", C, g.entity, f"{len(down)} of {len(links)} links down: {names}",
                    value=len(down), threshold=0, action="drain the node; inspect the GPU interconnect")]
    return [ok(f"gpu.{links[0].kind}", C, g.entity, f"{len(links)} links up", value=0, threshold=0)]


def throttle_checks(g: GpuReading) -> list[Finding]:
    if g.throttle_hardware:
        return [bad("gpu.throttle", C, g.entity, "hardware throttling: " + ", ".join(g.throttle_hardware),
                    severity=WARNING, value=len(g.throttle_hardware), threshold=0, action="check cooling and power")]
    other = [r for r in g.throttle_active if r not in g.throttle_hardware]
    note = f" (software: {', '.join(other)})" if other else ""
    return [ok("gpu.throttle", C, g.entity, "no hardware throttling" + note, severity=WARNING, value=0,
               threshold=0)]


def smi_unresponsive(node: str, backends: Iterable[str], stuck_seconds: float, detail: str | None = None) -> Finding:
    """An SMI call that did not return by its deadline, whichever fired: the collector's (the read thread is
    abandoned) or the CLI's own (the tool was killed; `detail` says what was left behind)."""
    message = f"{'/'.join(backends) or 'GPU'} call stuck for {stuck_seconds:.0f}s (driver hang?)"
    return bad("gpu.smi_unresponsive", C, node, f"{message}: {detail}" if detail else message,
               value=round(stuck_seconds, 1), action="drain the node; the GPU driver may need a reboot")


__all__ = ["GpuThresholds", "evaluate", "smi_unresponsive", "FATAL", "INFO"]
