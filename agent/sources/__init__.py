"""Registry of collectors: name -> "module:Class". Imported lazily, so a missing optional dependency
(BCC, grpc stubs) disables only that source. Add one line per new collector."""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "gpu": "agent.sources.gpu.collector:GpuCollector",
    "gpu_events": "agent.sources.gpu_events.collector:GpuEventsCollector",
    "containers": "agent.sources.containers.collector:ContainersCollector",
    "sysctl": "agent.sources.tuner.collector:SysctlCollector",
    "rdma": "agent.sources.rdma.collector:RdmaCollector",
    "netflow": "agent.sources.netflow.collector:NetflowCollector",
    "kernel": "agent.sources.kernel.collector:KernelCollector",
    "mounts": "agent.sources.mounts.collector:MountsCollector",
    "pcie": "agent.sources.pcie.collector:PcieCollector",
    "nvme": "agent.sources.nvme.collector:NvmeCollector",
}


def load(name: str) -> type:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)
