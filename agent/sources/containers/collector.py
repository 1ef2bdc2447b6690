"""Container collector: containerd's event stream (OOM kills, exits, the live container table with pod identity)
and the attribution of GPUs and RDMA devices to pods (kubelet PodResources, else the OCI spec).

Live, the first read starts the event watcher thread (agent/sources/containers/runtime.py) and waits briefly for its
first listing; later reads copy the table. `agent --once` lists containerd once instead, and a snapshot replays
DIR/containers/pod-resources.json (attribution only). Nothing starts at import or construction.

The join with the GPU collector: the GPU collector publishes its readings as ctx.facts.gpus; this collector
publishes ctx.facts.pod_devices (join key -> (namespace, pod, container) tuples) and exports
vigil_gpu_pod_info{gpu,namespace,pod,container} itself, so dashboards join on `gpu` and no GPU series carries
pod labels. In one-shot runs the two collectors read concurrently, so there the join is left to
agent.sources.containers.attribution.gpu_pod_table/gpu_pod_rows after both finished.

Each OOM kill or non-zero exit is reported once, in the first cycle after it happened: the table numbers them
(seq) in a bounded list, and evaluate() reports those above the previous reading's last seq. A failed cycle
keeps the previous reading (the runner only replaces it on success), so its events come in the next cycle.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent.base.config import CollectorSettings, ConfigError, in_range
from .attribution import Attribution, DeviceResolver, attribute, gpu_keys, join_gpus, spec_gpu_keys
from .model import ReportedEvent, RuntimeView
from .table import ContainerTable
from . import rules
from agent.base.metrics import MetricSet
from agent.base.collector import Collector, Context, NoData, Observation, Output
from agent.base.errors import error_text
from .metrics import CONTAINER_POD_RESOURCES_UP, attribution_metrics, runtime_metrics




@dataclass
class ContainersSettings(CollectorSettings):
    socket: str = "/run/containerd/containerd.sock"
    namespaces: list[str] = field(default_factory=lambda: ["k8s.io"])
    pod_resources_socket: str = "/var/lib/kubelet/pod-resources/kubelet.sock"
    # Resource names (device plugins) and DRA drivers that are GPUs / RDMA devices; ids that match a GPU the
    # GPU collector knows count as GPUs whatever the resource is called.
    gpu_resource_prefixes: list[str] = field(default_factory=lambda: [
        "nvidia.com/gpu", "nvidia.com/mig-", "amd.com/", "gpu.nvidia.com", "gpu.amd.com"])
    rdma_resource_prefixes: list[str] = field(default_factory=lambda: ["rdma/"])
    spec_fallback: bool = True  # attribute from the OCI spec's devices when PodResources says nothing
    findings_for_all_pods: bool = False  # OOM/exit findings for every pod, not only GPU pods
    recent_events: int = 256  # OOM kills and non-zero exits kept between two cycles
    rpc_timeout_seconds: float = 5.0
    reconnect_initial_seconds: float = 0.5
    reconnect_max_seconds: float = 30.0

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        for key in ("socket", "pod_resources_socket"):
            if not getattr(self, key).startswith("/"):
                raise ConfigError(f"{prefix}.{key}: must be an absolute path, got {getattr(self, key)!r}")
        if not self.namespaces or any(not n for n in self.namespaces):
            raise ConfigError(f"{prefix}.namespaces: give at least one containerd namespace, e.g. [k8s.io]")
        if self.reconnect_max_seconds < self.reconnect_initial_seconds:
            raise ConfigError(f"{prefix}.reconnect_max_seconds: must be >= reconnect_initial_seconds")
        if self.recent_events < 1:
            raise ConfigError(f"{prefix}.recent_events: must be >= 1, got {self.recent_events}")
        in_range(f"{prefix}.recent_events", self.recent_events, 1, 1_000_000)


@dataclass
class ContainersReading:
    runtime: RuntimeView | None  # None: no containerd socket (or a snapshot)
    runtime_error: str | None = None  # a one-shot listing that failed
    allocations: list | None = None  # PodResources allocations; None: no kubelet socket
    pod_resources_error: str | None = None
    attribution: Attribution = field(default_factory=lambda: Attribution([]))
    gpus: list[Any] = field(default_factory=list)  # GPU readings the GPU collector published (for the join)
    join: bool = True  # export vigil_gpu_pod_info (not in one-shot runs: see the module docstring)
    event_gpu_keys: dict[int, list[str]] = field(default_factory=dict)  # seq -> GPUs in that container's spec


class ContainersCollector(Collector):
    name = "containers"
    component = "container"
    Settings = ContainersSettings

    def __init__(self, settings: ContainersSettings, ctx: Context) -> None:
        super().__init__(settings, ctx)
        self._lock = threading.Lock()
        self._table: ContainerTable | None = None
        self._watcher = None

    # -- read: all I/O ------------------------------------------------------------------------------------
    def read(self) -> ContainersReading:
        s = self.settings
        if self.ctx.roots.snapshot is not None:
            return self._replay(self.ctx.roots.snapshot / "containers")
        from . import podresources

        runtime, runtime_error = self._runtime()
        allocations, pr_error = None, None
        if Path(s.pod_resources_socket).exists():
            try:
                allocations = podresources.list_allocations(s.pod_resources_socket, s.rpc_timeout_seconds)
            except Exception as e:  # grpc.RpcError mostly; the rest of the source still works
                pr_error = _rpc_text(e)
        if runtime is None and runtime_error is None and allocations is None and pr_error is None:
            raise NoData(f"no containerd socket at {s.socket} and no kubelet socket at {s.pod_resources_socket}")
        return self._attribute(runtime, runtime_error, allocations, pr_error)

    def _runtime(self) -> tuple[RuntimeView | None, str | None]:
        s = self.settings
        if not Path(s.socket).exists():
            if self._table is not None:  # containerd restarting: the watcher reconnects, the table stays
                return self._table.view(), None
            return None, None
        from . import runtime

        if self.ctx.mode.once:
            try:
                listing = runtime.list_once(s.socket, s.namespaces, s.rpc_timeout_seconds)
            except Exception as e:
                return None, _rpc_text(e)
            table = ContainerTable(s.recent_events)
            table.resync(listing, baseline=True)
            return table.view(streaming=False), None
        with self._lock:
            if self._watcher is None:
                self._table = ContainerTable(s.recent_events)
                self._watcher = runtime.Watcher(
                    s.socket, s.namespaces, self._table, backoff_initial=s.reconnect_initial_seconds,
                    backoff_max=s.reconnect_max_seconds, rpc_timeout=s.rpc_timeout_seconds)
                self._watcher.start()
                # The first cycle should see the listing, not an empty table; never wait past the deadline.
                self._watcher.wait_synced(min(s.rpc_timeout_seconds, s.timeout_seconds / 2))
        assert self._table is not None
        return self._table.view(), None

    def _replay(self, directory: Path) -> ContainersReading:
        path = directory / "pod-resources.json"
        if not path.is_file():
            raise NoData(f"the snapshot has no {path.relative_to(directory.parent)}")
        from . import podresources

        return self._attribute(None, None, podresources.from_json(path.read_text()), None)

    def _attribute(self, runtime, runtime_error, allocations, pr_error) -> ContainersReading:
        s = self.settings
        resolver = DeviceResolver(self.ctx.roots.sysfs, self.ctx.roots.procfs)
        gpus = list(self.ctx.facts.gpus or [])
        attribution = attribute(allocations or [], runtime.containers if runtime else [], resolver, gpus,
                                s.gpu_resource_prefixes, s.rdma_resource_prefixes, s.spec_fallback)
        self.ctx.facts.pod_devices = attribution.pod_devices()
        if runtime is not None:
            # For the netflow source: a running container's init pid -> its pod (it maps the pid's cgroup).
            self.ctx.facts.pid_pods = {c.pid: c.pod for c in runtime.containers
                                           if c.pid and c.pod and c.status == "running"}
        event_keys = {e.seq: spec_gpu_keys(e.spec, resolver) for e in runtime.recent} if runtime else {}
        return ContainersReading(runtime, runtime_error, allocations, pr_error, attribution, gpus,
                                 join=not self.ctx.mode.once, event_gpu_keys=event_keys)

    # -- evaluate: pure -----------------------------------------------------------------------------------
    def evaluate(self, reading: ContainersReading, previous: Observation | None,
                 elapsed: float | None) -> Output:
        s, node = self.settings, self.ctx.node
        ms, findings = MetricSet(), []
        rt = reading.runtime
        gpu_rows = join_gpus(reading.gpus, reading.attribution.pod_devices())
        if rt is not None:
            runtime_metrics(ms, rt)
            findings.append(rules.runtime_finding(rt.stream, len(rt.containers), s.namespaces, node))
            prev = previous.reading.runtime if previous is not None else None
            fresh, dropped = new_events(rt, prev.last_seq if prev is not None else None)
            findings += rules.event_findings(fresh, gpu_pods(reading, gpu_rows, fresh), s.findings_for_all_pods)
            findings += rules.dropped_finding(dropped, node)
        elif reading.runtime_error is not None:
            findings.append(rules.runtime_finding(None, 0, s.namespaces, node, reading.runtime_error))
        if reading.allocations is not None or reading.pod_resources_error is not None:
            ms.add(CONTAINER_POD_RESOURCES_UP, {}, 0 if reading.pod_resources_error else 1)
            held = [d for d in reading.attribution.devices if d.source != "spec"]
            findings.append(rules.pod_resources_finding(
                len(held), len({(d.ref.namespace, d.ref.pod) for d in held}), node, reading.pod_resources_error))
        attribution_metrics(ms, reading.attribution, gpu_rows if reading.join else None)
        return Output(ms, findings)

    def close(self) -> None:
        with self._lock:
            if self._watcher is not None:
                self._watcher.stop()


def _rpc_text(e: BaseException) -> str:
    code, details = getattr(e, "code", None), getattr(e, "details", None)
    if callable(code) and callable(details):
        return f"{code().name}: {details()}"
    return error_text(e)


def new_events(rt: RuntimeView, prev_seq: int | None) -> tuple[list[ReportedEvent], int]:
    """Events after the previous cycle's last seq, and how many of them the bounded list already dropped."""
    after = prev_seq or 0
    fresh = [e for e in rt.recent if e.seq > after]
    oldest = rt.recent[0].seq if rt.recent else rt.last_seq + 1
    return fresh, max(0, min(oldest, rt.last_seq + 1) - after - 1)


def gpu_pods(reading: ContainersReading, rows, events: list[ReportedEvent]) -> dict[tuple[str, str], list[str]]:
    """(namespace, pod) -> GPU names, for every pod known to hold a GPU (names [] when no GPU identity matched)."""
    out: dict[tuple[str, str], list[str]] = {pod: [] for pod in reading.attribution.gpu_pods()}
    for r in rows:
        names = out.setdefault((r.namespace, r.pod), [])
        if f"gpu{r.gpu}" not in names:
            names.append(f"gpu{r.gpu}")
    by_key = {k: g for g in reading.gpus for k in gpu_keys(g)}
    for e in events:  # a container already deleted: its spec still says which GPUs it had
        keys = reading.event_gpu_keys.get(e.seq) or []
        if keys:
            names = out.setdefault((e.ref.namespace, e.ref.pod), [])
            for k in keys:
                if k in by_key and f"gpu{by_key[k].name}" not in names:
                    names.append(f"gpu{by_key[k].name}")
    return out
