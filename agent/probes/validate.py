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
    probes: list[Probe] = [Dcgm(), Nccl(), Perftest(), Builtin()]
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

    @property
    def any_gpu(self) -> bool:
        return bool(self.gpu_keys) or bool(self.gpu_pods)


_GPU_RESOURCES = ("nvidia.com/", "amd.com/")
_RDMA_HINTS = ("rdma", "infiniband", "mellanox", "hca")


def holdings_from(allocations: Iterable[Any]) -> Holdings:
    """Holdings from PodResources allocations (agent.sources.containers.podresources.Allocation). A DRA device
    counts as a GPU: a claim Vigil cannot classify keeps the probes off (fail safe)."""
    from agent.sources.containers.attribution import keys_for_id
    keys: set[str] = set()
    gpu_pods: set[str] = set()
    rdma_pods: set[str] = set()
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
    return Holdings(True, frozenset(keys), tuple(sorted(gpu_pods)), tuple(sorted(rdma_pods)), unmapped=unmapped)


def read_holdings(settings: ProbeSettings) -> Holdings:
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
                "attribution": self.holdings, "probes": [r.to_json() for r in self.results],
                "findings": [f.to_json() for f in self.findings]}

    def metrics(self) -> MetricSet:
        from .metrics import validation_metrics
        return validation_metrics(self)


def validate(settings: ProbeSettings, names: list[str] | None = None, level: str = "quick", force: bool = False,
             facts: Any = None, quarantined: bool = False, node: str = "", holdings: Holdings | None = None,
             sysfs: str = "/sys", test_options: dict | None = None) -> Validation:
    """Run the probes `names` (None: every enabled probe whose tool is installed) at `level`. Raises
    ValueError for an unknown probe name or level (a usage error); everything else is in the findings."""
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
    explicit = names is not None
    results: list[ProbeResult] = []
    if force:
        held, how = None, "not checked (--force)"
    else:
        held = holdings if holdings is not None else read_holdings(settings)
        how = ("read from PodResources: " + (f"GPUs held by {', '.join(held.gpu_pods[:5])}" if held.any_gpu
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
                else:
                    try:
                        ctx_result = probe.run(ctx)
                    except Exception as e:  # noqa: BLE001 - an adapter's bug costs its probe (unknown), not the rest
                        ctx_result = refused(probe.name, node, f"internal error: {error_text(e)}")
                if ctx_result.status == "unavailable" and explicit:
                    ctx_result = ProbeResult(probe.name, "unknown", [unknown(
                        f"probe.{probe.name}.run", COMPONENT, node, f"not run: {ctx_result.absent}")],
                        absent=ctx_result.absent)
                results.append(ctx_result)
    except Busy as e:
        results = [refused(p.name, node, str(e)) for p in chosen]
    v = Validation(node, level, results, forced=force, holdings=how)
    if not any(f.check.endswith(".run") and f.status == "ok" for f in v.findings) and not any(
            r.status in ("unknown", "fail") for r in results):
        why = "; ".join(f"{n}: {a}" for n, a in v.absent.items()) or "no probe is enabled"
        v.extra_findings.append(unknown("probe.coverage", COMPONENT, node, f"nothing was validated ({why})"))
    return v


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
    ctx = ProbeContext(base.node, base.settings, base.level, sorted(free), base.gpu_names, base.sysfs,
                       base.test_options)
    return ctx
