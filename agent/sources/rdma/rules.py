"""RDMA health rules (pure). Readings in, findings out; thresholds come from the rdma config section.

Per port, `agent --once` shows one row: a port that is down (or ignored) gets only its state finding, since
error rates on a dead link say nothing more; an up port gets its state and saturation checks, plus the
link_downed and error-rate checks once a previous reading gives something to compare with.
A counter that went backwards was reset (driver reload, counters cleared): its increase is counted from zero,
as Prometheus' rate() does, never as a negative delta.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from .sysfs import COUNTER_BITS, ERROR_TYPES, PortReading, is_saturated
from agent.base.config import ConfigError, in_range
from agent.base.findings import WARNING, Finding, bad, ok, unknown

C = "rdma"

# Narrow error counters whose saturation is reported as a finding (data counters only get the metric).
JUDGED_SATURATION = tuple(n for n in ERROR_TYPES if COUNTER_BITS.get(n, 64) < 32)

PHYS_HINTS = {
    "Polling": "no signal from the peer",
    "Disabled": "disabled (administratively or by the switch)",
    "Sleep": "port asleep",
    "LinkErrorRecovery": "link retraining after errors",
    "PortConfigurationTraining": "link training",
}
_IGNORE = re.compile(r"^[A-Za-z0-9_.:-]+(/[0-9]+)?$")


@dataclass
class RdmaThresholds:
    # A clean link shows no symbol errors after FEC; sustained ones mean a bad cable or transceiver.
    # 0.01/s is 36 an hour, and the 16-bit counter saturates (65535) well before anyone looks at it otherwise.
    symbol_error_warning_per_second: float = 0.01
    # local_link_integrity_errors is 4-bit (saturates at 15): any new one is worth a warning.
    link_integrity_warning_per_second: float = 0.0
    # Ports not expected up: "mlx5_4" (every port of the device) or "mlx5_4/1". Still exported and counted.
    ignore_ports: list[str] = field(default_factory=list)

    def check_thresholds(self, prefix: str) -> None:
        for key in ("symbol_error_warning_per_second", "link_integrity_warning_per_second"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{prefix}.{key}: must be >= 0, got {getattr(self, key)}")
            in_range(f"{prefix}.{key}", getattr(self, key), 0, 1e9)
        for i, entry in enumerate(self.ignore_ports):
            if not _IGNORE.match(entry):
                raise ConfigError(f"{prefix}.ignore_ports[{i}]: expected DEVICE or DEVICE/PORT (e.g. mlx5_4/1), "
                                  f"got {entry!r}")


def ignored(port: PortReading, t: RdmaThresholds) -> bool:
    return port.device in t.ignore_ports or port.key in t.ignore_ports


def delta(prev: int | None, cur: int | None) -> tuple[int | None, bool]:
    """(increase since prev, reset?). A decrease is a reset: the counter restarted from zero in between."""
    if prev is None or cur is None:
        return None, False
    if cur < prev:
        return cur, True
    return cur - prev, False


def port_was_reset(prev: PortReading, cur: PortReading) -> bool:
    for group in ("counters", "counters_ext", "hw_counters"):
        old, new = getattr(prev, group), getattr(cur, group)
        if any(delta(old.get(name), value)[1] for name, value in new.items()):
            return True
    return False


def carry_resets(previous, reading) -> dict[str, int]:
    """Resets seen per port since the agent started: the previous tally plus one for every port whose counters
    went backwards since the previous reading. Ports that are gone drop out."""
    before = dict(getattr(previous, "resets", {}) or {}) if previous is not None else {}
    prev_ports = {p.key: p for p in previous.ports} if previous is not None else {}
    tally = {}
    for port in reading.ports:
        n = before.get(port.key, 0)
        p = prev_ports.get(port.key)
        if p is not None and port_was_reset(p, port):
            n += 1
        tally[port.key] = n
    return tally


def evaluate(reading, t: RdmaThresholds, expected_ports: int | None, node: str, previous=None,
             elapsed: float | None = None) -> list[Finding]:
    out = count_check(reading, expected_ports, node)
    out += removed_checks(reading)
    prev_ports = {p.key: p for p in previous.ports} if previous is not None else {}
    for port in reading.ports:
        out += port_checks(port, t, prev_ports.get(port.key), elapsed)
    return out


def count_check(reading, expected: int | None, node: str) -> list[Finding]:
    found = len(reading.ports)
    if expected is None:
        return [ok("rdma.port_count", C, node, f"{found} RDMA ports", value=found)] if found else []
    if found < expected:
        gone = f"; gone: {', '.join(reading.missing)}" if reading.missing else ""
        return [bad("rdma.port_count", C, node, f"{found} of {expected} RDMA ports present{gone}", value=found,
                    threshold=expected, action="drain the node; check the HCAs (lspci, dmesg)")]
    return [ok("rdma.port_count", C, node, f"{found} of {expected} RDMA ports present", value=found,
               threshold=expected)]


def removed_checks(reading) -> list[Finding]:
    return [bad("rdma.device_removed", C, name, f"{name} disappeared (seen earlier since the agent started)",
                value=1, threshold=0, action="check dmesg for the HCA (PCIe AER, firmware fatal error); drain the node")
            for name in reading.missing]


def port_checks(port: PortReading, t: RdmaThresholds, prev: PortReading | None,
                elapsed: float | None) -> list[Finding]:
    state = state_check(port, t)
    if ignored(port, t) or state.status != "ok":
        return [state]
    out = [state]
    out += saturation_check(port)
    if prev is not None and elapsed:
        out += link_downed_check(port, prev, elapsed)
        out += rate_check(port, prev, elapsed, "symbol_error", "rdma.symbol_errors", "symbol errors",
                          t.symbol_error_warning_per_second, "reseat or replace the cable or transceiver")
        out += rate_check(port, prev, elapsed, "local_link_integrity_errors", "rdma.link_integrity_errors",
                          "local link integrity errors", t.link_integrity_warning_per_second,
                          "reseat or replace the cable or transceiver")
    return out


def _describe(port: PortReading) -> str:
    phys = port.phys_state or "?"
    text = f"{port.state or '?'}/{phys}"
    if port.netdev is not None:
        nd = port.netdev
        text += f", netdev {nd.name} carrier {nd.carrier if nd.carrier is not None else '?'}"
    return text


def state_check(port: PortReading, t: RdmaThresholds) -> Finding:
    e = port.key
    if ignored(port, t):
        return ok("rdma.port_state", C, e, f"{_describe(port)}; not judged (rdma.ignore_ports)",
                  value=port.state_id)
    if port.state_id is None:
        return unknown("rdma.port_state", C, e, "port state unreadable")
    if port.up:
        return ok("rdma.port_state", C, e, f"{_describe(port)} {port.rate or ''}".rstrip(), value=port.state_id,
                  threshold=4)
    if port.state_id != 4 and port.phys_state_id == 5:
        hint = "link up but not activated (subnet manager, or the RoCE netdev)"
    else:
        hint = PHYS_HINTS.get(port.phys_state or "", "link not up")
    return bad("rdma.port_state", C, e, f"port {_describe(port)}: {hint}", value=port.state_id, threshold=4,
               action="check the cable, transceiver and switch port; drain the node if it stays down")


def saturation_check(port: PortReading) -> list[Finding]:
    judged = [n for n in JUDGED_SATURATION if n in port.counters]
    if not judged:
        return []  # no PMA error counters on this port (iWARP, some RoCE): nothing to judge
    stuck = [n for n in judged if is_saturated(n, port.counters[n])]
    if stuck:
        names = ", ".join(f"{n}={port.counters[n]}" for n in stuck)
        return [bad("rdma.counters_saturated", C, port.key, f"counters stuck at their maximum, new errors are "
                    f"invisible: {names}", severity=WARNING, value=len(stuck), threshold=0,
                    action="clear the port counters (perfquery -x -R)")]
    return [ok("rdma.counters_saturated", C, port.key, f"{len(judged)} error counters below their maximum",
               severity=WARNING, value=0, threshold=0)]


def link_downed_check(port: PortReading, prev: PortReading, elapsed: float) -> list[Finding]:
    before, now = prev.counters.get("link_downed"), port.counters.get("link_downed")
    d, reset = delta(before, now)
    if d is None or is_saturated("link_downed", now):
        return []  # no counter (N/A), or stuck at 255: the saturation check says so
    since = f"{now} since a counter reset" if reset else f"link_downed {before} -> {now}"
    if d > 0:
        return [bad("rdma.link_downed", C, port.key, f"link went down {d} time(s) in the last {elapsed:.0f}s "
                    f"({since})", value=d, threshold=0,
                    action="inspect the link (cable, transceiver, switch port); jobs on this port lost connections")]
    return [ok("rdma.link_downed", C, port.key, f"no link down in the last {elapsed:.0f}s ({since})", value=0,
               threshold=0)]


def rate_check(port: PortReading, prev: PortReading, elapsed: float, counter: str, check: str, what: str,
               threshold: float, action: str) -> list[Finding]:
    now = port.counters.get(counter)
    d, _ = delta(prev.counters.get(counter), now)
    if d is None or is_saturated(counter, now):
        return []
    rate = d / elapsed
    msg = f"{what} {rate:.3g}/s over {elapsed:.0f}s (+{d})"
    if rate > threshold:
        return [bad(check, C, port.key, msg, severity=WARNING, value=round(rate, 6), threshold=threshold,
                    action=action)]
    return [ok(check, C, port.key, msg, severity=WARNING, value=round(rate, 6), threshold=threshold)]
