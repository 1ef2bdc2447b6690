"""Which pods hold each GPU, for the health stream (Event.holders, Problem.holders; issue 14).

The two halves live in two independent sources: the GPU source publishes its readings (ctx.facts.gpus: the
entity "gpuN" with its UUID and PCI address), the containers source its kubelet PodResources attribution
(ctx.facts.pod_devices: join keys "uuid:...", "bdf:...", "nvidia-index:N" -> the containers holding them, as
NVIDIA's plugin reports GPU UUIDs and AMD's PCI addresses). They meet here, in the run layer above both, the way
cli.py joins them for `--once`: the stream then names, on a GPU's fault, the pods on that GPU, so that an
aggregator on a device-plugin cluster (no DRA ResourceClaims to read) can evict just those pods. The aggregator
treats the names as a claim and checks each against the API before it acts (agent/aggregator/drain.py).

Unknown is empty, never a guess: no containers source, PodResources unreadable, or no GPU readings yet.
"""
from __future__ import annotations

from typing import Any

from agent import wire
from agent.sources.containers.attribution import join_gpus


def gpu_holders(facts: Any) -> dict[str, tuple[str, ...]]:
    """GPU entity ("gpu3", a partition "gpu3/1") -> "namespace/pod" of the pods holding it, at most
    wire.MAX_HOLDERS each, in PodResources order. A whole GPU's entry also names the pods on its partitions
    (a fault of gpu3 is one of every MIG instance on it)."""
    gpus, pods = getattr(facts, "gpus", None), getattr(facts, "pod_devices", None)
    if not gpus or pods is None:
        return {}
    out: dict[str, list[str]] = {}
    for row in join_gpus(gpus, pods):
        name = f"{row.namespace}/{row.pod}"
        entity = f"gpu{row.gpu}"
        for key in dict.fromkeys((entity, entity.split("/", 1)[0])):
            held = out.setdefault(key, [])
            if name not in held and len(held) < wire.MAX_HOLDERS:
                held.append(name)
    return {k: tuple(v) for k, v in out.items()}


__all__ = ["gpu_holders"]
