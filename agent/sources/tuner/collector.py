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

from agent.base.config import CollectorSettings, given
from . import rules
from . import profile as prof
from .apply import RlimitOutcome, SysctlOutcome, Tuner, resolve_mode
from .policy import RlimitEntry, SysctlEntry
from .prlimit import ProcessLimits, PsutilLimits
from agent.base.collector import Collector, Context, NoData, Observation, Output

log = logging.getLogger(__name__)

DEFAULT_SOURCE = prof.DEFAULT_PROFILE.removesuffix(".yaml")  # "gpu-training"
from .metrics import tuner_metrics


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
    mode_reason: str  # the default | set in the config | set by --tuner-mode | why --once or a replay changed it
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
            raise NoData(f"{self.ctx.roots.show(root / 'sys')} not found")
        replay = self.ctx.roots.snapshot is not None
        mode, why = resolve_mode(self.settings.mode, self.ctx.mode, replay, "mode" in given(self.settings))
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
