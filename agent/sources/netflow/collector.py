"""Netflow collector: TCP bytes, connections, RTT and retransmits per peer class (and local pod), from eBPF.

The eBPF side runs in its own process (agent/sources/netflow/probe.py), started lazily on the first live read: `import
bcc` alone costs about 74 MB and a loaded program 130 to 200 MB, none of it in the agent. Without root, BCC,
or with a probe that died, the source reports itself unavailable (netflow.probe, unknown) and the rest of the
agent runs; a dead probe is started again with exponential backoff, and counters carry on from where they
were (agent/sources/netflow/accounting.py). Snapshots hold no kernel: replaying one gives NoData.

Debug view of the heaviest flows: `python -m agent.sources.netflow.top` (see that module).
"""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass, field

from agent.base.config import CollectorSettings, ConfigError, in_range
from agent.base.findings import WARNING, Finding, ok, unknown
from . import rules
from .accounting import Ledger, Snapshot
from .pods import PodIndex
from .policy import PeerPolicy, PolicyError, host_networks, local_addresses
from agent.base.collector import Collector, Context, NoData, Observation, Output
from .metrics import netflow_metrics


def default_classes() -> dict[str, list[str]]:
    return {"node_internal": ["127.0.0.0/8", "::1/128"], "pod_network": [], "service_network": [], "dns": []}


def default_ports() -> dict[int, str]:
    # DNS; storage: NFS, iSCSI, Ceph (msgr2, v1), Lustre, GlusterFS; torch.distributed / NCCL bootstrap store.
    return {53: "dns", 2049: "storage", 3260: "storage", 3300: "storage", 6789: "storage", 988: "storage",
            24007: "storage", 29500: "nccl_bootstrap"}


@dataclass
class NetflowSettings(CollectorSettings, rules.NetflowThresholds):
    classes: dict[str, list[str]] = field(default_factory=default_classes)  # peer class -> CIDRs
    ports: dict[int, str] = field(default_factory=default_ports)  # port of interest -> peer class
    fallback_class: str = "external"
    host_addresses_class: str = "node_internal"  # the node's own addresses join this class ("" = no)
    all_network_namespaces: bool = True  # read live sockets in pods' network namespaces too, not only the host's
    bpf: bool = True  # false: live sockets (inet_diag) only
    agg_entries: int = 4096  # in-kernel (class, cgroup) aggregate slots
    record_entries: int = 16384  # close records per read
    live_entries: int = 65536  # open sockets listed for live reads (beyond: counted at close only)
    probe_python: str = ""  # interpreter for the probe process (default: the agent's)
    restart_backoff_max_seconds: float = 300.0
    top_flows: int = 10
    # The cgroup v2 root for sock_ops. "": the host's, found under the sysfs root (--sysfs /host/sys in a pod,
    # whose own /proc/mounts would show only the pod's cgroup namespace), else from /proc/mounts.
    cgroup_root: str = ""

    def check(self, prefix: str) -> None:
        CollectorSettings.check(self, prefix)
        try:
            self.policy([])
        except PolicyError as e:
            raise ConfigError(f"{prefix}.{e}") from None
        for key in ("agg_entries", "record_entries", "live_entries"):
            if not 1 <= getattr(self, key) <= 1 << 20:
                raise ConfigError(f"{prefix}.{key}: must be within 1..1048576")
        if not 0 <= self.retransmit_ratio_warning <= 1:
            raise ConfigError(f"{prefix}.retransmit_ratio_warning: must be within 0..1")
        in_range(f"{prefix}.retransmit_min_segments", self.retransmit_min_segments, 0, 1_000_000_000)
        in_range(f"{prefix}.rtt_min_samples", self.rtt_min_samples, 0, 1_000_000)
        in_range(f"{prefix}.top_flows", self.top_flows, 0, 1000)  # top flows are labelled series: bounded

    def policy(self, host_addresses: list[str]) -> PeerPolicy:
        extra = {self.host_addresses_class: host_networks(host_addresses)} if self.host_addresses_class else {}
        return PeerPolicy.build(self.classes, self.ports, self.fallback_class, extra)


@dataclass(frozen=True)
class NetflowReading:
    state: str  # ok | starting | unavailable
    reason: str = ""
    mode: str = ""  # bpf | tracepoint | inet_diag
    programs: int = 0
    notes: tuple[str, ...] = ()
    maps: tuple[tuple[str, int, int], ...] = ()  # (map, entries, capacity)
    live_read_seconds: float | None = None  # how long the probe took to read the live sockets
    restarts: int = 0
    snapshot: Snapshot | None = None  # the counters so far (kept while the probe is down)


class NetflowCollector(Collector):
    name = "netflow"
    component = "netflow"
    Settings = NetflowSettings

    def __init__(self, settings: NetflowSettings, ctx: Context, client=None) -> None:
        super().__init__(settings, ctx)
        self._client = client
        self.ledger = Ledger(settings.top_flows)
        self.pods = PodIndex(ctx.roots.procfs)

    def _make_client(self):
        from .client import ProbeClient

        s = self.settings
        policy = s.policy(local_addresses() if s.host_addresses_class else [])
        config = {"policy": policy.to_json(), "bpf": s.bpf, "agg_entries": s.agg_entries,
                  "record_entries": s.record_entries, "live_entries": s.live_entries,
                  "all_namespaces": s.all_network_namespaces, "cgroup_root": s.cgroup_root or self._host_cgroup()}
        return ProbeClient(config, python=s.probe_python or None, backoff_max=s.restart_backoff_max_seconds)

    def _host_cgroup(self) -> str | None:
        if self.ctx.roots.sysfs == Path("/sys"):
            return None  # the probe reads /proc/mounts: right on the host itself
        for d in (self.ctx.roots.sys("fs", "cgroup"), self.ctx.roots.sys("fs", "cgroup", "unified")):
            if (d / "cgroup.controllers").exists():  # a cgroup2 hierarchy (v1 has no such file)
                return str(d)
        return None

    @property
    def client(self):
        return self._client

    def read(self) -> NetflowReading:
        if self.ctx.roots.snapshot is not None:
            raise NoData("netflow reads the live kernel; a snapshot holds none")
        if os.geteuid() != 0:
            return NetflowReading("unavailable", "needs root (eBPF, inet_diag of other network namespaces)")
        from .client import ProbeStarting, ProbeUnavailable

        if self._client is None:
            self._client = self._make_client()
        try:
            raw = self._client.read(max(1.0, self.settings.timeout_seconds - 0.5))
        except ProbeUnavailable as e:
            state = "starting" if isinstance(e, ProbeStarting) else "unavailable"
            kept = self.ledger.snapshot() if self.ledger.cycle else None  # the counters so far
            return NetflowReading(state, str(e), restarts=self._client.restarts, snapshot=kept)
        self.pods.refresh(self.ctx.facts.pid_pods, self.ctx.facts.cgroup_pods)
        self.ledger.apply(raw, self.pods)
        if self.pods.pods is not None:
            self.ledger.forget_pods(self.pods.pods)
        info = self._client.info
        return NetflowReading(
            "ok", mode=raw.get("mode", ""), programs=int(raw.get("programs", 0)),
            notes=tuple(info.get("notes", ())),
            maps=tuple((name, int(n), int(cap)) for name, (n, cap) in sorted((raw.get("maps") or {}).items())),
            live_read_seconds=raw.get("live_read_seconds"), restarts=self._client.restarts,
            snapshot=self.ledger.snapshot())

    def evaluate(self, reading: NetflowReading, previous: Observation | None, elapsed: float | None) -> Output:
        prev = previous.reading if previous else None
        prev_snap = prev.snapshot if prev is not None else None
        findings = [self._probe_finding(reading)]
        snap = reading.snapshot
        if snap is not None and reading.state == "ok":
            findings.append(rules.map_check(self.ctx.node, snap.probe_counters,
                                            prev_snap.probe_counters if prev_snap else None))
            findings += rules.class_checks(snap, prev_snap, self.settings)
        return Output(netflow_metrics(reading), findings)

    def _probe_finding(self, r: NetflowReading) -> Finding:
        node = self.ctx.node
        if r.state != "ok":
            return unknown("netflow.probe", self.component, node, f"netflow probe {r.state}: {r.reason}", WARNING)
        if r.mode != "bpf":
            return unknown("netflow.probe", self.component, node,
                           f"netflow probe degraded ({r.mode}): {'; '.join(r.notes) or 'no sock_ops'}", WARNING)
        msg = "sock_ops program attached: exact bytes at close, live sockets by lookup" + \
            (f"; {'; '.join(r.notes)}" if r.notes else "")
        return ok("netflow.probe", self.component, node, msg, WARNING, value=r.programs)

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
