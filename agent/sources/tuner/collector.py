"""Node tuner: a declared profile of sysctls and host-daemon file limits, enforced or reported (issue 6).

Config section `sysctl` (example):

    sysctl:
      mode: dry-run                 # enforce | dry-run | report (default report); --tuner-mode overrides
      profile:                      # omitted: the shipped profile agent/sources/tuner/profiles/gpu-training.yaml
        vm.max_map_count: 262144                                  # policy minimum: raise only
        net.ipv4.tcp_rmem: "4096 87380 16777216"                  # several fields, each a minimum
        net.ipv4.tcp_congestion_control: {value: bbr, policy: exact}
        kernel.numa_balancing: {value: 0, policy: exact}          # exact also lowers
        net.core.rmem_max: {policy: report}                       # only exported
      file_limits:                  # omitted: the shipped profile's
        containerd:
          nofile: 1048576                                         # soft and hard
          memlock: {soft: unlimited, hard: unlimited}

The default mode is report: a new install changes nothing on the node until an operator chooses dry-run (see
what would change) or enforce. `agent --once` never writes unless given --tune, and a snapshot replay is never
written. All writes happen in read() (the runner's deadline covers them); evaluate() only maps the pass's
outcomes to metrics and findings. File limits are applied only when the procfs root is the live /proc (with
hostPID, the host's daemons): an injected procfs tree or a snapshot has no processes to prlimit.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agent.base.config import CollectorSettings
from . import rules
from agent.base.metrics import MetricSet
from . import profile as prof
from .apply import RlimitOutcome, SysctlOutcome, Tuner, resolve_mode
from .policy import REPORT, RlimitEntry, SysctlEntry
from .prlimit import ProcessLimits, PsutilLimits
from .values import field_labels, fmt, is_numeric
from agent.base.collector import Collector, Context, NoData, Observation, Output

log = logging.getLogger(__name__)

DEFAULT_SOURCE = prof.DEFAULT_PROFILE.removesuffix(".yaml")  # "gpu-training"


@dataclass
class SysctlSettings(CollectorSettings):
    interval_seconds: float = 60.0  # values drift on reboots and package upgrades, not by the second
    mode: Literal["enforce", "dry-run", "report"] = "report"
    # sysctl key -> value | {value, policy}; None (omitted): the shipped gpu-training profile; {}: no sysctls
    profile: dict[str, Any] | None = None
    # process name -> {nofile|memlock: limit | {soft, hard, policy}}; None: the shipped profile's; {}: none
    file_limits: dict[str, Any] | None = None

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        self._parse(prefix)  # a bad entry fails at load, naming its key

    def _parse(self, prefix: str = "sysctl") -> tuple[list[SysctlEntry], list[RlimitEntry]]:
        if "_parsed" not in self.__dict__:  # once: check() does it when the config loads
            shipped = prof.default_profile() if self.profile is None or self.file_limits is None else {}

            def pick(own: dict | None, name: str) -> tuple[Any, str]:
                if own is not None:
                    return own, f"{prefix}.{name}"
                return shipped.get(name) or {}, f"{prof.DEFAULT_PROFILE}:{name}"

            self.__dict__["_parsed"] = (prof.parse_sysctls(*pick(self.profile, "profile")),
                                        prof.parse_file_limits(*pick(self.file_limits, "file_limits")))
        return self.__dict__["_parsed"]

    @property
    def sysctl_entries(self) -> list[SysctlEntry]:
        return self._parse()[0]

    @property
    def rlimit_entries(self) -> list[RlimitEntry]:
        return self._parse()[1]


@dataclass
class TunerReading:
    mode: str  # the effective mode of this pass
    mode_reason: str  # set in the config | set by --tuner-mode | why --once or a replay changed it
    profile: str  # where the sysctls came from: gpu-training (shipped) | config
    file_limits: str  # likewise for file limits
    sysctls: list[SysctlOutcome]
    rlimits: list[RlimitOutcome]
    writes: dict[tuple[str, str], int]  # counters so far: (key, result) -> n
    rlimit_writes: dict[tuple[str, str, str], int]  # (process, resource, result) -> n


class SysctlCollector(Collector):
    name = "sysctl"
    component = "sysctl"
    Settings = SysctlSettings

    def __init__(self, settings: SysctlSettings, ctx: Context, limits: ProcessLimits | None = None) -> None:
        super().__init__(settings, ctx)
        self._limits = limits  # tests inject a fake or point the live one at their own child process
        self._tuner: Tuner | None = None  # created on first read; keeps the write counters across passes

    def _live_proc(self) -> bool:
        root = self.ctx.roots.procfs
        return self.ctx.roots.snapshot is None and root.resolve() == Path("/proc").resolve()

    def read(self) -> TunerReading:
        root = self.ctx.roots.procfs
        if not root.joinpath("sys").is_dir():
            raise NoData(f"{root}/sys not found")
        replay = self.ctx.roots.snapshot is not None
        mode, why = resolve_mode(self.settings.mode, self.ctx.shared, replay)
        if self._tuner is None:
            limits = self._limits if self._limits is not None else PsutilLimits() if self._live_proc() else None
            self._tuner = Tuner(root, limits)
        t = self._tuner
        sysctls = t.sysctls(self.settings.sysctl_entries, mode)
        if replay:  # a key the snapshot did not capture says nothing about the node
            sysctls = [s for s in sysctls if s.error != "ENOENT"]
        rlimits = t.rlimits(self.settings.rlimit_entries, mode)
        s = self.settings
        return TunerReading(mode, why, "config" if s.profile is not None else DEFAULT_SOURCE,
                            "config" if s.file_limits is not None else DEFAULT_SOURCE,
                            sysctls, rlimits, dict(t.writes), dict(t.rlimit_writes))

    def evaluate(self, reading: TunerReading, previous: Observation | None, elapsed: float | None) -> Output:
        findings = rules.evaluate(self.ctx.node, reading.mode, reading.mode_reason, reading.sysctls, reading.rlimits)
        return Output(tuner_metrics(reading), findings)


# -- metrics ---------------------------------------------------------------------------------------------
WRITE_RESULTS = ("ok", "failed", "dry_run")


def tuner_metrics(r: TunerReading) -> MetricSet:
    """Field labels: "" for a single value, "0", "1", "2" by position for multi-field keys (tcp_rmem's
    min/default/max). Words (tcp_congestion_control) have no number: they go to the *_info families."""
    ms = MetricSet()
    ms.gauge("vigil_tuner_info", "Node tuner mode and where its profile came from.",
             {"mode": r.mode, "profile": r.profile, "file_limits": r.file_limits}, 1)
    for name, doc in (("vigil_sysctl_value", "Live sysctl value by field."),
                      ("vigil_sysctl_desired", "Declared sysctl value by field."),
                      ("vigil_sysctl_drift", "1 when the live sysctl value does not satisfy its policy."),
                      ("vigil_process_rlimit", "File limit of a named host process (the lowest across its "
                                               "processes; +Inf unlimited)."),
                      ("vigil_process_rlimit_desired", "Declared file limit of a named host process."),
                      ("vigil_process_rlimit_drift", "1 when a process's file limit does not satisfy its policy."),
                      ("vigil_tuner_processes", "Running processes matching a profile's process name.")):
        ms.declare(name, "gauge", doc)
    ms.declare("vigil_tuner_writes_total", "counter", "Sysctl writes by result (dry_run: would have written).")
    ms.declare("vigil_tuner_rlimit_writes_total", "counter", "File limit changes by result.")
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
                ms.gauge("vigil_sysctl_value", "Live sysctl value by field.", {"key": key, "field": label}, v)
        elif now:
            ms.gauge("vigil_sysctl_value_info", "Live value of a sysctl that is a word.",
                     {"key": key, "value": fmt(now)}, 1)
    if want is not None:
        if is_numeric(want):
            for label, v in zip(field_labels(want), want):
                ms.gauge("vigil_sysctl_desired", "Declared sysctl value by field.", {"key": key, "field": label}, v)
        else:
            ms.gauge("vigil_sysctl_desired_info", "Declared value of a sysctl that is a word.",
                     {"key": key, "value": fmt(want)}, 1)
    drift = s.drift
    ms.gauge("vigil_sysctl_drift", "1 when the live sysctl value does not satisfy its policy.", {"key": key},
             None if drift is None else int(drift))
    if s.entry.policy != REPORT:  # report entries are never written: no write series
        for result in WRITE_RESULTS:
            ms.counter("vigil_tuner_writes_total", "Sysctl writes by result (dry_run: would have written).",
                       {"key": key, "result": result}, writes.get((key, result), 0))


def _rlimit_metrics(ms: MetricSet, r: RlimitOutcome, writes: dict[tuple[str, str, str], int],
                    seen: set[str]) -> None:
    e = r.entry
    if e.process not in seen:
        seen.add(e.process)
        ms.gauge("vigil_tuner_processes", "Running processes matching a profile's process name.",
                 {"process": e.process}, len(r.pids))
    labels = {"process": e.process, "resource": e.resource}
    known = [p.now for p in r.pids if p.now is not None]
    for i, kind in enumerate(("soft", "hard")):
        if known:  # several processes of one name: the lowest limit is the one that bites
            ms.gauge("vigil_process_rlimit", "File limit of a named host process (the lowest across its "
                     "processes; +Inf unlimited).", {**labels, "kind": kind}, min(n[i] for n in known))
        declared = e.soft if kind == "soft" else e.hard
        ms.gauge("vigil_process_rlimit_desired", "Declared file limit of a named host process.",
                 {**labels, "kind": kind}, declared)
    drift = rules.pid_drift(r.pids)
    ms.gauge("vigil_process_rlimit_drift", "1 when a process's file limit does not satisfy its policy.", labels,
             None if drift is None else int(drift))
    if e.policy != REPORT:
        for result in WRITE_RESULTS:
            ms.counter("vigil_tuner_rlimit_writes_total", "File limit changes by result.", {**labels, "result": result},
                       writes.get((e.process, e.resource, result), 0))
