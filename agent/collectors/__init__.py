"""Registry of collectors: name -> "module:Class". Imported lazily, so a missing optional dependency
(BCC, grpc stubs) disables only that source. Add one line per new collector."""
from __future__ import annotations

import importlib

REGISTRY: dict[str, str] = {
    "gpu": "agent.collectors.gpu:GpuCollector",
    "gpu_events": "agent.collectors.gpu_events:GpuEventsCollector",
    "containers": "agent.collectors.containers:ContainersCollector",
    "sysctl": "agent.collectors.sysctl:SysctlCollector",
    "rdma": "agent.collectors.rdma:RdmaCollector",
    "netflow": "agent.collectors.netflow:NetflowCollector",
}


def load(name: str) -> type:
    module, _, cls = REGISTRY[name].partition(":")
    return getattr(importlib.import_module(module), cls)
