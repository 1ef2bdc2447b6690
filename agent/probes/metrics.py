"""vigil_probe_*: what the last validation found, for a textfile collector (`agent validate --metrics-file`)
or the agent's /metrics once the stream triggers validations."""
from __future__ import annotations

from typing import Any

from agent.base.findings import OK, UNHEALTHY, UNKNOWN
from agent.base.metrics import Gauge, MetricSet
from agent.base.validate import finite

RESULT = Gauge("vigil_probe_result", "Last result of a probe: 1 passed (warnings included), 0 failed, -1 could "
               "not run or did not finish", ("probe",))
DURATION = Gauge("vigil_probe_duration_seconds", "How long the probe's last run took", ("probe",))
CHECK = Gauge("vigil_probe_check_status", "One probe finding: 1 ok, 0 unhealthy, -1 unknown",
              ("probe", "check", "entity"))
MEASURED = Gauge("vigil_probe_measured_value", "A probe's measured value (unit in the check name: _tflops, "
                 "_tbps, _gbps ...)", ("probe", "check", "entity"))
FLOOR = Gauge("vigil_probe_floor_value", "The floor the measured value is judged against (same unit)",
              ("probe", "check", "entity"))
LAST = Gauge("vigil_probe_last_run_timestamp_seconds", "When the last validation started (Unix time)", ())

_STATUS = {OK: 1, UNHEALTHY: 0, UNKNOWN: -1}
_RESULT = {"pass": 1, "warn": 1, "fail": 0, "unknown": -1}


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not finite(v):
        return None
    return float(v)


def validation_metrics(v: Any) -> MetricSet:
    ms = MetricSet()
    for spec in (RESULT, DURATION, CHECK, MEASURED, FLOOR, LAST):
        ms.declare(spec)
    ms.add(LAST, {}, v.started_at)
    for r in v.results:
        if r.status == "unavailable":
            continue  # not installed: no series, as absent hardware has none
        ms.add(RESULT, {"probe": r.name}, _RESULT[r.status])
        ms.add(DURATION, {"probe": r.name}, r.duration)
        for f in r.findings:
            labels = {"probe": r.name, "check": f.check, "entity": f.entity}
            ms.add(CHECK, labels, _STATUS[f.status])
            if f.check.endswith(".run"):
                continue  # its value is the duration, exported above
            ms.add(MEASURED, labels, _number(f.value))
            ms.add(FLOOR, labels, _number(f.threshold))
    return ms
