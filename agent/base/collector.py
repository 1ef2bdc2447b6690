"""The collector contract. One collector per module; the runner (agent/run/runner.py) isolates its failures.

A collector splits its work in two:
  read()      does the I/O (files, SMI libraries, subprocesses). It may block or hang: the runner calls it
              in a thread it can abandon, under the section's timeout_seconds.
  evaluate()  is pure and fast: readings (and the previous observation, for rates) to metrics and findings.
Constructing a collector touches no hardware.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

from .config import CollectorSettings, Expectations
from .errors import error_text
from .findings import Finding, unknown
from .metrics import MetricSet
from .roots import Roots


class NoData(Exception):
    """The source is simply absent on this node (no RDMA devices, no containerd): not a failure."""


@dataclass(frozen=True)
class RunMode:
    """How the agent was started, for the collectors whose behaviour depends on it."""

    once: bool = False  # `agent --once`: one pass; no background watchers, nothing persisted
    tune: bool = False  # `--once --tune`: the tuner may write in this one pass
    tuner_mode: str | None = None  # `--tuner-mode`, overriding the config


@dataclass
class Facts:
    """What one source publishes for the others in the same agent (each field has one writer). Sources run
    concurrently, so a reader sees the writer's latest value or None (not published yet)."""

    gpus: list[Any] | None = None  # the GPU source's readings (GpuReading): join keys for events and pods
    pod_devices: dict[str, tuple[Any, ...]] | None = None  # containers: device join key -> (PodRef, ...)
    pid_pods: dict[int, Any] | None = None  # containers: a running container's init pid -> (namespace, pod)
    cgroup_pods: dict[str, Any] | None = None  # cgroup path -> pod, for a runtime that reports cgroups


@dataclass
class Context:
    roots: Roots
    node: str
    expect: Expectations
    mode: RunMode = field(default_factory=RunMode)
    facts: Facts = field(default_factory=Facts)


@dataclass
class Output:
    metrics: MetricSet = field(default_factory=MetricSet)
    findings: list[Finding] = field(default_factory=list)
    # What the source looked for and did not find ("no RDMA devices under /sys/class/infiniband"): absent
    # hardware is not a failure, but `--once` says so, and a node where nothing at all was found is unknown.
    absent: list[str] = field(default_factory=list)
    partial: bool = False  # part of the source could not be read (its checks are unknown): not a success


@dataclass
class Observation:
    reading: Any
    at: float  # time.monotonic() when the read finished

    @staticmethod
    def now(reading: Any) -> "Observation":
        return Observation(reading, time.monotonic())


class Collector:
    name: ClassVar[str]
    component: ClassVar[str]
    Settings: ClassVar[type] = CollectorSettings

    def __init__(self, settings: Any, ctx: Context) -> None:
        self.settings = settings
        self.ctx = ctx

    def read(self) -> Any:
        raise NotImplementedError

    def evaluate(self, reading: Any, previous: Observation | None, elapsed: float | None) -> Output:
        """`elapsed`: seconds since `previous` was read (None on the first cycle)."""
        raise NotImplementedError

    def unresponsive(self, stuck_seconds: float) -> list[Finding]:
        """Findings while a read is stuck past its deadline. Sources that can hang in a driver override this."""
        return [unknown(f"{self.component}.collector_unresponsive", self.component, self.ctx.node,
                        f"{self.name} read stuck for {stuck_seconds:.0f}s", value=round(stuck_seconds, 1))]

    def failed(self, error: BaseException) -> list[Finding]:
        """Findings when read() raised: the checks could not run (unknown, never unhealthy by itself)."""
        return [unknown(f"{self.component}.collector", self.component, self.ctx.node,
                        f"{self.name} failed: {error_text(error)}")]

    def close(self) -> None:
        pass

