"""The node tuner's metric families, declared once with their label names, and readings -> samples."""
from __future__ import annotations

from typing import TYPE_CHECKING

from . import rules
from agent.base.metrics import Counter, Gauge, MetricSet
from .apply import RlimitOutcome, SysctlOutcome
from .policy import REPORT
from .values import field_labels, fmt, is_numeric

if TYPE_CHECKING:  # the reading is defined beside the collector, which imports this module
    from .collector import TunerReading

PROCESS_RLIMIT = Gauge("vigil_process_rlimit", "File limit of a named host process (the lowest across its processes; "
                       "+Inf unlimited).", ("kind", "process", "resource"))
PROCESS_RLIMIT_DESIRED = Gauge("vigil_process_rlimit_desired", "Declared file limit of a named host process.",
                               ("kind", "process", "resource"))
PROCESS_RLIMIT_DRIFT = Gauge("vigil_process_rlimit_drift", "1 when a process's file limit does not satisfy its "
                             "policy.", ("process", "resource"))
SYSCTL_DESIRED = Gauge("vigil_sysctl_desired", "Declared sysctl value by field.", ("field", "key"))
SYSCTL_DESIRED_INFO = Gauge("vigil_sysctl_desired_info", "Declared value of a sysctl that is a word.",
                            ("key", "value"))
SYSCTL_DRIFT = Gauge("vigil_sysctl_drift", "1 when the live sysctl value does not satisfy its policy.", ("key",))
SYSCTL_VALUE = Gauge("vigil_sysctl_value", "Live sysctl value by field.", ("field", "key"))
SYSCTL_VALUE_INFO = Gauge("vigil_sysctl_value_info", "Live value of a sysctl that is a word.", ("key", "value"))
TUNER_INFO = Gauge("vigil_tuner_info", "Node tuner mode and where its profile came from.",
                   ("file_limits", "mode", "profile"))
TUNER_PROCESSES = Gauge("vigil_tuner_processes", "Running processes matching a profile's process name.", ("process",))
TUNER_RLIMIT_WRITES = Counter("vigil_tuner_rlimit_writes_total", "File limit changes by result.",
                              ("process", "resource", "result"))
TUNER_WRITES = Counter("vigil_tuner_writes_total", "Sysctl writes by result (dry_run: would have written).",
                       ("key", "result"))


WRITE_RESULTS = ("ok", "failed", "dry_run")


def tuner_metrics(r: TunerReading) -> MetricSet:
    """Field labels: "" for a single value, "0", "1", "2" by position for multi-field keys (tcp_rmem's
    min/default/max). Words (tcp_congestion_control) have no number: they go to the *_info families."""
    ms = MetricSet()
    ms.add(TUNER_INFO, {"mode": r.mode, "profile": r.profile, "file_limits": r.file_limits}, 1)
    for spec in (SYSCTL_VALUE, SYSCTL_DESIRED, SYSCTL_DRIFT, PROCESS_RLIMIT, PROCESS_RLIMIT_DESIRED,
                 PROCESS_RLIMIT_DRIFT, TUNER_PROCESSES, TUNER_WRITES, TUNER_RLIMIT_WRITES):
        ms.declare(spec)
    for s in r.sysctls:
        _sysctl_metrics(ms, s, r.writes)
    seen: set[str] = set()
    for rl in r.rlimits:
        _rlimit_metrics(ms, rl, r.rlimit_writes, seen)
    return ms


def _sysctl_metrics(ms: MetricSet, s: SysctlOutcome, writes: dict[tuple[str, str], int]) -> None:
    key = s.entry.key
    now, want = s.now, s.entry.value
    if now is not None:
        if is_numeric(now):
            for label, v in zip(field_labels(now), now):
                ms.add(SYSCTL_VALUE, {"key": key, "field": label}, v)
        elif now:
            ms.add(SYSCTL_VALUE_INFO, {"key": key, "value": fmt(now)}, 1)
    if want is not None:
        if is_numeric(want):
            for label, v in zip(field_labels(want), want):
                ms.add(SYSCTL_DESIRED, {"key": key, "field": label}, v)
        else:
            ms.add(SYSCTL_DESIRED_INFO, {"key": key, "value": fmt(want)}, 1)
    drift = s.drift
    ms.add(SYSCTL_DRIFT, {"key": key}, None if drift is None else int(drift))
    if s.entry.policy != REPORT:  # report entries are never written: no write series
        for result in WRITE_RESULTS:
            ms.add(TUNER_WRITES, {"key": key, "result": result}, writes.get((key, result), 0))


def _rlimit_metrics(ms: MetricSet, r: RlimitOutcome, writes: dict[tuple[str, str, str], int],
                    seen: set[str]) -> None:
    e = r.entry
    if e.process not in seen:
        seen.add(e.process)
        ms.add(TUNER_PROCESSES, {"process": e.process}, len(r.pids))
    labels = {"process": e.process, "resource": e.resource}
    known = [p.now for p in r.pids if p.now is not None]
    for i, kind in enumerate(("soft", "hard")):
        if known:  # several processes of one name: the lowest limit is the one that bites
            ms.add(PROCESS_RLIMIT, {**labels, "kind": kind}, min(n[i] for n in known))
        declared = e.soft if kind == "soft" else e.hard
        ms.add(PROCESS_RLIMIT_DESIRED, {**labels, "kind": kind}, declared)
    drift = rules.pid_drift(r.pids)
    ms.add(PROCESS_RLIMIT_DRIFT, labels, None if drift is None else int(drift))
    if e.policy != REPORT:
        for result in WRITE_RESULTS:
            ms.add(TUNER_RLIMIT_WRITES, {**labels, "result": result}, writes.get((e.process, e.resource, result), 0))
