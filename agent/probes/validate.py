"""Active validation of a node: the probes one after another, under the node's probe lock and the safety
rules, as findings `probe.<name>` (measured value and floor as the finding's value and threshold).

    validate(settings, names=None, level="quick", force=False, facts=None, quarantined=False) -> Validation

Called by `agent validate` (an operator on the node) and, later, by the stream client when the aggregator
asks a node to validate (a new node behind its startup taint, or one Vigil quarantined: `quarantined=True`).

Safety (DESIGN §8): a probe loads the GPUs (and the fabric) for minutes, so it runs only where no pod is
using them. Which pod holds which device comes from the kubelet's PodResources API, as the containers
source reads it:
- attribution read, no GPU held: every probe runs;
- attribution read, some GPUs held: probes that can be pointed at some GPUs (dcgm, builtin) run on the free
  ones when the GPUs' identities are known (`facts.gpus`, the GPU source's readings); every other GPU probe
  is refused;
- attribution unavailable (no kubelet socket, an error): refused, unless the node is quarantined (Vigil took
  it out of the schedule: nothing new lands there) or `force` (an operator who drained it);
- one validation at a time per node (NodeLock), whatever started it.
A refused probe is unknown, never a pass.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Iterable

from agent.base.errors import error_text
from agent.base.findings import Finding, exit_code, node_status, unknown
from agent.base.metrics import MetricSet

from .runner import COMPONENT, Busy, NodeLock, Probe, ProbeContext, ProbeResult, refused
from .settings import LEVELS, ProbeSettings


def registry() -> dict[str, Probe]:
    """Every probe, in the order a validation runs them (cheap and decisive first)."""
    from .dcgm import Dcgm
    from .builtin.parent import Builtin
    from .nccl import Nccl
    from .perftest import Perftest
    from .rvs import Rvs
    from .agfhc import Agfhc
    probes: list[Probe] = [Dcgm(), Rvs(), Agfhc(), Nccl(), Perftest(), Builtin()]
    return {p.name: p for p in probes}


def names() -> list[str]:
    return list(registry())


@dataclass
class Holdings:
    """Which devices pods hold, from PodResources. `known` False: it could not be read (`why`)."""

    known: bool
    gpu_keys: frozenset[str] = frozenset()  # join keys (agent.sources.containers.attribution) of held GPUs
    gpu_pods: tuple[str, ...] = ()  # namespace/pod holding a GPU, for messages
    rdma_pods: tuple[str, ...] = ()  # pods holding RDMA devices
    why: str = ""
    unmapped: bool = False  # a held GPU whose id gave no join key: which GPU it is is unknown
    key_pods: dict[str, tuple[str, ...]] = field(default_factory=dict)  # join key -> holders, for messages
    source: str = "PodResources"  # where it was read: PodResources, container specs (containerd), or both

    @property
    def any_gpu(self) -> bool:
        return bool(self.gpu_keys) or bool(self.gpu_pods)

    def holders_of(self, keys: Iterable[str]) -> list[str]:
        return sorted({p for k in keys for p in self.key_pods.get(k, ())})


def merge(a: Holdings, b: Holdings) -> Holdings:
    """Both sources read: a device either says is held is held."""
    pods: dict[str, tuple[str, ...]] = dict(a.key_pods)
    for k, v in b.key_pods.items():
        pods[k] = tuple(sorted(set(pods.get(k, ())) | set(v)))
    return Holdings(True, a.gpu_keys | b.gpu_keys, tuple(sorted(set(a.gpu_pods) | set(b.gpu_pods))),
                    tuple(sorted(set(a.rdma_pods) | set(b.rdma_pods))), unmapped=a.unmapped or b.unmapped,
                    key_pods=pods, source=f"{a.source} and {b.source}")


_GPU_RESOURCES = ("nvidia.com/", "amd.com/")
_RDMA_HINTS = ("rdma", "infiniband", "mellanox", "hca")


def holdings_from(allocations: Iterable[Any]) -> Holdings:
    """Holdings from PodResources allocations (agent.sources.containers.podresources.Allocation). A DRA device
    counts as a GPU: a claim Vigil cannot classify keeps the probes off (fail safe)."""
    from agent.sources.containers.attribution import keys_for_id
    keys: set[str] = set()
    gpu_pods: set[str] = set()
    rdma_pods: set[str] = set()
    key_pods: dict[str, set[str]] = {}
    unmapped = False
    for a in allocations:
        pod = f"{a.ref.namespace}/{a.ref.pod}"
        resource = a.resource.lower()
        if any(h in resource for h in _RDMA_HINTS):
            rdma_pods.add(pod)
        elif resource.startswith(_GPU_RESOURCES) or a.source == "dra":
            gpu_pods.add(pod)
            found = [k for text in a.match_text
                     for k in keys_for_id(text, nvidia_index=resource.startswith("nvidia.com/"))]
            unmapped = unmapped or not found
            keys.update(found)
            for k in found:
                key_pods.setdefault(k, set()).add(pod)
    return Holdings(True, frozenset(keys), tuple(sorted(gpu_pods)), tuple(sorted(rdma_pods)), unmapped=unmapped,
                    key_pods={k: tuple(sorted(v)) for k, v in key_pods.items()})


# Device nodes that let a container drive GPUs without naming one: with no per-GPU node beside them, which
# GPU the container uses is unknown.
_GPU_CONTROL = ("/dev/kfd", "/dev/nvidiactl", "/dev/nvidia-uvm")
_LIVE = ("created", "running", "paused")


def holdings_from_containers(listing: Any, resolver: Any) -> Holdings:
    """Holdings from containerd's containers (runtime.list_once's listing: namespace -> (containers, task
    states)) and their OCI specs, as the containers source's spec fallback reads them: linux.devices GPU nodes
    (/dev/nvidiaN, /dev/dri/renderDN) and NVIDIA_VISIBLE_DEVICES, for every container with a live task,
    Kubernetes' or not. A GPU node sysfs cannot map, NVIDIA_VISIBLE_DEVICES=all, or a GPU control node
    without a GPU node means a GPU is held and which is unknown (the probes then stay off the GPUs).
    Privileged containers are skipped, as the containers source skips them (they see every device)."""
    from agent.sources.containers.attribution import keys_for_id
    keys: set[str] = set()
    gpu_pods: set[str] = set()
    rdma_pods: set[str] = set()
    key_pods: dict[str, set[str]] = {}
    unmapped = False
    for ns, (containers, states) in listing.items():
        for c in containers:
            state = states.get(c.id)
            if state is None or state.status not in _LIVE or c.spec.privileged:
                continue
            ref = c.ref
            who = f"{ref.namespace}/{ref.pod}" if ref else f"container {ns}/{c.id}"
            found: list[str] = []
            gpu = False
            for path in c.spec.device_paths:
                hit = resolver.path_keys(path)
                if hit is None:
                    continue
                if hit[0] == "rdma":
                    rdma_pods.add(who)
                    continue
                gpu = True
                unmapped = unmapped or not hit[1]
                found += hit[1]
            for v in c.spec.visible_gpus:
                if v.strip().lower() in ("void", "none", ""):
                    continue
                gpu = True
                ids = keys_for_id(v, nvidia_index=True)
                unmapped = unmapped or not ids
                found += ids
            if not gpu and any(p in _GPU_CONTROL for p in c.spec.device_paths):
                gpu, unmapped = True, True
            if gpu:
                gpu_pods.add(who)
                keys.update(found)
                for k in found:
                    key_pods.setdefault(k, set()).add(who)
    return Holdings(True, frozenset(keys), tuple(sorted(gpu_pods)), tuple(sorted(rdma_pods)), unmapped=unmapped,
                    key_pods={k: tuple(sorted(v)) for k, v in key_pods.items()}, source="container specs (containerd)")


def read_holdings(settings: ProbeSettings, sysfs: str = "/sys", procfs: str = "/proc") -> Holdings:
    """Holdings from the kubelet's PodResources and containerd's container specs, merged when both answer;
    one of them when only one does; unknown (never "nothing held") when neither can be read."""
    pr = read_podresources(settings)
    ct = read_containers(settings, sysfs, procfs)
    if pr.known and ct.known:
        return merge(pr, ct)
    if pr.known or ct.known:
        return pr if pr.known else ct
    return Holdings(False, why=f"{pr.why}; {ct.why}")


def read_containers(settings: ProbeSettings, sysfs: str = "/sys", procfs: str = "/proc") -> Holdings:
    sock = settings.containerd_socket
    if not sock or not os.path.exists(sock):
        return Holdings(False, why=f"no containerd socket at {sock}" if sock else "containerd not configured")
    try:
        from pathlib import Path
        from agent.sources.containers.attribution import DeviceResolver
        from agent.sources.containers.runtime import list_once
        listing = list_once(sock, list(settings.containerd_namespaces), settings.podresources_timeout_seconds)
        return holdings_from_containers(listing, DeviceResolver(Path(sysfs), Path(procfs)))
    except Exception as e:  # noqa: BLE001 - grpc errors, a dead containerd: attribution unknown
        return Holdings(False, why=f"containerd at {sock}: {error_text(e)}")


def read_podresources(settings: ProbeSettings) -> Holdings:
    """Holdings from the kubelet's PodResources socket; unknown (never "nothing held") when it cannot be read."""
    sock = settings.podresources_socket
    if not os.path.exists(sock):
        return Holdings(False, why=f"no kubelet PodResources socket at {sock}")
    try:
        from agent.sources.containers.podresources import list_allocations
        return holdings_from(list_allocations(sock, settings.podresources_timeout_seconds))
    except Exception as e:  # noqa: BLE001 - grpc errors, a dead kubelet: attribution unknown
        return Holdings(False, why=f"PodResources at {sock}: {error_text(e)}")


@dataclass
class Validation:
    node: str
    level: str
    results: list[ProbeResult]
    forced: bool = False
    holdings: str = ""  # how attribution was decided, for the report
    started_at: float = field(default_factory=time.time)
    extra_findings: list[Finding] = field(default_factory=list)
    gpus: list[dict] = field(default_factory=list)  # the GPU inventory the probes were run with
    inventory: str = ""  # where that inventory came from, or why it is unknown
    skipped: list[dict] = field(default_factory=list)  # GPUs (or whole probes) left out because a pod holds them
    floors: dict[str, dict] = field(default_factory=dict)  # model -> metric -> the floor judged by

    @property
    def findings(self) -> list[Finding]:
        return [f for r in self.results for f in r.findings] + self.extra_findings

    @property
    def absent(self) -> dict[str, str]:
        return {r.name: r.absent for r in self.results if r.status == "unavailable"}

    @property
    def status(self) -> str:
        return node_status(self.findings)

    def exit_code(self) -> int:
        """0 every probe that ran passed, 1 a probe failed, 2 a probe could not run and none failed."""
        return exit_code(self.status)

    def to_json(self) -> dict:
        return {"node": self.node, "status": self.status, "level": self.level, "forced": self.forced,
                "attribution": self.holdings, "inventory": self.inventory, "gpus": self.gpus,
                "floors": self.floors, "skipped": self.skipped, "probes": [r.to_json() for r in self.results],
                "findings": [f.to_json() for f in self.findings]}

    def metrics(self) -> MetricSet:
        from .metrics import validation_metrics
        return validation_metrics(self)


def validate(settings: ProbeSettings, names: list[str] | None = None, level: str = "quick", force: bool = False,
             facts: Any = None, quarantined: bool = False, node: str = "", holdings: Holdings | None = None,
             sysfs: str = "/sys", test_options: dict | None = None, procfs: str = "/proc",
             inventory: str = "") -> Validation:
    """Run the probes `names` (None: every enabled probe whose tool is installed) at `level`. Raises
    ValueError for an unknown probe name or level (a usage error); everything else is in the findings.
    `inventory`: where facts.gpus came from, for the report; "unknown: WHY" when the GPU source could not
    read the GPUs, which makes a GPU probe's result unknown (its floors need the model)."""
    if level not in LEVELS:
        raise ValueError(f"unknown level {level!r} (known: {', '.join(LEVELS)})")
    probes = registry()
    if names is not None:
        unknown_names = [n for n in names if n not in probes]
        if unknown_names:
            raise ValueError(f"unknown probe {unknown_names[0]!r} (known: {', '.join(probes)})")
        chosen = [probes[n] for n in dict.fromkeys(names)]
    else:
        chosen = [p for p in probes.values() if settings.adapter(p.name).enabled]
    node = node or os.environ.get("NODE_NAME") or os.uname().nodename
    base = ProbeContext(node, settings, level, sysfs=sysfs, test_options=dict(test_options or {}))
    gpus = list(getattr(facts, "gpus", None) or [])
    base.gpu_names = {g.index: g.model for g in gpus if getattr(g, "model", None) and not getattr(g, "partition", "")}
    base.gpu_buses = {g.index: g.pci_bus_id for g in gpus if getattr(g, "pci_bus_id", None)
                      and not getattr(g, "partition", "")}
    explicit = names is not None
    results: list[ProbeResult] = []
    skipped: list[dict] = []
    if force:
        held, how = None, "not checked (--force)"
    else:
        held = holdings if holdings is not None else read_holdings(settings, sysfs, procfs)
        how = (f"read from {held.source}: " + (f"GPUs held by {', '.join(held.gpu_pods[:5])}" if held.any_gpu
                                               else "no GPU held")) if held.known else \
            f"unknown ({held.why})" + ("; the node is quarantined" if quarantined else "")
    try:
        with NodeLock(settings.state_dir):
            for probe in chosen:
                ctx = _context_for(probe, base, held, quarantined, gpus)
                if isinstance(ctx, str):
                    if probe.find(base) is None:
                        ctx_result = probe.run(base)  # not installed: say so rather than "refused"
                    else:
                        ctx_result = refused(probe.name, node, ctx)
                        if held is not None and held.known and held.any_gpu and probe.uses_gpus:
                            skipped.append({"probe": probe.name, "gpu": "all", "held_by": list(held.gpu_pods[:5]),
                                            "why": ctx})
                else:
                    try:
                        ctx_result = probe.run(ctx)
                    except Exception as e:  # noqa: BLE001 - an adapter's bug costs its probe (unknown), not the rest
                        ctx_result = refused(probe.name, node, f"internal error: {error_text(e)}")
                    if ctx.gpus is not None and ctx_result.status != "unavailable":
                        ctx_result = _with_untested(ctx_result, ctx, held, gpus, skipped)
                if ctx_result.status == "unavailable" and explicit:
                    ctx_result = ProbeResult(probe.name, "unknown", [unknown(
                        f"probe.{probe.name}.run", COMPONENT, node, f"not run: {ctx_result.absent}")],
                        absent=ctx_result.absent)
                results.append(ctx_result)
    except Busy as e:
        results = [refused(p.name, node, str(e)) for p in chosen]
    v = Validation(node, level, results, forced=force, holdings=how, skipped=skipped,
                   gpus=[{"gpu": f"gpu{g.index}", "model": getattr(g, "model", None),
                          "pci_bus_id": getattr(g, "pci_bus_id", None)} for g in gpus
                         if not getattr(g, "partition", "")],
                   inventory=inventory or ("from the GPU source" if gpus else "none given"))
    ran = [p for p, r in zip(chosen, results) if r.status != "unavailable"]
    v.floors = floors_used(settings, ran, base.gpu_names)
    if inventory.startswith("unknown") and any(p.uses_gpus for p in ran):
        # No model, no floor: a GPU probe's measurement would be reported and never judged (DESIGN §0).
        v.extra_findings.append(unknown("probe.inventory", COMPONENT, node, f"the GPUs' models are {inventory}: "
                                        "no floor can be applied, so no GPU probe can pass"))
    if not any(f.check.endswith(".run") and f.status == "ok" for f in v.findings) and not any(
            r.status in ("unknown", "fail") for r in results):
        why = "; ".join(f"{n}: {a}" for n, a in v.absent.items()) or "no probe is enabled"
        v.extra_findings.append(unknown("probe.coverage", COMPONENT, node, f"nothing was validated ({why})"))
    return v


def floors_used(settings: ProbeSettings, probes: list[Probe], gpu_names: dict[int, str]) -> dict[str, dict]:
    """model -> metric -> floor (value, unit, source) for the probes that ran; a model with no entry in the
    table maps to {} (its measurements are reported, not judged). The built-in probe judges by the name torch
    reports, which may differ from the GPU source's; its findings' thresholds are the figures used."""
    from .floors import floor_for
    metrics = list(dict.fromkeys(m for p in probes for m in p.floor_metrics))
    if not metrics:
        return {}
    out: dict[str, dict] = {}
    for model in sorted(set(gpu_names.values())):
        found = {m: floor_for(m, model, settings.floors) for m in metrics}
        out[model] = {m: f.to_json() for m, f in found.items() if f is not None}
    return out


def _with_untested(result: ProbeResult, ctx: ProbeContext, held: Holdings | None, gpus: list[Any],
                   skipped: list[dict] | None = None) -> ProbeResult:
    """A probe run on the free GPUs only: each held GPU is unknown for it (not tested, never a pass)."""
    from agent.sources.containers.attribution import gpu_keys
    extra = []
    for g in gpus:
        if getattr(g, "partition", "") or g.index in (ctx.gpus or []):
            continue
        who = held.holders_of(gpu_keys(g)) if held else []
        why = "held by " + (", ".join(who[:3]) if who else "a pod")
        if skipped is not None:
            skipped.append({"probe": result.name, "gpu": f"gpu{g.index}", "held_by": who[:5], "why": why})
        extra.append(unknown(f"probe.{result.name}", COMPONENT, f"gpu{g.index}",
                             f"not tested: {why} (validate it once the GPU is free)"))
    if not extra:
        return result
    # A probe told to leave those GPUs alone says nothing about them; a result for one anyway is not trusted.
    untested = {f.entity for f in extra}
    findings = [f for f in result.findings if f.entity not in untested] + extra
    status = result.status if result.status in ("fail", "unknown") else "unknown"
    return ProbeResult(result.name, status, findings, result.duration, result.command, result.absent)


def _context_for(probe: Probe, base: ProbeContext, held: Holdings | None, quarantined: bool,
                 gpus: list[Any]) -> ProbeContext | str:
    """The context a probe may run with, or why it may not run."""
    if held is None:  # forced
        return base
    if not held.known:
        if quarantined:
            return base
        return (f"which pod holds which device is unknown ({held.why}); run it on a drained node with --force, "
                f"or let Vigil quarantine the node first")
    if probe.uses_rdma and held.rdma_pods:
        return f"RDMA devices held by {', '.join(held.rdma_pods[:5])}"
    if not probe.uses_gpus or not held.any_gpu:
        return base
    if not probe.gpu_subset or not gpus or held.unmapped:
        return (f"GPUs held by {', '.join(held.gpu_pods[:5])}"
                + ("" if probe.gpu_subset else f" ({probe.name} needs every GPU of the node)"))
    from agent.sources.containers.attribution import gpu_keys
    whole = [g for g in gpus if not getattr(g, "partition", "")]
    free = [g.index for g in whole if not set(gpu_keys(g)) & held.gpu_keys]
    if not free:
        return f"every GPU is held by a pod ({', '.join(held.gpu_pods[:5])})"
    ctx = ProbeContext(base.node, base.settings, base.level, sorted(free), base.gpu_names, base.gpu_buses,
                       base.sysfs, base.test_options)
    return ctx
